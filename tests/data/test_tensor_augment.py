"""Tensor augmentation: the reference sampler's box distribution, PIL-equal crops, and the PIL switch unchanged."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats
from torch.utils.data import DataLoader
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from promptlab.config.method import Augment, AugmentBackend, MethodLoaderConf
from promptlab.data.decoded_cache import DecodedImages
from promptlab.data.image_dataset import ImageDataset
from promptlab.data.tensor_augment import TensorAugment, sample_boxes
from promptlab.data.transforms import RRC_RATIO, RRC_SCALE, build_transform
from promptlab.engine.datamodule import PromptDataModule
from tests.data.test_decoded_cache import textured_image, write_items

N = 8000


def reference_boxes(height: int, width: int, n: int, seed: int) -> np.ndarray:
    """Boxes (top, left, h, w) from torchvision's own sampler, as the PIL path draws them."""
    torch.manual_seed(seed)
    image = torch.empty(3, height, width)  # get_params reads the size only
    return np.array([T.RandomResizedCrop.get_params(image, list(RRC_SCALE), list(RRC_RATIO)) for _ in range(n)])


def our_boxes(height: int, width: int, n: int, seed: int, scale=RRC_SCALE) -> np.ndarray:
    sizes = torch.tensor([[height, width]]).expand(n, 2)
    return sample_boxes(sizes, scale=scale, generator=torch.Generator().manual_seed(seed)).numpy()


def box_statistics(boxes: np.ndarray, height: int, width: int) -> dict[str, np.ndarray]:
    top, left, h, w = boxes.T.astype(float)
    return {"area": h * w / (height * width), "log_ratio": np.log(w / h),
            "top": top / np.maximum(height - h, 1), "left": left / np.maximum(width - w, 1)}


@pytest.mark.parametrize("height,width", [(375, 500), (60, 40)])
def test_box_distribution_matches_torchvision_sampler(height, width):
    ours = box_statistics(our_boxes(height, width, N, seed=1), height, width)
    ref = box_statistics(reference_boxes(height, width, N, seed=2), height, width)
    for name in ("area", "log_ratio", "top", "left"):
        p = stats.ks_2samp(ours[name], ref[name]).pvalue
        assert p > 1e-3, f"{name}: KS p={p:.2g}"
    # The test can tell a different sampler apart: scale (0.2, 1) instead of (0.08, 1).
    other = box_statistics(our_boxes(height, width, N, seed=1, scale=(0.2, 1.0)), height, width)
    assert stats.ks_2samp(other["area"], ref["area"]).pvalue < 1e-6


@pytest.mark.parametrize("height,width,fallback", [
    (60, 300, (0, 110, 60, 80)),  # too wide: full height, width round(60 * 4/3) = 80, centred
    (300, 60, (110, 0, 80, 60)),  # too tall: full width, height round(60 / (3/4)) = 80, centred
])
def test_fallback_rate_on_an_extreme_shape(height, width, fallback):
    # 5:1 images: one try in about eight fits, so about a quarter of the images exhaust the 10 tries and get
    # the centre crop. The rate (and the box) must be the reference sampler's.
    n = 4000
    ours = our_boxes(height, width, n, seed=3)
    ref = reference_boxes(height, width, n, seed=4)
    rate_ours = np.mean(np.all(ours == fallback, axis=1))
    rate_ref = np.mean(np.all(ref == fallback, axis=1))
    sigma = math.sqrt(rate_ref * (1 - rate_ref) * 2 / n)
    assert 0.1 < rate_ref < 0.5 and abs(rate_ours - rate_ref) < 4 * sigma, (rate_ours, rate_ref)


@pytest.mark.parametrize("box,size", [((0, 0, 375, 500), 224), ((10, 20, 100, 150), 224), ((50, 60, 300, 280), 32),
                                      ((5, 5, 30, 40), 224), ((0, 100, 375, 280), 64)])
def test_tensor_crop_equals_pil_crop_and_resize(box, size):
    image = textured_image(500, 375, seed=7)
    pil = TF.pil_to_tensor(T.functional.resized_crop(image, *box, [size, size], InterpolationMode.BICUBIC)).int()
    augment = TensorAugment(size)
    ours = augment.crop_resize([TF.pil_to_tensor(image)], torch.tensor([box]))[0]
    assert ours.dtype == torch.uint8
    diff = (ours.int() - pil).abs()
    assert int(diff.max()) <= 2 and float(diff.float().mean()) < 0.05  # rounding, not a different filter


def test_augment_batch_shapes_flips_and_normalises():
    image = TF.pil_to_tensor(textured_image(90, 60, seed=1))
    augment = TensorAugment(32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
                            generator=torch.Generator().manual_seed(0))
    out = augment([image, image[:, :40, :50]] * 16)
    assert out.shape == (32, 3, 32, 32) and out.dtype == torch.float32
    assert -2.0 - 1e-6 <= float(out.min()) and float(out.max()) <= 2.0 + 1e-6  # (x/255 - 0.5) / 0.25
    # Flip: a box over the whole image, mirrored in about half the draws.
    whole = TensorAugment(32, mean=(0, 0, 0), std=(1, 1, 1), scale=(1.0, 1.0), ratio=(1.5, 1.5),
                          generator=torch.Generator().manual_seed(1))
    batch = whole([image] * 200)
    plain = whole.crop_resize([image], torch.tensor([[0, 0, 60, 90]]))[0].float() / 255
    flipped = torch.tensor([torch.equal(b, plain.flip(-1)) for b in batch])
    assert all(torch.equal(b, plain) or torch.equal(b, plain.flip(-1)) for b in batch)
    assert 70 < int(flipped.sum()) < 130


def test_pil_backend_is_todays_pipeline_batch_for_batch(random_clip, tmp_path):
    """augment_backend=pil: the same images, crops and flips as the per-image torchvision pipeline of before."""
    items = write_items(tmp_path, [(50 + 7 * i, 40 + 5 * i) for i in range(6)], suffix=".png")
    dm = PromptDataModule(random_clip, items, [], MethodLoaderConf(batch_size=4, augment=Augment.coop,
                                                                 augment_backend=AugmentBackend.pil), seed=3)
    dm.setup("fit")
    torch.manual_seed(11)
    ours = [b["image"] for b in dm.train_dataloader()]
    # Today's pipeline, built by hand: ImageDataset + the reference transform, shuffled by the run's seed.
    transform = build_transform(32, train=True, augment="coop")
    loader = DataLoader(ImageDataset(items, transform), batch_size=4, shuffle=True,
                        generator=torch.Generator().manual_seed(3))
    torch.manual_seed(11)
    expected = [b["image"] for b in loader]
    assert len(ours) == len(expected) == 2
    assert all(torch.equal(a, b) for a, b in zip(ours, expected, strict=True))


def test_tensor_backend_batches(random_clip, tmp_path):
    items = write_items(tmp_path, [(50 + 7 * i, 40 + 5 * i) for i in range(6)], suffix=".png")
    dm = PromptDataModule(random_clip, items, [], MethodLoaderConf(batch_size=4, augment=Augment.coop), seed=3)
    assert dm.augment_backend == "tensor"  # the default
    dm.setup("fit")
    assert isinstance(dm._train_dataset, DecodedImages)
    raw = list(dm.train_dataloader())
    assert [len(b["image_u8"]) for b in raw] == [4, 2] and sorted(torch.cat([b["index"] for b in raw]).tolist()) == \
        list(range(6))
    batch = dm.on_after_batch_transfer(raw[0], 0)
    assert "image_u8" not in batch and batch["image"].shape == (4, 3, 32, 32) and batch["label"].shape == (4,)
    # The same seed draws the same crops; another seed others.
    again = PromptDataModule(random_clip, items, [], MethodLoaderConf(batch_size=4, augment=Augment.coop), seed=3)
    again.setup("fit")
    assert torch.equal(again.on_after_batch_transfer(next(iter(again.train_dataloader())), 0)["image"],
                       batch["image"])
    # Images small for the model keep their pixels (never upscaled when decoded).
    assert tuple(dm._train_dataset[0]["image_u8"].shape) == (3, 40, 50)
    assert Image.open(items[0].impath).size == (50, 40)


@pytest.mark.slow  # importing torch._dynamo alone takes several seconds
def test_compiled_image_tower_gives_the_same_features():
    """model.compile_image: encode_image goes through torch.compile (the eager backend here: no C++ toolchain
    needed in the fast suite) and returns the uncompiled numbers."""
    from tests.conftest import make_random_clip

    clip = make_random_clip(seed=1)
    images = torch.randn(3, 3, 32, 32)
    plain = clip.encode_image(images)
    clip.compile_image_tower(backend="eager")
    assert clip._compiled_encode_image is not None
    torch.testing.assert_close(clip.encode_image(images), plain)
    assert not any("compiled" in key for key in clip.state_dict())  # no trace in the saved state


def test_lightning_applies_the_batch_augmentation_in_fit(random_clip, tmp_path):
    """Through Trainer.fit, the data module's on_after_batch_transfer turns the uint8 lists into the augmented
    image batches training_step encodes (a batch without "image" would fail there), and the context learns."""
    import lightning as L

    from promptlab.engine.module import PromptLearningModule
    from promptlab.methods import CoOpPrompts

    items = write_items(tmp_path, [(40 + 3 * i, 36 + 2 * i) for i in range(6)], suffix=".png")
    dm = PromptDataModule(random_clip, items, [], MethodLoaderConf(batch_size=3, augment=Augment.coop), seed=0)
    learner = CoOpPrompts(random_clip, n_ctx=2, init_seed=0)
    learner.set_classnames(random_clip, ["class 0", "class 1", "class 2"])
    before = learner.ctx.detach().clone()
    seen = []
    module = PromptLearningModule(random_clip, learner, lr=0.05, max_epochs=1, warmup_epochs=0)
    step = module.training_step

    def recording_step(batch, *args):
        seen.append(tuple(batch["image"].shape))
        return step(batch, *args)

    module.training_step = recording_step
    L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False, limit_val_batches=0,
              enable_progress_bar=False, enable_model_summary=False).fit(module, datamodule=dm)
    assert seen == [(3, 3, 32, 32), (3, 3, 32, 32)]
    assert not torch.equal(learner.ctx.detach(), before)


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_cpu_resize_equals_torchvisions_resized_crop(interpolation):
    """The CPU shortcut (torch's uint8 kernel called directly) gives torchvision's resized_crop pixels exactly."""
    image = TF.pil_to_tensor(textured_image(151, 114, seed=3))
    boxes = sample_boxes(torch.tensor([[114, 151]] * 16), generator=torch.Generator().manual_seed(5))
    ours = TensorAugment(32, interpolation=interpolation).crop_resize([image] * 16, boxes)
    mode = InterpolationMode(interpolation)
    expected = torch.stack([TF.resized_crop(image, t, l, h, w, [32, 32], interpolation=mode, antialias=True)
                            for t, l, h, w in boxes.tolist()])
    assert ours.dtype == torch.uint8 and torch.equal(ours, expected)
