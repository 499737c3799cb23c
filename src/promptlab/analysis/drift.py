"""Prompt drift: how far a learned prompt moves the class-text prototypes away from the hand-written ones,
and what that does to classes it never saw.

CoOp learns one context on the base classes only; the direction that best separates those classes
(a background, a size, a style) moves every prototype, novel ones included, and for an unseen class
it can be the wrong direction (Zhou et al., CoCoOp, CVPR 2022, figure 1: CoOp's novel-class drop).
With z_c the zero-shot prototype of class c (the dataset's template) and w_c the learned one:

- drift: cos(z_c, w_c) per class and per group (base / novel), drift = 1 - cos;
- shift: Delta_c = w_c - z_c, the mean base shift mu, each class's projection on mu/|mu|, and the share
  of sum_c |Delta_c|^2 that lies along mu (how much of the move is one shared direction);
- base capture: novel test images scored among all classes, the fraction that lands on a base class,
  zero-shot against learned, which base classes take them, and (toy world) by background and size;
- worked examples: novel images the learned prompt sends to a base class, with their similarities to
  their own class and to the top base classes before and after learning.

Instance-conditional learners (CoCoOp) give one prototype per image, w_c(x): every statistic is then
averaged over the test images, and capture uses the per-image logits.

Learners with image-tower tokens (`encodes_images`: VPT, IVLP, MaPLe, PromptSRC) score with *prompted* image
features v'(x), not the frozen v(x): the learned scores (capture, accuracy, examples) use v'(x), the zero-shot
ones v(x), so the learned accuracies are those the run recorded. The text drift above is unchanged (it
compares class-text embeddings only; VPT's fixed text has none against the same template); the image side's
move is reported as image drift, 1 - cos(v(x), v'(x)) averaged over the base and the novel test images.
Learners that score images themselves (`direct_logits`: linear probe, Tip-Adapter) have no class-text
embeddings to compare and are refused.

This module is pure computation (`analyze`); `report.py` writes analysis.json, summary.md and the PNGs;
`runs.py` connects both to training runs and finished run dirs.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from promptlab.data.types import EvalSet
from promptlab.errors import AnalysisError  # re-exported: promptlab.analysis.drift.AnalysisError
from promptlab.methods.base import PromptLearner
from promptlab.methods.zeroshot import template_embeddings
from promptlab.models.frozen import FrozenCLIP

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1

TOP_CAPTURING = 5  # base classes listed as the main capturers of novel images
TOP_BASE_PER_EXAMPLE = 3
# Toy-world attributes (attributes.json) by which base capture is broken down: the nuisances that the
# spurious rule ties to base classes (see the toy world generator, promptlab.toy.world).
BREAKDOWN_ATTRIBUTES = ("background", "size")
# Shifts shorter than this are float noise of two computations of the same unit vector (float32 rounding
# is ~1e-7 per component): no direction is defined for them.
NO_MOVE = 1e-5
# Images x classes prototypes materialised at once for instance-conditional learners (memory bound).
PROMPTS_PER_CHUNK = 16384

FeaturesFn = Callable[[EvalSet], tuple[torch.Tensor, torch.Tensor]]


# --------------------------------------------------------------------------- drift statistics
class DriftSums:
    """Running sums over prototype samples (one for a static prompt, one per image for CoCoOp)."""

    def __init__(self, zeroshot: torch.Tensor) -> None:
        self.zeroshot = zeroshot.double()
        n_classes, dim = zeroshot.shape
        self.n_samples = 0
        self.cos_sum = torch.zeros(n_classes, dtype=torch.float64)
        self.cos_min = torch.full((n_classes,), math.inf, dtype=torch.float64)
        self.cos_max = torch.full((n_classes,), -math.inf, dtype=torch.float64)
        self.shift_sum = torch.zeros(n_classes, dim, dtype=torch.float64)
        self.shift_sq_sum = torch.zeros(n_classes, dtype=torch.float64)

    def add(self, learned: torch.Tensor) -> None:
        """learned: [B, C, D] prototypes of B samples (a static prompt is one sample)."""
        learned = learned.detach().double().cpu()
        shift = learned - self.zeroshot  # [B, C, D]
        # Cosine of the two embeddings as they are (both unit vectors for real learners).
        cos = (learned * self.zeroshot).sum(-1) / (learned.norm(dim=-1) * self.zeroshot.norm(dim=-1)).clamp_min(1e-12)
        self.n_samples += learned.shape[0]
        self.cos_sum += cos.sum(0)
        self.cos_min = torch.minimum(self.cos_min, cos.min(0).values)
        self.cos_max = torch.maximum(self.cos_max, cos.max(0).values)
        self.shift_sum += shift.sum(0)
        self.shift_sq_sum += shift.pow(2).sum(-1).sum(0)


def _share(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator > NO_MOVE**2 else None


def drift_report(
    sums: DriftSums,
    classnames: Sequence[str],
    groups: Mapping[str, Sequence[int]],
    reference: str,
    per_sample: bool = False,
) -> dict[str, Any]:
    """Per-class and per-group drift from accumulated sums; the mean shift mu is taken over `reference`.

    Group statistics: cosine mean/min/max over the group's classes; `shared_share` = sum_c (Delta_c . mu_hat)^2
    / sum_c |Delta_c|^2, the part of the group's squared shift along the shared base direction (None when
    nothing moved). With per-image prototypes (`per_sample`), Delta_c is the image-averaged shift and
    `instance_share` = 1 - sum_c |mean_x Delta_c(x)|^2 / sum_c mean_x |Delta_c(x)|^2 is the part of the
    squared move that changes from image to image.
    """
    if sums.n_samples == 0:
        raise AnalysisError("No prototypes to analyse: the evaluation sets hold no test images.")
    n = float(sums.n_samples)
    cos_mean = sums.cos_sum / n
    shift_mean = sums.shift_sum / n  # [C, D]
    shift_sq_mean = sums.shift_sq_sum / n
    mu = shift_mean[list(groups[reference])].mean(0)
    mu_norm = float(mu.norm())
    direction = mu / mu_norm if mu_norm > NO_MOVE else None
    along = shift_mean @ direction if direction is not None else torch.zeros(len(classnames), dtype=torch.float64)
    shift_norm = shift_mean.norm(dim=-1)

    group_of = {index: name for name, indices in groups.items() for index in indices}
    classes = []
    for c, name in enumerate(classnames):
        entry: dict[str, Any] = {
            "name": name,
            "group": group_of.get(c),
            "cosine": float(cos_mean[c]),
            "drift": 1.0 - float(cos_mean[c]),
            "shift_norm": float(shift_norm[c]),
            "shift_along_mean": float(along[c]),
            # cos of the angle between the class's move and the shared direction (None: no move).
            "shift_alignment": (float(along[c] / shift_norm[c])
                                if direction is not None and shift_norm[c] > NO_MOVE else None),
        }
        if per_sample:
            entry["cosine_min"] = float(sums.cos_min[c])
            entry["cosine_max"] = float(sums.cos_max[c])
        classes.append(entry)

    group_stats = {}
    for name, indices in groups.items():
        index = list(indices)
        cos = cos_mean[index]
        stats: dict[str, Any] = {
            "n_classes": len(index),
            "cosine_mean": float(cos.mean()),
            "cosine_min": float(cos.min()),
            "cosine_max": float(cos.max()),
            "drift_mean": 1.0 - float(cos.mean()),
            "shift_sq_sum": float(shift_norm[index].pow(2).sum()),
            "shared_share": _share(float(along[index].pow(2).sum()), float(shift_norm[index].pow(2).sum())),
        }
        if per_sample:
            total = float(shift_sq_mean[index].sum())
            systematic = _share(float(shift_norm[index].pow(2).sum()), total)
            stats["instance_share"] = None if systematic is None else max(0.0, 1.0 - systematic)
        group_stats[name] = stats
    return {
        "reference_group": reference,
        "mean_shift_norm": mu_norm,
        "n_prototype_samples": sums.n_samples,
        "per_image": per_sample,
        "groups": group_stats,
        "classes": classes,
    }


def drift_statistics(
    zeroshot: torch.Tensor,
    learned: torch.Tensor,
    classnames: Sequence[str],
    groups: Mapping[str, Sequence[int]],
    reference: str,
) -> dict[str, Any]:
    """`drift_report` of prototypes given directly: learned [C, D] (static) or [B, C, D] (per image)."""
    sums = DriftSums(zeroshot)
    sums.add(learned if learned.dim() == 3 else learned.unsqueeze(0))
    return drift_report(sums, classnames, groups, reference, per_sample=learned.dim() == 3)


# --------------------------------------------------------------------------- scoring images
@dataclass
class Scores:
    """Cosines of test images with the zero-shot and with the learned prototypes, [N, C] each; for a learner
    that encodes images itself, `image_cosine` [N] is cos(frozen, prompted) of each image (else None)."""

    zeroshot: torch.Tensor
    learned: torch.Tensor
    sums: DriftSums
    image_cosine: torch.Tensor | None = None

    def rows(self, index: slice) -> Scores:
        """The scores of some of the images (the drift sums stay those of all images)."""
        image_cosine = None if self.image_cosine is None else self.image_cosine[index]
        return Scores(self.zeroshot[index], self.learned[index], self.sums, image_cosine)


def _device_of(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


@torch.no_grad()
def score_images(
    clip: FrozenCLIP, learner: PromptLearner, zeroshot: torch.Tensor, features: torch.Tensor,
    learned_features: torch.Tensor | None = None,
) -> Scores:
    """Score images among the learner's current class list, accumulating the drift sums on the way.

    `features` are the frozen image features (zero-shot scores); `learned_features` the ones the learner
    scores with when it encodes images itself (same images, same order; None: the frozen ones).
    A static learner gives one set of prototypes (one drift sample); an instance-conditional one gives
    prototypes per image, computed in chunks of at most PROMPTS_PER_CHUNK image x class prompts.
    """
    device = _device_of(clip)
    features = features.to(device).float()
    image_cosine = None
    if learned_features is None:
        learned_features = features
    else:
        learned_features = learned_features.to(device).float()
        if learned_features.shape != features.shape:
            raise AnalysisError(f"{learned_features.shape[0]} prompted image features for {features.shape[0]} "
                                "frozen ones: both must come from the same evaluation images, in the same order.")
        image_cosine = torch.nn.functional.cosine_similarity(features, learned_features, dim=-1).cpu()
    zeroshot = zeroshot.to(device).float()
    sums = DriftSums(zeroshot.cpu())
    zs_cos = (features @ zeroshot.t()).cpu()
    if not learner.instance_conditional:
        learned = learner(clip, None).float()
        sums.add(learned.unsqueeze(0))
        return Scores(zs_cos, (learned_features @ learned.t()).cpu(), sums, image_cosine)
    chunk = max(1, PROMPTS_PER_CHUNK // max(zeroshot.shape[0], 1))
    parts = []
    for start in range(0, learned_features.shape[0], chunk):
        feats = learned_features[start : start + chunk]
        learned = learner(clip, feats).float()  # [B, C, D]
        sums.add(learned)
        parts.append(torch.einsum("bd,bcd->bc", feats, learned).cpu())
    learned_cos = torch.cat(parts) if parts else torch.empty(0, zeroshot.shape[0])
    return Scores(zs_cos, learned_cos, sums, image_cosine)


def image_drift(image_cosine: torch.Tensor | None) -> dict[str, Any] | None:
    """Image drift of a group of test images: 1 - cos(frozen, prompted feature), mean/min/max over the images
    (None for a learner that scores frozen features)."""
    if image_cosine is None:
        return None
    if image_cosine.numel() == 0:
        return {"n_images": 0, "cosine_mean": None, "cosine_min": None, "cosine_max": None, "drift_mean": None}
    cos = image_cosine.double()
    return {"n_images": int(cos.numel()), "cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()),
            "cosine_max": float(cos.max()), "drift_mean": 1.0 - float(cos.mean())}


def _kept_items(eval_set: EvalSet, n_features: int) -> list:
    """The items that have features (unreadable images skipped with on_error=skip are left out)."""
    skipped = {s.get("impath") for s in eval_set.skipped}
    items = [item for item in eval_set.items if item.impath not in skipped]
    assert len(items) == n_features, f"{eval_set.name}: {len(items)} items but {n_features} features"
    return items


# --------------------------------------------------------------------------- attributes (toy world)
def load_attributes(dataset_dir: Path | None) -> dict[str, dict[str, Any]] | None:
    """`<dataset_dir>/attributes.json` (relative image path -> attributes) or None when there is none."""
    if dataset_dir is None:
        return None
    path = Path(dataset_dir) / "attributes.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def _relative_path(impath: str, dataset_dir: Path | None) -> str:
    if dataset_dir is None:
        return impath
    try:
        return Path(impath).resolve().relative_to(Path(dataset_dir).resolve()).as_posix()
    except ValueError:
        return impath


def _attributes_of(relpath: str, attributes: Mapping[str, dict[str, Any]] | None) -> dict[str, Any] | None:
    """Attributes of an image; the file's keys are relative to the image folder, so leading folders
    of the dataset-relative path are dropped until a key matches."""
    if not attributes:
        return None
    parts = relpath.split("/")
    for start in range(len(parts)):
        hit = attributes.get("/".join(parts[start:]))
        if hit is not None:
            return hit
    return None


# --------------------------------------------------------------------------- base capture
def _accuracy(cos: torch.Tensor, labels: torch.Tensor, columns: slice) -> float:
    """Top-1 % among the classes in `columns` (labels are global, columns.start is the first label)."""
    if labels.numel() == 0:
        return float("nan")
    pred = cos[:, columns].argmax(1) + (columns.start or 0)
    return float((pred == labels).double().mean() * 100.0)


def _capture_of(cos: torch.Tensor, labels: torch.Tensor, n_base: int, classnames: Sequence[str]) -> dict[str, Any]:
    """Novel images scored among all classes: each is right, captured by a base class, or confused with
    another novel class (the three fractions sum to 1)."""
    pred = cos.argmax(1)
    captured = pred < n_base
    confused = ~captured & (pred != labels)
    counts = torch.bincount(pred[captured], minlength=n_base)
    order = sorted(range(n_base), key=lambda b: (-int(counts[b]), b))
    n_images = int(labels.numel())
    return {
        "n_captured": int(captured.sum()),
        "fraction": float(captured.double().mean()) if n_images else float("nan"),
        "n_confused": int(confused.sum()),
        "confused_fraction": float(confused.double().mean()) if n_images else float("nan"),
        "novel_acc": _accuracy(cos, labels, slice(n_base, cos.shape[1])),
        "all_class_acc": float((pred == labels).double().mean() * 100.0) if n_images else float("nan"),
        "counts_by_base_class": {classnames[b]: int(counts[b]) for b in range(n_base)},
        "top_capturing": [{"class": classnames[b], "count": int(counts[b])}
                          for b in order[:TOP_CAPTURING] if counts[b] > 0],
    }


def _majority(values: list[Any]) -> Any:
    return Counter(values).most_common(1)[0][0] if values else None


def _attribute_breakdown(
    novel_attrs: list[dict[str, Any] | None],
    base_attrs: list[dict[str, Any] | None],
    base_labels: torch.Tensor,
    predictions: dict[str, torch.Tensor],
    n_base: int,
) -> dict[str, Any] | None:
    """Capture by the novel image's attribute value, and how often the capturing base class's typical
    value (the majority among its test images) is the image's own: the spurious rule at work."""
    if not novel_attrs or any(a is None for a in novel_attrs):
        return None
    keys = [k for k in BREAKDOWN_ATTRIBUTES if all(k in a for a in novel_attrs)]
    if not keys:
        return None
    by_value: dict[str, Any] = {}
    matches: dict[str, Any] = {}
    for key in keys:
        values = [a[key] for a in novel_attrs]
        rows = {}
        for value in sorted(set(values), key=str):
            mask = torch.tensor([v == value for v in values])
            rows[str(value)] = {"n_images": int(mask.sum())} | {
                name: float((pred[mask] < n_base).double().mean()) for name, pred in predictions.items()
            }
        by_value[key] = rows
        typical = [
            _majority([a[key] for a, lbl in zip(base_attrs, base_labels.tolist(), strict=True)
                       if a is not None and key in a and lbl == b])
            for b in range(n_base)
        ]
        matches[key] = {}
        for name, pred in predictions.items():
            captured = [(i, int(p)) for i, p in enumerate(pred.tolist()) if p < n_base]
            same = sum(1 for i, b in captured if typical[b] is not None and typical[b] == values[i])
            matches[key][name] = {"n_captured": len(captured),
                                  "fraction": same / len(captured) if captured else None}
    return {"by_value": by_value, "capturer_shares_value": matches}


# --------------------------------------------------------------------------- worked examples
def _pick_examples(
    zs_pred: torch.Tensor, learned_pred: torch.Tensor, labels: torch.Tensor, n_base: int, n_examples: int, seed: int
) -> list[tuple[int, str]]:
    """Novel images that zero-shot got right and the learned prompt sends to a base class, then a seeded
    random fill-up; (index, reason) sorted by index within each kind."""
    if n_examples <= 0 or labels.numel() == 0:
        return []
    generator = torch.Generator().manual_seed(seed)
    captured = ((zs_pred == labels) & (learned_pred < n_base)).nonzero().flatten()
    if captured.numel() > n_examples:
        captured = captured[torch.randperm(captured.numel(), generator=generator)[:n_examples]]
    chosen = sorted(captured.tolist())
    taken = set(chosen)
    rest = torch.tensor([i for i in range(labels.numel()) if i not in taken], dtype=torch.long)
    n_fill = min(n_examples - len(chosen), rest.numel())
    fill = sorted(rest[torch.randperm(rest.numel(), generator=generator)[:n_fill]].tolist()) if n_fill > 0 else []
    return [(i, "captured") for i in chosen] + [(i, "random") for i in fill]


def _examples(
    scores: Scores, labels: torch.Tensor, items: list, classnames: Sequence[str], n_base: int,
    dataset_dir: Path | None, attributes: Mapping[str, dict[str, Any]] | None, n_examples: int, seed: int,
) -> list[dict[str, Any]]:
    zs_pred, learned_pred = scores.zeroshot.argmax(1), scores.learned.argmax(1)
    out = []
    for index, reason in _pick_examples(zs_pred, learned_pred, labels, n_base, n_examples, seed):
        label = int(labels[index])
        zs, learned = scores.zeroshot[index], scores.learned[index]
        top_base = learned[:n_base].argsort(descending=True)[:TOP_BASE_PER_EXAMPLE].tolist()
        relpath = _relative_path(items[index].impath, dataset_dir)
        out.append({
            "index": index,
            "impath": items[index].impath,
            "image": relpath,
            "class": classnames[label],
            "selected": reason,
            "zeroshot_prediction": classnames[int(zs_pred[index])],
            "learned_prediction": classnames[int(learned_pred[index])],
            "own_class": {"zeroshot": float(zs[label]), "learned": float(learned[label])},
            "top_base_classes": [{"class": classnames[b], "zeroshot": float(zs[b]), "learned": float(learned[b])}
                                 for b in top_base],
            "attributes": _attributes_of(relpath, attributes),
        })
    return out


# --------------------------------------------------------------------------- analyze
def _check_same_images(eval_set: EvalSet, labels: torch.Tensor, learned_labels: torch.Tensor) -> None:
    """Frozen and prompted features must describe the same images in the same order (their labels agree)."""
    if not torch.equal(labels.cpu(), learned_labels.cpu()):
        raise AnalysisError(f"{eval_set.name}: the prompted image features are not those of the frozen ones' images "
                            f"({learned_labels.numel()} against {labels.numel()} labels, or another order); build "
                            "both from the same evaluation set.")


def _split_eval_sets(eval_sets: Sequence[EvalSet]) -> tuple[EvalSet, EvalSet] | None:
    base = [e for e in eval_sets if e.subset == "base"]
    novel = [e for e in eval_sets if e.subset == "novel"]
    if len(base) == 1 and len(novel) == 1 and base[0].dataset == novel[0].dataset:
        return base[0], novel[0]
    return None


def analyze(
    clip: FrozenCLIP,
    learner: PromptLearner,
    zeroshot_templates: Sequence[str],
    eval_sets: Sequence[EvalSet],
    features_fn: FeaturesFn,
    dataset_dir: Path | None = None,
    n_examples: int = 6,
    seed: int = 0,
    learned_features_fn: FeaturesFn | None = None,
) -> dict[str, Any]:
    """All diagnostics as a JSON-ready dict (no files).

    `features_fn` gives the frozen image features and labels of an evaluation set; `learned_features_fn`,
    required for a learner that encodes images itself (`encodes_images`), the features it scores with (same
    images, same order). A base/novel pair of evaluation sets (base2novel) gets drift per group, base capture
    and worked examples; any other protocol gets the drift of each evaluation on its own class list. The
    learner's class list is restored afterwards.
    """
    if learner.direct_logits:
        raise AnalysisError(f"{type(learner).__name__} scores images itself (direct_logits): it has no class-text "
                            "embeddings for the drift diagnostics to compare; analyse a prompt-learning run.")
    encodes_images = learner.encodes_images
    if encodes_images and learned_features_fn is None:
        raise AnalysisError(f"{type(learner).__name__} encodes images through its own image-tower tokens: pass "
                            "learned_features_fn (promptlab.analysis.runs.prompted_features_fn) so that the learned "
                            "scores use the image features the method scores with.")
    if not encodes_images:
        learned_features_fn = None  # frozen features score both sides
    templates = list(zeroshot_templates)
    previous_classnames, was_training = list(learner.classnames), learner.training
    learner.eval()
    try:
        pair = _split_eval_sets(eval_sets)
        if pair is not None:
            body = _analyze_base2novel(clip, learner, templates, *pair, features_fn, learned_features_fn,
                                       dataset_dir, n_examples, seed)
        else:
            body = _analyze_per_evaluation(clip, learner, templates, eval_sets, features_fn, learned_features_fn)
    finally:
        learner.train(was_training)
        if previous_classnames:
            learner.set_classnames(clip, previous_classnames)
    return {
        "schema": SCHEMA_VERSION,
        "learner": type(learner).__name__,
        "instance_conditional": bool(learner.instance_conditional),
        "encodes_images": encodes_images,
        "templates": templates,
    } | body


def _analyze_base2novel(
    clip: FrozenCLIP, learner: PromptLearner, templates: list[str], base: EvalSet, novel: EvalSet,
    features_fn: FeaturesFn, learned_features_fn: FeaturesFn | None, dataset_dir: Path | None, n_examples: int,
    seed: int,
) -> dict[str, Any]:
    n_base = len(base.classnames)
    classnames = list(base.classnames) + list(novel.classnames)
    # The base/novel rule relabels each half from 0 (promptlab.data.base_novel): novel label l is class
    # n_base + l of the full list.
    base_feats, base_labels = features_fn(base)
    novel_feats, novel_labels = features_fn(novel)
    learned_feats = None
    if learned_features_fn is not None:
        learned_base, learned_base_labels = learned_features_fn(base)
        learned_novel, learned_novel_labels = learned_features_fn(novel)
        _check_same_images(base, base_labels, learned_base_labels)
        _check_same_images(novel, novel_labels, learned_novel_labels)
        learned_feats = torch.cat([learned_base, learned_novel])
    base_items, novel_items = _kept_items(base, base_labels.numel()), _kept_items(novel, novel_labels.numel())
    novel_labels = novel_labels + n_base
    zeroshot = template_embeddings(clip, templates, classnames)
    learner.set_classnames(clip, classnames)
    scores = score_images(clip, learner, zeroshot, torch.cat([base_feats, novel_feats]), learned_feats)
    n_base_images = base_labels.numel()
    groups = {"base": range(n_base), "novel": range(n_base, len(classnames))}
    drift = drift_report(scores.sums, classnames, groups, "base", per_sample=learner.instance_conditional)

    base_scores, novel_scores = scores.rows(slice(0, n_base_images)), scores.rows(slice(n_base_images, None))
    accuracy = {
        name: {"base": _accuracy(getattr(base_scores, name), base_labels, slice(0, n_base)),
               "novel": _accuracy(getattr(novel_scores, name), novel_labels, slice(n_base, len(classnames)))}
        for name in ("zeroshot", "learned")
    }
    capture = {
        "n_novel_images": int(novel_labels.numel()),
        "n_base_classes": n_base,
        "n_novel_classes": len(novel.classnames),
        "zeroshot": _capture_of(novel_scores.zeroshot, novel_labels, n_base, classnames),
        "learned": _capture_of(novel_scores.learned, novel_labels, n_base, classnames),
    }
    attributes = load_attributes(dataset_dir)
    if attributes is not None:
        novel_attrs = [_attributes_of(_relative_path(i.impath, dataset_dir), attributes) for i in novel_items]
        base_attrs = [_attributes_of(_relative_path(i.impath, dataset_dir), attributes) for i in base_items]
        predictions = {"zeroshot": novel_scores.zeroshot.argmax(1), "learned": novel_scores.learned.argmax(1)}
        capture["by_attribute"] = _attribute_breakdown(novel_attrs, base_attrs, base_labels, predictions, n_base)
    else:
        capture["by_attribute"] = None
    examples = _examples(novel_scores, novel_labels, novel_items, classnames, n_base, dataset_dir, attributes,
                         n_examples, seed)
    return {
        "mode": "base2novel",
        "dataset": base.dataset,
        "drift": drift,
        "image_drift": (None if scores.image_cosine is None else
                        {"base": image_drift(base_scores.image_cosine),
                         "novel": image_drift(novel_scores.image_cosine)}),
        "accuracy": accuracy,
        "capture": capture,
        "examples": examples,
    }


def _analyze_per_evaluation(
    clip: FrozenCLIP, learner: PromptLearner, templates: list[str], eval_sets: Sequence[EvalSet],
    features_fn: FeaturesFn, learned_features_fn: FeaturesFn | None,
) -> dict[str, Any]:
    evaluations = []
    for eval_set in eval_sets:
        feats, labels = features_fn(eval_set)
        learned_feats = None
        if learned_features_fn is not None:
            learned_feats, learned_labels = learned_features_fn(eval_set)
            _check_same_images(eval_set, labels, learned_labels)
        zeroshot = template_embeddings(clip, templates, eval_set.classnames)
        learner.set_classnames(clip, eval_set.classnames)
        scores = score_images(clip, learner, zeroshot, feats, learned_feats)
        every = slice(0, len(eval_set.classnames))
        evaluations.append({
            "name": eval_set.name,
            "dataset": eval_set.dataset,
            "n_images": int(labels.numel()),
            "drift": drift_report(scores.sums, eval_set.classnames, {eval_set.name: range(len(eval_set.classnames))},
                                  eval_set.name, per_sample=learner.instance_conditional),
            "image_drift": image_drift(scores.image_cosine),
            "accuracy": {"zeroshot": _accuracy(scores.zeroshot, labels, every),
                         "learned": _accuracy(scores.learned, labels, every)},
        })
    return {"mode": "per_evaluation", "evaluations": evaluations}
