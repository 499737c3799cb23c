"""The reference's training augmentation on batches of decoded uint8 tensors, on the batch's device.

What it reproduces (data/transforms.py, augment="coop"; Dassl's RandomResizedCrop(scale=(0.08, 1)) with
torchvision's ratio (3/4, 4/3), bicubic, then RandomHorizontalFlip(0.5), ToTensor, Normalize):

- Crop boxes: the sampler of torchvision's `RandomResizedCrop.get_params`, vectorised over the batch. Per
  image, up to 10 tries of (area fraction ~ U(scale), log aspect ratio ~ U(log ratio)), w = round(sqrt(A r)),
  h = round(sqrt(A / r)); the first try that fits (0 < w <= W, 0 < h <= H) is kept and its top-left corner
  drawn uniformly among the positions that fit; if none of the 10 fits, the centre crop of the whole image
  with its aspect ratio clamped into `ratio`. Here all 10 tries of all images are drawn at once and the
  first fitting one is picked: the same distribution of boxes (tests/data/test_tensor_augment.py compares it with
  torchvision's sampler), not the same random stream (the PIL path, `augment_backend=pil`, keeps that).
- Resize: torchvision's `resized_crop` on the uint8 tensor (bicubic with antialiasing, which follows PIL's
  resampling filter), rounded back to uint8 as PIL's output is; equal to PIL's crop + resize up to a few
  grey levels of rounding (tested). On CPU the crop goes straight to the uint8 kernel `resized_crop` itself
  calls there (`F.interpolate`, the same pixels: tested), without its per-call dispatch.
- Flip with probability 0.5, then the division by 255 and the normalisation, on the whole batch.

augment="flip" (test transform + flip) stores the PIL-resized, centre-cropped image (data/decoded_cache.py),
so only the flip and the normalisation run here, exactly as in the PIL path.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from promptlab.data.transforms import CLIP_MEAN, CLIP_STD, RRC_RATIO, RRC_SCALE
from promptlab.errors import ConfigError

#: Tries before the centre-crop fallback (torchvision's RandomResizedCrop.get_params).
TRIES = 10


def sample_boxes(
    sizes: torch.Tensor,
    scale: Sequence[float] = RRC_SCALE,
    ratio: Sequence[float] = RRC_RATIO,
    generator: torch.Generator | None = None,
    tries: int = TRIES,
) -> torch.Tensor:
    """Random-resized-crop boxes (top, left, height, width) [B, 4] int64 for images of `sizes` [B, 2] (H, W).

    The distribution of torchvision's RandomResizedCrop.get_params, drawn for the whole batch at once (CPU)."""
    sizes = torch.as_tensor(sizes, dtype=torch.float64).reshape(-1, 2)
    n = sizes.shape[0]
    height, width = sizes[:, 0:1], sizes[:, 1:2]
    area = height * width
    frac = torch.empty(n, tries, dtype=torch.float64).uniform_(float(scale[0]), float(scale[1]), generator=generator)
    log_r = torch.empty(n, tries, dtype=torch.float64).uniform_(math.log(ratio[0]), math.log(ratio[1]),
                                                                generator=generator)
    target, aspect = area * frac, torch.exp(log_r)
    # torch.round rounds half to even, as Python's round() in get_params.
    w = torch.round(torch.sqrt(target * aspect))
    h = torch.round(torch.sqrt(target / aspect))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.to(torch.int8).argmax(dim=1, keepdim=True)  # index of the first fitting try (0 if none)
    found = fits.any(dim=1)
    h_pick, w_pick = h.gather(1, first).squeeze(1), w.gather(1, first).squeeze(1)
    height, width = height.squeeze(1), width.squeeze(1)
    # Top-left corner uniform over the H - h + 1 (W - w + 1) positions, as torch.randint(0, H - h + 1).
    u = torch.rand(n, 2, dtype=torch.float64, generator=generator)
    top = torch.floor(u[:, 0] * (height - h_pick + 1)).clamp(max=height - h_pick)
    left = torch.floor(u[:, 1] * (width - w_pick + 1)).clamp(max=width - w_pick)
    # The fallback: the centre crop of the whole image, its aspect ratio clamped into `ratio`.
    in_ratio = width / height
    lo, hi = min(ratio), max(ratio)
    fb_w = torch.where(in_ratio > hi, torch.round(height * hi), width)
    fb_h = torch.where(in_ratio < lo, torch.round(width / lo), height)
    fb_top = torch.floor((height - fb_h) / 2)
    fb_left = torch.floor((width - fb_w) / 2)
    boxes = torch.stack([
        torch.where(found, top, fb_top), torch.where(found, left, fb_left),
        torch.where(found, h_pick, fb_h), torch.where(found, w_pick, fb_w),
    ], dim=1)
    return boxes.to(torch.int64)


class TensorAugment:
    """Batched training augmentation of decoded uint8 images: list of [3, H_i, W_i] -> float [B, 3, S, S].

    mode "coop": random-resized crop (per-image box, `sample_boxes`) + flip + normalise;
    mode "flip": the images are already S x S (resize + centre crop done when decoding): flip + normalise.
    Random draws come from `generator` (CPU; seeded by the run), the pixels stay on the images' device."""

    def __init__(
        self,
        image_size: int,
        mode: str = "coop",
        mean: Sequence[float] = CLIP_MEAN,
        std: Sequence[float] = CLIP_STD,
        interpolation: str = "bicubic",
        scale: Sequence[float] = RRC_SCALE,
        ratio: Sequence[float] = RRC_RATIO,
        generator: torch.Generator | None = None,
    ) -> None:
        if mode not in ("coop", "flip"):
            raise ConfigError(f"tensor augmentation mode must be coop or flip, got {mode!r}.")
        try:
            self.interpolation = InterpolationMode(interpolation)
        except ValueError as err:
            raise ConfigError(f"interpolation={interpolation!r} is not a torchvision interpolation "
                              "(bicubic, bilinear, nearest).") from err
        self.image_size, self.mode = int(image_size), mode
        self.mean, self.std = [float(m) for m in mean], [float(s) for s in std]
        self.scale, self.ratio = tuple(scale), tuple(ratio)
        self.generator = generator

    def __repr__(self) -> str:
        return (f"TensorAugment(size={self.image_size}, mode={self.mode}, scale={self.scale}, ratio={self.ratio}, "
                f"interpolation={self.interpolation.value}, mean={self.mean}, std={self.std})")

    def crop_resize(self, images: Sequence[torch.Tensor], boxes: torch.Tensor) -> torch.Tensor:
        """Each image's box (top, left, height, width) resized to S x S: uint8 [B, 3, S, S]."""
        size = [self.image_size, self.image_size]
        rows = boxes.tolist()
        if images[0].device.type == "cpu" and self.interpolation.value in ("bicubic", "bilinear"):
            # torch's own uint8 antialiased kernel, which torchvision's resized_crop calls on CPU: the same pixels
            # (tested) without its per-call dispatch, which costs more than the resize of a small crop.
            return torch.cat([F.interpolate(image[None, :, t : t + h, l : l + w], size=size,
                                            mode=self.interpolation.value, antialias=True)
                              for image, (t, l, h, w) in zip(images, rows, strict=True)])
        out = [TF.resized_crop(image, t, l, h, w, size, interpolation=self.interpolation, antialias=True)
               for image, (t, l, h, w) in zip(images, rows, strict=True)]
        return torch.stack(out)

    def __call__(self, images: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(images) == 0:
            raise ValueError("empty batch")
        if self.mode == "coop":
            sizes = torch.tensor([tuple(image.shape[-2:]) for image in images])
            boxes = sample_boxes(sizes, self.scale, self.ratio, generator=self.generator)
            batch = self.crop_resize(images, boxes)
        else:
            batch = torch.stack(list(images))
        flip = torch.rand(batch.shape[0], generator=self.generator) < 0.5
        flip = flip.to(batch.device).view(-1, 1, 1, 1)
        batch = torch.where(flip, batch.flip(-1), batch)
        # As ToTensor (a division by 255, not a multiplication by its inverse: bit-identical) and Normalize.
        batch = batch.to(torch.float32).div(255)
        return TF.normalize(batch, mean=self.mean, std=self.std)
