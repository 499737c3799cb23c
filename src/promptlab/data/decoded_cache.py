"""Training images decoded once per dataset: uint8 tensors in memory (optionally on disk), not JPEGs per epoch.

The reference pipeline (Dassl) opens and decodes every training JPEG again in every epoch; with 200 epochs of
16-shot CoOp that is 200 decodes of each image for one random crop each. Here each image is decoded once,
with the same decoder as the PIL path (`PIL.Image.open(...).convert("RGB")`), and kept as a uint8 tensor
[3, H, W]; the random crops are then taken from the tensors (data/tensor_augment.py).

Stored resolution (the decode rule). A random-resized crop covers at least `scale_min` of the image's area
with an aspect ratio in [ratio_min, ratio_max], so its shorter side is at least
    m = sqrt(scale_min * H * W * min(ratio_min, 1 / ratio_max))     (RandomResizedCrop defaults: sqrt(0.06 HW))
pixels. Every crop is resized to `out_size` x `out_size`. An image is stored downscaled (PIL bicubic, with
its antialiasing) by f = out_size / m when f < 1, i.e. so that even the smallest crop keeps at least
`out_size` pixels per side: every crop is still a downscale (or identity) to the output, never an upscale
of a thinned-out image. Otherwise (f >= 1, e.g. 500x375 photos for a 224-px ViT: m = 106 px) the image is
stored at its full decoded resolution, and crops are taken from exactly the pixels the PIL path crops.
`keep_original=True` always stores the full resolution. For `augment="flip"` (test transform + flip) the
stored image is the deterministic part of that transform itself (resize + centre crop, through PIL), so
the tensor path only flips it.

The on-disk copy is keyed like the feature cache (engine/features.py): image list fingerprint (paths and
labels), the preparation (rule, output size, interpolation) and a format version; written atomically.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import pickle
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.v2 import functional as TF

from promptlab.data.image_dataset import ImageDataset
from promptlab.data.transforms import RRC_RATIO, RRC_SCALE
from promptlab.data.types import Datum
from promptlab.errors import ConfigError
from promptlab.io import atomic_torch_save

log = logging.getLogger(__name__)

#: Bumped when the stored tensors would change for the same inputs (keys the on-disk copy).
FORMAT_VERSION = 1
PIL_INTERPOLATION = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
                     "nearest": Image.Resampling.NEAREST}


def min_crop_side(width: int, height: int, scale: Sequence[float] = RRC_SCALE,
                  ratio: Sequence[float] = RRC_RATIO) -> float:
    """Shortest side (pixels) a RandomResizedCrop(scale, ratio) box of a width x height image can have.

    w = sqrt(A r) and h = sqrt(A / r) with A >= scale_min * W * H and r in ratio: the least side is
    sqrt(scale_min * W * H * min(r_min, 1 / r_max)). (The centre-crop fallback is never smaller.)"""
    return math.sqrt(float(scale[0]) * width * height * min(float(ratio[0]), 1.0 / float(ratio[1])))


def decode_size(width: int, height: int, out_size: int, scale: Sequence[float] = RRC_SCALE,
                ratio: Sequence[float] = RRC_RATIO) -> tuple[int, int]:
    """(width, height) at which to store an image: downscaled only as far as keeps the smallest crop at
    `out_size` pixels per side (ceil, so rounding never drops below), never upscaled."""
    factor = out_size / min_crop_side(width, height, scale, ratio)
    if factor >= 1.0:
        return width, height
    return max(1, math.ceil(width * factor)), max(1, math.ceil(height * factor))


class _Prepare:
    """PIL RGB image -> uint8 tensor [3, h, w], for one of the stored forms (picklable for loader workers)."""

    def __init__(self, mode: str, out_size: int, interpolation: str, keep_original: bool,
                 test_transform: Callable[[Image.Image], Any] | None) -> None:
        self.mode, self.out_size, self.keep_original = mode, out_size, keep_original
        self.resample = PIL_INTERPOLATION[interpolation]
        self.test_transform = test_transform

    def __call__(self, image: Image.Image) -> torch.Tensor:
        if self.mode == "test_crop":
            # The PIL transform's deterministic part (resize + centre crop), run as it is: exact by construction.
            image = self.test_transform(image)
        elif not self.keep_original:
            size = decode_size(image.width, image.height, self.out_size)
            if size != image.size:
                image = image.resize(size, self.resample)
        return TF.pil_to_tensor(image).contiguous()

    def describe(self) -> dict[str, Any]:
        return {"mode": self.mode, "out_size": self.out_size, "keep_original": self.keep_original,
                "resample": int(self.resample), "test_transform": repr(self.test_transform),
                "scale": list(RRC_SCALE), "ratio": list(RRC_RATIO), "version": FORMAT_VERSION}


class DecodedImages(Dataset):
    """The few-shot training images, decoded once: items -> dict(image_u8=[3, h, w] uint8, label, index).

    Sizes differ between images, so batches are lists (`collate_decoded`); the random crop and resize that
    bring them to one size run per batch on the device (data/tensor_augment.py)."""

    def __init__(self, images: list[torch.Tensor], items: Sequence[Datum]) -> None:
        if len(images) != len(items):
            raise ValueError(f"{len(images)} decoded images for {len(items)} items")
        self.images, self.items = images, list(items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"image_u8": self.images[index], "label": self.items[index].label, "index": index}


def collate_decoded(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """A batch of differently sized uint8 images: a list of tensors, labels and indices stacked."""
    return {"image_u8": [s["image_u8"] for s in samples],
            "label": torch.tensor([s["label"] for s in samples]),
            "index": torch.tensor([s["index"] for s in samples])}


def decoded_key(items: Sequence[Datum], prepare: _Prepare) -> str:
    """Everything a stored decoded image depends on: the files (paths + labels) and how they were prepared."""
    digest = hashlib.sha256()
    for item in items:
        digest.update(f"{item.impath}\t{item.label}\n".encode())
    payload = json.dumps({"items": digest.hexdigest(), "prepare": prepare.describe()}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def _image_of(sample: dict[str, Any]) -> torch.Tensor:
    return sample["image"]


def decode_all(dataset: ImageDataset, num_workers: int = 0, multiprocessing_context: Any = None) -> list[torch.Tensor]:
    """Decode (and prepare) every image of `dataset` once, in `num_workers` loader processes (started with
    `multiprocessing_context`, the engine's choice; None: torch's default)."""
    loader = DataLoader(dataset, batch_size=None, shuffle=False, num_workers=num_workers, collate_fn=_image_of,
                        multiprocessing_context=multiprocessing_context)
    return list(loader)


def build_decoded_images(
    items: Sequence[Datum],
    out_size: int,
    augment: str = "coop",
    interpolation: str = "bicubic",
    on_error: str = "raise",
    cache_dir: Path | None = None,
    keep_original: bool = False,
    test_transform: Callable[[Image.Image], Any] | None = None,
    num_workers: int = 0,
    multiprocessing_context: Any = None,
) -> tuple[DecodedImages, list[dict[str, Any]]]:
    """The decoded training set and the images left out (on_error=skip), decoding each image at most once.

    augment="coop": stored by the decode rule (module docstring) for random-resized crops;
    augment="flip": stored as `test_transform` (PIL resize + centre crop, to uint8) leaves them.
    With `cache_dir`, the tensors are also kept on disk under <cache_dir>/decoded/<key>.pt and reused."""
    if augment not in ("coop", "flip"):
        raise ConfigError(f"the decoded-image cache serves augment=coop or flip, got {augment!r} (augment=none "
                          "caches frozen features instead).")
    if interpolation not in PIL_INTERPOLATION:
        raise ConfigError(f"interpolation={interpolation!r}: the decoded-image cache supports "
                          f"{sorted(PIL_INTERPOLATION)}.")
    if augment == "flip":
        if test_transform is None:
            raise ValueError("augment=flip needs the PIL test transform's resize and centre crop")
        # Resize + CenterCrop only: the stored image is uint8, ToTensor/Normalize run on the batch.
        deterministic = _pil_part(test_transform)
        prepare = _Prepare("test_crop", out_size, interpolation, keep_original, deterministic)
    else:
        prepare = _Prepare("rrc_source", out_size, interpolation, keep_original, None)
    dataset = ImageDataset(items, prepare, on_error=on_error)
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / "decoded" / f"{decoded_key(dataset.items, prepare)}.pt"
        if path.is_file():
            try:
                stored = torch.load(path, map_location="cpu", weights_only=True)
                log.info("decoded training images loaded from cache %s", path)
                return DecodedImages(stored["images"], dataset.items), dataset.skipped
            except (RuntimeError, KeyError, EOFError, ValueError, pickle.UnpicklingError) as err:
                log.warning("ignoring unreadable decoded-image cache %s (%s)", path, err)
    images = decode_all(dataset, num_workers=num_workers, multiprocessing_context=multiprocessing_context)
    if path is not None:
        atomic_torch_save({"images": images}, path)
    return DecodedImages(images, dataset.items), dataset.skipped


def _pil_part(transform: Any) -> Callable[[Image.Image], Any]:
    """The PIL-to-PIL steps of a torchvision Compose (everything before ToTensor)."""
    from torchvision import transforms as T

    steps = []
    for step in getattr(transform, "transforms", [transform]):
        if isinstance(step, (T.ToTensor, T.PILToTensor, T.Normalize)):
            break
        steps.append(step)
    return T.Compose(steps)
