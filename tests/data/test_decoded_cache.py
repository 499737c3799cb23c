"""The decoded-image cache: each training image decoded once, stored by the decode rule, equal to a fresh decode."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

import promptlab.data.decoded_cache as decoded_cache
from promptlab.data.decoded_cache import build_decoded_images, decode_size, min_crop_side
from promptlab.data.tensor_augment import TensorAugment, sample_boxes
from promptlab.data.transforms import build_transform
from promptlab.data.types import Datum
from promptlab.errors import ConfigError


def textured_image(width: int, height: int, seed: int = 0) -> Image.Image:
    """Smooth colour waves plus noise: fine detail and edges, so resampling errors show."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    waves = np.stack([128 + 100 * np.sin(xx / (5.0 + c) + c) * np.cos(yy / (9.0 + c)) for c in range(3)], -1)
    return Image.fromarray(np.clip(waves + rng.normal(0, 20, waves.shape), 0, 255).astype(np.uint8))


def write_items(tmp_path, sizes, suffix=".jpg") -> list[Datum]:
    items = []
    tmp_path.mkdir(parents=True, exist_ok=True)
    for i, (w, h) in enumerate(sizes):
        path = tmp_path / f"img_{i}{suffix}"
        textured_image(w, h, seed=i).save(path, **({"quality": 90} if suffix == ".jpg" else {}))
        items.append(Datum(str(path), i % 3, f"class {i % 3}"))
    return items


def fresh_decode(path: str, out_size: int) -> torch.Tensor:
    image = Image.open(path).convert("RGB")
    size = decode_size(image.width, image.height, out_size)
    if size != image.size:
        image = image.resize(size, Image.Resampling.BICUBIC)
    return TF.pil_to_tensor(image)


def test_decode_rule_keeps_every_crop_at_least_the_output_size():
    # 500x375 for a 224-px model: the smallest crop (sqrt(0.06 * 500 * 375) = 106 px) is below 224: keep all.
    assert decode_size(500, 375, 224) == (500, 375)
    assert math.isclose(min_crop_side(500, 375), math.sqrt(0.06 * 500 * 375))
    # For a 32-px model the image is stored smaller, but no crop the sampler can take drops below 32 px.
    w, h = decode_size(500, 375, 32)
    assert w < 500 and h < 375 and abs(w / h - 500 / 375) < 0.02
    boxes = sample_boxes(torch.tensor([[h, w]]).expand(20000, 2), generator=torch.Generator().manual_seed(0))
    assert int(boxes[:, 2:].min()) >= 32 - 1  # rounding of w, h to whole pixels costs at most one
    assert int(boxes[:, 2:].min()) <= 40  # and the rule is tight: small crops do come close to the bound
    # Extreme shapes too: the bound holds for the smallest crop of any shape.
    w, h = decode_size(2000, 150, 32)
    assert min_crop_side(w, h) >= 32 - 1e-9 and (w, h) != (2000, 150)


def test_cached_decode_equals_fresh_decode_and_is_decoded_once(tmp_path, monkeypatch):
    items = write_items(tmp_path / "img", [(500, 375), (375, 500), (60, 40), (640, 480)])
    calls = []
    real_decode_all = decoded_cache.decode_all
    monkeypatch.setattr(decoded_cache, "decode_all", lambda *a, **k: calls.append(1) or real_decode_all(*a, **k))
    first, skipped = build_decoded_images(items, 32, cache_dir=tmp_path / "cache")
    assert skipped == [] and len(first) == len(items) and calls == [1]
    for i, item in enumerate(items):
        sample = first[i]
        expected = fresh_decode(item.impath, 32)
        assert sample["image_u8"].dtype == torch.uint8 and sample["label"] == item.label and sample["index"] == i
        assert torch.equal(sample["image_u8"], expected)  # exactly, at the stored resolution
    assert tuple(first[2]["image_u8"].shape) == (3, 40, 60)  # small images are never upscaled
    # A second build (another run on the same images) reads the disk copy: no decode, the same tensors.
    second, _ = build_decoded_images(items, 32, cache_dir=tmp_path / "cache")
    assert calls == [1] and all(torch.equal(a, b) for a, b in zip(first.images, second.images, strict=True))
    assert not list((tmp_path / "cache").rglob("*.tmp"))
    # Another output size is another preparation: another entry, decoded again.
    build_decoded_images(items, 64, cache_dir=tmp_path / "cache")
    assert calls == [1, 1] and len(list((tmp_path / "cache" / "decoded").glob("*.pt"))) == 2
    # A corrupt entry is decoded again, not fatal.
    for path in (tmp_path / "cache" / "decoded").glob("*.pt"):
        path.write_bytes(b"garbage")
    again, _ = build_decoded_images(items, 32, cache_dir=tmp_path / "cache")
    assert len(calls) == 3 and all(torch.equal(a, b) for a, b in zip(first.images, again.images, strict=True))


def test_keep_original_stores_the_decoded_pixels(tmp_path):
    items = write_items(tmp_path, [(320, 240)], suffix=".png")
    decoded, _ = build_decoded_images(items, 32, keep_original=True)
    assert torch.equal(decoded[0]["image_u8"], TF.pil_to_tensor(Image.open(items[0].impath).convert("RGB")))


def test_flip_mode_equals_the_pil_pipeline_exactly(tmp_path):
    items = write_items(tmp_path, [(120, 90), (90, 120)], suffix=".png")
    test = build_transform(32, train=False)
    decoded, _ = build_decoded_images(items, 32, augment="flip", test_transform=test)
    augment = TensorAugment(32, mode="flip", generator=torch.Generator().manual_seed(0))
    seen = set()
    for _ in range(8):
        batch = augment([decoded[i]["image_u8"] for i in range(len(items))])
        for i, item in enumerate(items):
            # The PIL path: Resize -> CenterCrop -> (flip) -> ToTensor -> Normalize.
            crop = test.transforms[1](test.transforms[0](Image.open(item.impath).convert("RGB")))
            to_tensor, normalize = test.transforms[-2:]
            plain = normalize(to_tensor(crop))
            mirrored = normalize(to_tensor(crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)))
            is_plain, is_mirror = torch.equal(batch[i], plain), torch.equal(batch[i], mirrored)
            assert is_plain or is_mirror  # bit-identical to ToTensor + Normalize of the PIL result
            seen.add(is_plain)
    assert seen == {True, False}  # both outcomes of the flip occur


def test_decoded_cache_refuses_what_it_does_not_serve(tmp_path):
    items = write_items(tmp_path, [(40, 40)], suffix=".png")
    with pytest.raises(ConfigError, match="augment=none"):
        build_decoded_images(items, 32, augment="none")
    with pytest.raises(ConfigError, match="interpolation"):
        build_decoded_images(items, 32, interpolation="lanczos")
