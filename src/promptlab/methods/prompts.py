"""Hand-written text prompts: named template sets, template files and per-class description files.

The class embedding of a template set is the normalised mean of the normalised embeddings of every
template filled with the class name (CLIP's prompt ensembling). A description file (CuPL style, a JSON
object `class name -> [sentences]`) gives a class the normalised mean of its sentences' normalised
embeddings instead; classes it lacks fall back to the template set. Zero-shot uses these embeddings as its
classifier, KgCoOp as its frozen targets. docs/reference.md, "Zero-shot templates", has the sources.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from promptlab.errors import ConfigError
from promptlab.models.frozen import FrozenCLIP

log = logging.getLogger(__name__)

#: Template-set names `prompts.templates` accepts (anything else must be a file of templates).
TEMPLATE_SETS: tuple[str, ...] = ("single", "clip80", "dataset_ensemble")


# --------------------------------------------------------------------------- template sets
def builtin_template_set(name: str) -> list[str]:
    """A template set that does not depend on the dataset: `clip80`, CLIP's 80 ImageNet templates."""
    if name == "clip80":
        from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

        # open_clip stores them as functions of the class name; filling in "{}" gives the format strings.
        return [template("{}") for template in OPENAI_IMAGENET_TEMPLATES]
    raise ConfigError(f"template set {name!r}: the dataset-independent sets are: clip80.")


def read_template_file(path: str | Path) -> list[str]:
    """Templates from a file: a JSON list of strings (.json), else one per line (blank and '#' lines skipped)."""
    text = Path(path).expanduser().read_text(encoding="utf-8")
    if Path(path).suffix.lower() == ".json":
        try:
            templates = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(f"template file {path}: not valid JSON ({err}).") from err
        if not isinstance(templates, list) or not all(isinstance(t, str) for t in templates):
            raise ConfigError(f"template file {path}: expected a JSON list of template strings.")
        return list(templates)
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def resolve_templates(
    spec: str,
    dataset_templates: Sequence[str] | None,
    ensemble_templates: Sequence[str] | None = None,
    dataset_name: str = "the dataset",
) -> list[str]:
    """The template list `prompts.templates=<spec>` stands for (also the `prompt_templates` resolver)."""
    spec = str(spec)
    if spec == "single":
        templates = list(dataset_templates or [])
    elif spec == "dataset_ensemble":
        if not ensemble_templates:
            raise ConfigError(
                f"prompts.templates=dataset_ensemble: dataset {dataset_name} has no ensemble_templates; use single, "
                "clip80 or a template file."
            )
        templates = list(ensemble_templates)
    elif spec in TEMPLATE_SETS:
        templates = builtin_template_set(spec)
    elif Path(spec).expanduser().is_file():
        templates = read_template_file(spec)
    else:
        raise ConfigError(
            f"prompts.templates={spec!r}: expected one of {', '.join(TEMPLATE_SETS)}, or the path of a template file "
            "(a JSON list, or one template per line); no such set or file."
        )
    check_templates(templates, f"prompts.templates={spec}")
    return templates


def check_templates(templates: Sequence[str], source: str) -> None:
    if not templates:
        raise ConfigError(f"{source}: no template given (set dataset.templates, or choose another set).")
    for template in templates:
        # str.format would read any other brace as a field, so only the one placeholder is allowed.
        if "{}" not in template or re.search(r"[{}]", template.replace("{}", "")):
            raise ConfigError(f"{source}: template {template!r} needs exactly '{{}}' for the class name "
                              "and no other braces.")


# --------------------------------------------------------------------------- description files
def normalize_classname(name: str) -> str:
    """The form class names are matched in: case-insensitive, '_' read as a space, spaces collapsed."""
    return " ".join(name.replace("_", " ").lower().split())


def file_sha256(path: str | Path | None) -> str | None:
    """The content hash of a file (None for no path or a missing file: validation reports those)."""
    if path is None or not Path(path).expanduser().is_file():
        return None
    return hashlib.sha256(Path(path).expanduser().read_bytes()).hexdigest()


def read_descriptions(path: str | Path) -> dict[str, list[str]]:
    """A CuPL-style description file: JSON object class name -> list of sentences (or one sentence), keyed here
    by the normalised class name."""
    return load_descriptions(path)[0]


def load_descriptions(path: str | Path) -> tuple[dict[str, list[str]], str]:
    """The descriptions of `read_descriptions` and the SHA-256 of the very bytes they were parsed from."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"prompts.descriptions={path}: no such file (a JSON object class name -> sentences).")
    data = path.read_bytes()
    try:
        raw = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"prompts.descriptions={path}: not valid JSON ({err}).") from err
    if not isinstance(raw, dict):
        raise ConfigError(f"prompts.descriptions={path}: expected a JSON object class name -> list of sentences.")
    out: dict[str, list[str]] = {}
    origin: dict[str, str] = {}
    for name, sentences in raw.items():
        if isinstance(sentences, str):
            sentences = [sentences]
        if not isinstance(sentences, list) or not sentences or not all(
                isinstance(s, str) and s.strip() for s in sentences):
            raise ConfigError(f"prompts.descriptions={path}: class {name!r} needs a non-empty list of sentences.")
        key = normalize_classname(name)
        if key in out:
            # Two spellings of one class would silently weight one of them twice: refuse.
            raise ConfigError(f"prompts.descriptions={path}: {origin[key]!r} and {name!r} are the same class once "
                              "matched case-insensitively with '_' as a space; merge them.")
        out[key], origin[key] = list(sentences), name
    return out, hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- embeddings
_MEMORY_CACHE: OrderedDict[str, torch.Tensor] = OrderedDict()
_MEMORY_CACHE_SIZE = 32  # entries; a sweep job evaluates a handful of class lists


def clear_text_cache() -> None:
    _MEMORY_CACHE.clear()


@dataclass
class TextPrompts:
    """What a learner's hand-written class embeddings are made of (the learner's config, resolved)."""

    templates: list[str]
    descriptions_path: str | None = None
    descriptions_sha256: str | None = None  # the hash the config was composed with; a changed file is refused
    combine_templates: bool = False  # described classes average their sentences AND the filled templates
    descriptions: dict[str, list[str]] | None = field(default=None, repr=False)
    notes: list[str] = field(default_factory=list)  # for the run record (missing classes)
    _warned: set[str] = field(default_factory=set, repr=False)

    def __post_init__(self) -> None:
        self.templates = list(self.templates)
        check_templates(self.templates, "method.learner.templates")
        if self.descriptions_path is not None and self.descriptions is None:
            descriptions, actual = load_descriptions(self.descriptions_path)
            # The config's hash is what the record (and the resume check) says ran: a different file is refused.
            if self.descriptions_sha256 is not None and actual != self.descriptions_sha256:
                raise ConfigError(
                    f"prompts.descriptions={self.descriptions_path} changed after the config was composed (sha256 "
                    f"{actual[:12]}, the config holds {self.descriptions_sha256[:12]}); compose the run again."
                )
            self.descriptions, self.descriptions_sha256 = descriptions, actual

    def summary(self) -> dict[str, object]:
        """What ran, for a run record: the effective template count and, with descriptions, the file's hash."""
        out: dict[str, object] = {"n_templates": len(self.templates)}
        if self.descriptions is not None:
            out |= {"descriptions_sha256": self.descriptions_sha256, "combine_templates": self.combine_templates}
        return out

    def class_embeddings(self, clip: FrozenCLIP, classnames: Sequence[str]) -> torch.Tensor:
        """Normalised class embeddings [C, D]; classes the description file lacks use the templates (one warning
        per call lists them all)."""
        missing = self.missing(classnames)
        new = [name for name in missing if name not in self._warned]
        if new:
            message = (f"prompts.descriptions: {len(new)} of {len(classnames)} classes have no description and use "
                       f"the {len(self.templates)} template(s): {', '.join(new)}")
            log.warning(message)
            self.notes.append(message)
            self._warned.update(new)
        return class_embeddings(clip, self.templates, classnames, self.descriptions, self.combine_templates)

    def missing(self, classnames: Sequence[str]) -> list[str]:
        if self.descriptions is None:
            return []
        return [name for name in classnames if normalize_classname(name) not in self.descriptions]


def _cache_key(clip: FrozenCLIP, templates: Sequence[str], classnames: Sequence[str],
               descriptions: dict[str, list[str]] | None, combine: bool) -> str:
    # Only the descriptions of the classes asked for matter, so two files that agree on them share an entry.
    used = None if descriptions is None else {
        n: descriptions.get(normalize_classname(n)) for n in classnames}
    payload = json.dumps({"weights": clip.weights_id, "dtype": str(clip.dtype),
                          "truncate": getattr(clip, "truncate_text", None), "templates": list(templates),
                          "classnames": list(classnames), "descriptions": used, "combine": combine}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


@torch.no_grad()
def class_embeddings(
    clip: FrozenCLIP,
    templates: Sequence[str],
    classnames: Sequence[str],
    descriptions: dict[str, list[str]] | None = None,
    combine_templates: bool = False,
) -> torch.Tensor:
    """Normalised class embeddings [C, D] (cached per process by weights, prompts and class list)."""
    key = _cache_key(clip, templates, classnames, descriptions, combine_templates)
    cached = _MEMORY_CACHE.get(key)
    if cached is None:
        cached = _compute(clip, list(templates), list(classnames), descriptions, combine_templates).cpu()
        _MEMORY_CACHE[key] = cached
        while len(_MEMORY_CACHE) > _MEMORY_CACHE_SIZE:
            _MEMORY_CACHE.popitem(last=False)
    else:
        _MEMORY_CACHE.move_to_end(key)
    return cached.clone().to(_device(clip))


def _device(clip: FrozenCLIP) -> torch.device:
    return clip.logit_scale().device  # where the model's parameters live


def _template_embeddings(clip: FrozenCLIP, templates: list[str], classnames: list[str]) -> torch.Tensor:
    names = [name.replace("_", " ") for name in classnames]
    per_template = torch.stack([clip.encode_text([t.format(n) for n in names]) for t in templates])
    # Ensembling as in CLIP's ImageNet notebook: average the normalised embeddings, renormalise.
    return F.normalize(per_template.mean(dim=0), dim=-1)


def _compute(clip: FrozenCLIP, templates: list[str], classnames: list[str],
             descriptions: dict[str, list[str]] | None, combine: bool) -> torch.Tensor:
    if descriptions is None:
        return _template_embeddings(clip, templates, classnames)
    described = [i for i, n in enumerate(classnames) if normalize_classname(n) in descriptions]
    fallback = [i for i, n in enumerate(classnames) if normalize_classname(n) not in descriptions]
    out = torch.empty(len(classnames), clip.embed_dim, device=_device(clip))
    if fallback:
        out[fallback] = _template_embeddings(clip, templates, [classnames[i] for i in fallback])
    if described:
        sentences, counts = [], []
        for i in described:
            own = list(descriptions[normalize_classname(classnames[i])])
            if combine:
                own += [t.format(classnames[i].replace("_", " ")) for t in templates]
            sentences += own
            counts.append(len(own))
        # One text-encoder pass over every sentence, then the mean per class (CuPL / CLIP_benchmark): each
        # sentence's embedding is normalised by the encoder, their mean renormalised.
        feats = clip.encode_text(sentences)
        means = torch.stack([chunk.mean(dim=0) for chunk in torch.split(feats, counts)])
        out[described] = F.normalize(means, dim=-1).to(out.dtype)
    return out
