"""Frozen image features, computed once: per run for training images, on disk across a sweep for test sets.

The image encoder is frozen, so its output for an image depends only on (weights, image, transform,
numeric precision). Test features do not depend on the method or the seed: the jobs of a sweep share
them through an on-disk cache keyed by exactly those inputs, written atomically so parallel jobs never
read a half-written file. Training features are exact stand-ins for the images when the training
transform is deterministic (augment=none); with random augmentation they are exact only as K fixed
augmented views per image (a different, documented, training distribution): method.loader.train_cache and
train_views, docs/tensor_augment.md.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from promptlab.data.types import Datum
from promptlab.engine.workers import worker_context
from promptlab.io import atomic_torch_save
from promptlab.models.frozen import FrozenCLIP

log = logging.getLogger(__name__)

AUTOCAST = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def autocast_context(precision: str, device: torch.device):
    """The autocast Lightning applies for `precision`, usable outside the training loop."""
    dtype = AUTOCAST.get(str(precision))
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def encode_images(
    clip: FrozenCLIP,
    dataset: Dataset,
    batch_size: int = 100,
    num_workers: int = 0,
    device: torch.device | str = "cpu",
    precision: str = "32",
    desc: str = "encode images",
    normalize: bool = True,
) -> torch.Tensor:
    """Image embeddings [N, D] (float32, CPU) of a dataset yielding dict(image=...), normalised unless told."""
    device = torch.device(device)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=device.type == "cuda", persistent_workers=False,
                        multiprocessing_context=worker_context(num_workers))
    out = []
    with autocast_context(precision, device):
        for batch in tqdm(loader, desc=desc, leave=False, disable=None):
            images = batch["image"].to(device, non_blocking=True)
            out.append(clip.encode_image(images, normalize=normalize).float().cpu())
    return torch.cat(out) if out else torch.empty(0, clip.embed_dim)


def items_fingerprint(items: Sequence[Datum]) -> str:
    digest = hashlib.sha256()
    for item in items:
        digest.update(f"{item.impath}\t{item.label}\n".encode())
    return digest.hexdigest()


def cache_key(clip: FrozenCLIP, items: Sequence[Datum], transform: object, precision: str, extra: str = "") -> str:
    """Everything an image feature depends on: weights, images (paths+labels), transform, precision."""
    payload = json.dumps(
        {
            "weights": clip.weights_id,
            "preprocess": clip.preprocess_cfg,  # the model's mean/std/size/interpolation/resize mode
            "weights_dtype": str(clip.dtype),
            "items": items_fingerprint(items),
            "transform": repr(transform),
            "autocast": str(AUTOCAST.get(str(precision), "none")),
            "extra": extra,
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def save_atomic(obj: object, path: Path) -> None:
    """`torch.save` for files other jobs may read at the same time (the shared feature cache).

    Kept as a thin alias of `promptlab.io.atomic_torch_save` for existing importers (engine/build.py).
    """
    atomic_torch_save(obj, path)


def cached_features(
    cache_dir: Path | None, key: str, compute: Callable[[], torch.Tensor], label: str, rows: int | None = None
) -> torch.Tensor:
    """Load features stored under `key`, or compute and store them (atomically).

    A stored file is used only if it loads and holds what was stored: a float tensor of `rows` rows
    (when given), finite. Anything else (a file truncated by a full disk or a killed copy, another
    format) is named in a warning and recomputed, and the new features replace it. The cache is
    optional: a failed write (full disk, read-only folder) is a warning, the run goes on.
    """
    if cache_dir is None:
        return compute()
    path = Path(cache_dir) / "features" / f"{key}.pt"
    if path.is_file():
        stored, problem = _load_features(path, rows)
        if stored is not None:
            log.info("image features of %s loaded from cache %s", label, path)
            return stored
        log.warning("feature cache file %s is unusable (%s): recomputing the features of %s and replacing it",
                    path, problem, label)
    features = compute()
    try:
        save_atomic({"features": features, "label": label}, path)
    except OSError as err:  # e.g. ENOSPC: the features are in memory, only later jobs lose the shortcut
        log.warning("could not write the feature cache %s (%s); the run goes on, later runs recompute these "
                    "features", path, err)
    return features


def _load_features(path: Path, rows: int | None) -> tuple[torch.Tensor | None, str]:
    """(the stored features, "") or (None, what is wrong with the file)."""
    try:
        stored = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - truncated files raise OSError, RuntimeError, EOFError, ...
        return None, f"cannot be loaded: {type(err).__name__}: {err}".split("\n")[0][:300]
    features = stored.get("features") if isinstance(stored, dict) else None
    if not isinstance(features, torch.Tensor) or not features.is_floating_point() or features.dim() not in (2, 3):
        return None, "it does not hold a float feature tensor"
    if rows is not None and features.shape[-2] != rows:
        return None, f"it holds {features.shape[-2]} rows for {rows} images"
    if not bool(torch.isfinite(features).all()):
        return None, "it holds non-finite values"
    return features, ""
