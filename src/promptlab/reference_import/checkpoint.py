"""A Dassl checkpoint of the reference's prompt learner (`output/.../prompt_learner/model.pth.tar-N`) to a promptlab
prompt file (the format engine/build.py::save_learner writes, loaded by `load_prompt=` and promptlab.load_prompt).

The reference's layout (CoOp repo trainers/coop.py, cocoop.py; KgCoOp repo trainers/kgcoop.py; Dassl
dassl/engine/trainer.py::save_model and dassl/utils/torchtools.py::save_checkpoint): a torch.save'd dict
{state_dict, epoch, optimizer, scheduler, val_result}; state_dict is the prompt learner's own (no
"prompt_learner." prefix, "module." already stripped): `ctx` [M, W] or class-specific [C, M, W], the fixed
buffers `token_prefix` [C, 1, W] (SOS) and `token_suffix` [C, 77 - 1 - M, W] (class name, ".", EOT, padding),
which the reference's own load_model deletes, and for CoCoOp `meta_net.linear{1,2}.{weight,bias}`; KgCoOp also
saves `bias_vectors` and a `meta_net.linear1` that its forward never uses. The scheduler entry holds pickled
optimiser/scheduler objects, hence the restricted unpickler.

The backbone: a Dassl checkpoint does not say which CLIP it was trained on. The user names the model config
(promptlab-train's overrides, e.g. `model=vit_b16 model.weights_file=/models/ViT-B-16.pt`); the importer loads it
and checks the checkpoint against it: the context width must be the backbone's, and `token_prefix` (saved by
the reference from its own CLIP) must equal this backbone's start-token embedding. The prompt file then carries
that backbone's fingerprint, so promptlab-train refuses it on any other backbone as it does for its own prompts.

MaPLe, IVLP (deep language), PromptSRC and VPT checkpoints hold the whole CustomCLIP, frozen CLIP included, and keep
some tokens inside the encoders: deep_checkpoint.py maps them.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from promptlab.errors import ConfigError, MissingPathError
from promptlab.reference_import.deep_checkpoint import (
    DEEP_METHODS,
    check_deep_backbone,
    deep_learner_state,
    guess_deep_method,
)
from promptlab.reference_import.unpickler import torch_load

log = logging.getLogger(__name__)

METHODS = ("coop", "cocoop", "kgcoop", "prograd")
# Saved by KgCoOp's prompt learner but never used by its forward (trainers/kgcoop.py): dropped, and said so.
_KGCOOP_UNUSED = ("bias_vectors", "meta_net.")
_FIXED_BUFFERS = ("token_prefix", "token_suffix", "token_midfix")


class BackboneCheckError(ConfigError):
    """The checkpoint was not trained on the named backbone (width or start-token embedding differ)."""


class LayoutCheckError(ConfigError):
    """The fixed tokens after the context differ from the reference's (class names, their order, init phrase)."""


@dataclass
class DasslCheckpoint:
    """What a Dassl prompt-learner checkpoint holds, read through the restricted unpickler."""

    path: Path
    state_dict: dict[str, torch.Tensor]
    epoch: int | None
    sha256: str
    other_keys: list[str] = field(default_factory=list)

    @property
    def ctx(self) -> torch.Tensor:
        return self.state_dict["ctx"]

    @property
    def n_ctx(self) -> int:
        return int(self.ctx.shape[-2])

    @property
    def csc(self) -> bool:
        return self.ctx.dim() == 3

    @property
    def n_classes(self) -> int | None:
        """Training classes (rows of the fixed buffers, or of a class-specific context); None if unknown."""
        for key in ("token_prefix", "token_suffix"):
            if key in self.state_dict:
                return int(self.state_dict[key].shape[0])
        return int(self.ctx.shape[0]) if "ctx" in self.state_dict and self.csc else None

    def guess_method(self) -> str:
        """The deep-prompt trainer its keys name (deep_checkpoint.guess_deep_method); else cocoop when the meta-net
        has its second layer (KgCoOp's unused meta-net has only linear1), else coop."""
        deep = guess_deep_method(set(self.state_dict))
        if deep is not None:
            return deep
        return "cocoop" if any(k.startswith("meta_net.linear2.") for k in self.state_dict) else "coop"


def read_dassl_checkpoint(path: Path) -> DasslCheckpoint:
    path = Path(path)
    if not path.is_file():
        raise MissingPathError(f"{path}: no such file (a Dassl checkpoint such as "
                               "output/<run>/prompt_learner/model.pth.tar-50 is expected).")
    raw = torch_load(path)
    if not isinstance(raw, Mapping) or not isinstance(raw.get("state_dict"), Mapping):
        keys = sorted(map(str, raw))[:8] if isinstance(raw, Mapping) else "-"
        raise ConfigError(f"{path} is not a Dassl checkpoint: expected a dict with a 'state_dict' entry "
                          f"(got {type(raw).__name__} with keys {keys}).")
    state = {}
    for key, value in raw["state_dict"].items():
        key = str(key).removeprefix("module.").removeprefix("prompt_learner.")
        if not isinstance(value, torch.Tensor):
            raise ConfigError(f"{path}: state_dict[{key!r}] is a {type(value).__name__}, not a tensor.")
        state[key] = value
    if "ctx" not in state and guess_deep_method(set(state)) is None:
        raise ConfigError(f"{path} has no 'ctx' in its state_dict (keys: {sorted(state)[:12]}): it is not the prompt "
                          "learner of CoOp, CoCoOp, KgCoOp, ProGrad, MaPLe, IVLP, PromptSRC or VPT (pass "
                          "<run>/<model name>/model.pth.tar-N).")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    epoch = raw.get("epoch")
    return DasslCheckpoint(path=path, state_dict=state, epoch=int(epoch) if isinstance(epoch, int) else None,
                           sha256=digest, other_keys=sorted(str(k) for k in raw if k != "state_dict"))


def learner_state(ckpt: DasslCheckpoint, method: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The tensors promptlab's learner of `method` learns (float32), and the keys left out with the reason."""
    if method not in METHODS:
        raise ConfigError(f"--method {method!r}: importable methods are {METHODS}.")
    kept, dropped = {}, []
    for key, value in ckpt.state_dict.items():
        if key in _FIXED_BUFFERS:
            dropped.append(f"{key} (fixed token embeddings, rebuilt from the class names as the reference does)")
        elif method == "kgcoop" and key.startswith(_KGCOOP_UNUSED):
            dropped.append(f"{key} (saved by KgCoOp's prompt learner, unused by its forward)")
        else:
            kept[key] = value.detach().float()  # the reference trains fp16 tensors under PREC=fp16
    return kept, dropped


def check_backbone(ckpt: DasslCheckpoint, clip: Any, model_name: str) -> str:
    """Raise BackboneCheckError unless the checkpoint fits `clip`; returns what was checked, for the file."""
    if ckpt.ctx.shape[-1] != clip.ctx_dim:
        raise BackboneCheckError(
            f"{ckpt.path}: the context vectors are {ckpt.ctx.shape[-1]}-wide, model {model_name}'s token embedding "
            f"is {clip.ctx_dim}-wide: the checkpoint was trained on another backbone. Name its model config "
            "(e.g. model=vit_b16 model.weights_file=/models/ViT-B-16.pt).")
    prefix = ckpt.state_dict.get("token_prefix")
    if prefix is None:
        return "context width only (the checkpoint has no token_prefix to compare)"
    start = clip.tokenize([""])[:, :1]
    ours = clip.embed_tokens(start)[0, 0].float().cpu()
    theirs = prefix.reshape(-1, prefix.shape[-1]).float()
    # fp16 round-off: the reference stores the embedding in its model's dtype (fp16 for OpenAI weights).
    if not torch.allclose(theirs, ours.expand_as(theirs), rtol=1e-2, atol=1e-3):
        diff = float((theirs - ours).abs().max())
        raise BackboneCheckError(
            f"{ckpt.path}: its token_prefix (the start-token embedding of the CLIP it was trained with) differs from "
            f"model {model_name}'s by up to {diff:.3g}: the checkpoint was trained on another backbone or other "
            "weights. Name the model config it was trained with (model=..., model.weights_file=...).")
    return "context width and token_prefix equal this backbone's start-token embedding"


def check_layout(ckpt: DasslCheckpoint, learner: Any, clip: Any, classnames: list[str]) -> str:
    """With the training class names, the reference's token_suffix (class name, ".", EOT, ... after the context) must
    equal the suffix promptlab builds for them: same names in the same order, same fixed words."""
    suffix = ckpt.state_dict.get("token_suffix")
    if suffix is None or not classnames:
        return "not checked (needs --classnames and a token_suffix in the checkpoint)"
    learner.set_classnames(clip, classnames)
    ours = learner.suffix.detach().float().cpu()
    theirs = suffix[:, : ours.shape[1]].float()
    if theirs.shape != ours.shape or not torch.allclose(theirs, ours, rtol=1e-2, atol=1e-3):
        bad = [i for i in range(min(len(theirs), len(ours)))
               if not torch.allclose(theirs[i], ours[i], rtol=1e-2, atol=1e-3)]
        first = f"first at class {bad[0]} ({classnames[bad[0]]!r})" if bad else f"shapes {tuple(theirs.shape)}"
        raise LayoutCheckError(
            f"{ckpt.path}: the tokens after the context differ from the reference's token_suffix ({first}): the class "
            "names or their order differ from the training run's, or the init phrase left other fixed words. Pass "
            "the class names in label order (--classnames) and the method the reference trained.")
    return "token_suffix equals the prompts built for the given class names"


def import_checkpoint(
    path: Path, out: Path, overrides: Sequence[str] = (), method: str | None = None,
    classnames: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Convert a Dassl checkpoint into a promptlab prompt file at `out`; returns the file's `imported` summary.

    `overrides` are promptlab-train's (model=..., model.weights_file=..., dataset=..., method.learner.*): they name
    the backbone and the learner config the prompt is evaluated with. `classnames`: the training classes, in
    label order, when known (class-specific contexts and promptlab.load_prompt(...).classify need them).
    """

    from promptlab.config import compose
    from promptlab.engine.build import build_learner
    from promptlab.methods.base import RunContext
    from promptlab.models import load_clip_from_config

    ckpt = read_dassl_checkpoint(path)
    method = method or ckpt.guess_method()
    if method in DEEP_METHODS:
        return _import_deep(ckpt, method, Path(out), overrides, classnames)
    state, dropped = learner_state(ckpt, method)
    # Placeholder context text ("X .. X"): the context vectors replace those slots, so the prompt is the same as
    # the reference's whatever phrase it was initialised from (one token per slot, as CoOp's init requires).
    # ProGrad keeps its init phrase: with punctuation the reference leaves phrase tokens as fixed words after
    # the context (methods/prograd.py), so the text decides the suffix (pass ctx_init=null if CTX_INIT was off).
    shape = [f"method={method}", f"method.learner.n_ctx={ckpt.n_ctx}"]
    if method != "prograd":
        shape.append("method.learner.ctx_init=null")
    if method != "cocoop":
        shape.append(f"method.learner.csc={str(ckpt.csc).lower()}")
    cfg = compose([*shape, *overrides])
    clip = load_clip_from_config(cfg.model)
    checked = check_backbone(ckpt, clip, str(cfg.model.name))
    names = list(classnames or [])
    if ckpt.n_classes is not None and names and len(names) != ckpt.n_classes:
        raise ConfigError(f"{len(names)} class names given, the checkpoint was trained on {ckpt.n_classes} classes.")
    if ckpt.csc and not names:
        names = [f"class_{i}" for i in range(int(ckpt.ctx.shape[0]))]
    learner = build_learner(cfg.method, RunContext(clip=clip, classnames=names or ["class_0"],
                                                   init_seed=int(cfg.seed)))
    _load_strict(learner, state, ckpt.path, method)
    layout = check_layout(ckpt, learner, clip, list(classnames or []))
    return _write_prompt(ckpt, method, out, cfg, clip, learner, names, checked, layout, dropped, shape)


def _load_strict(learner: Any, state: dict[str, torch.Tensor], path: Path, method: str) -> None:
    missing, unexpected = learner.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ConfigError(
            f"{path} does not fit promptlab's {method} learner: missing {sorted(missing)}, unexpected "
            f"{sorted(unexpected)}. Pass --method ({', '.join(METHODS + DEEP_METHODS)}) matching the reference "
            "trainer.")


def _write_prompt(
    ckpt: DasslCheckpoint, method: str, out: Path, cfg: Any, clip: Any, learner: Any, names: list[str],
    checked: str, layout: str, dropped: list[str], shape: list[str],
) -> dict[str, Any]:
    from promptlab.config.registry import plain
    from promptlab.io import atomic_torch_save

    imported = {
        "format": "dassl",
        "source": str(ckpt.path.resolve()),
        "source_sha256": ckpt.sha256,
        "epoch": ckpt.epoch,
        "method": method,
        "n_train_classes": ckpt.n_classes,
        "backbone_check": checked,
        "layout_check": layout,
        "dropped_keys": dropped,
        "learner_overrides": shape,  # the learner shape the prompt loads into (printed by the CLI)
    }
    payload = {
        # The same keys as engine/build.py::save_learner, plus where the prompt came from.
        "backbone": dict(clip.fingerprint),
        "state_dict": {k: v.detach().cpu() for k, v in learner.state_dict().items()},
        "method": plain(cfg.method),
        "model": plain(cfg.model),
        "dataset": str(cfg.dataset.name),
        "train_classnames": names,
        "imported": imported,
    }
    atomic_torch_save(payload, Path(out))
    log.info("imported %s (%s, epoch %s) to %s", ckpt.path, method, ckpt.epoch, out)
    return imported


def _import_deep(
    ckpt: DasslCheckpoint, method: str, out: Path, overrides: Sequence[str], classnames: Sequence[str] | None,
) -> dict[str, Any]:
    """MaPLe, IVLP, deep language, PromptSRC, VPT (deep_checkpoint.py). The learner keeps its config's ctx_init
    ("a photo of a", every reference config's): with n_ctx below the phrase's token count the reference keeps
    the rest of the phrase as fixed words after the context, which check_fixed_words compares with the
    checkpoint's token_suffix (pass method.learner.ctx_init=... if the run used another phrase, null if none)."""

    from promptlab.config import compose
    from promptlab.engine.build import build_learner
    from promptlab.methods.base import RunContext
    from promptlab.models import load_clip_from_config
    from promptlab.reference_import.deep_checkpoint import check_fixed_words

    state, dropped, shape = deep_learner_state(ckpt.state_dict, method)
    cfg = compose([*shape, *overrides])
    clip = load_clip_from_config(cfg.model)
    name = str(cfg.model.name)
    checked = check_deep_backbone(ckpt.state_dict, clip, name, ckpt.path)
    if "token_prefix" in ckpt.state_dict:
        checked += "; " + check_backbone(ckpt, clip, name)
    names = list(classnames or [])
    if ckpt.n_classes is not None and names and len(names) != ckpt.n_classes:
        raise ConfigError(f"{len(names)} class names given, the checkpoint was trained on {ckpt.n_classes} classes.")
    learner = build_learner(cfg.method, RunContext(clip=clip, classnames=names or ["class_0"],
                                                   init_seed=int(cfg.seed)))
    _load_strict(learner, state, ckpt.path, method)
    layout = check_fixed_words(ckpt.state_dict, learner, clip, ckpt.path)
    if names and "token_suffix" in ckpt.state_dict:
        layout += "; " + check_layout(ckpt, learner, clip, names)
    return _write_prompt(ckpt, method, out, cfg, clip, learner, names, checked, layout, dropped, shape)


def deep_evaluate_command(out: Path, learner_overrides: Sequence[str], overrides: Sequence[str]) -> str:
    """The promptlab-train command that evaluates an imported deep prompt (the learner shape read from it)."""
    parts = ["python -m promptlab.train", *learner_overrides]
    parts += [o for o in overrides if not o.startswith("method=")]
    return " ".join([*parts, "method.optim.epochs=0", f"load_prompt={out}"])


def evaluate_command(out: Path, method: str, n_ctx: int, csc: bool, overrides: Sequence[str]) -> str:
    """The promptlab-train command that evaluates an imported prompt (printed by the CLI)."""
    parts = ["python -m promptlab.train", f"method={method}", f"method.learner.n_ctx={n_ctx}"]
    if method != "prograd":
        parts.append("method.learner.ctx_init=null")
    if csc:
        parts.append("method.learner.csc=true")
    parts += [o for o in overrides if not o.startswith("method=")]
    parts += ["method.optim.epochs=0", f"load_prompt={out}"]
    return " ".join(parts)
