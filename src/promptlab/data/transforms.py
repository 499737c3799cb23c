"""Image transforms of the reference: CLIP preprocessing for test, CoOp augmentation for training.

Facts (CoOp configs/trainers/CoOp/*.yaml: INPUT.INTERPOLATION "bicubic", TRANSFORMS
["random_resized_crop", "random_flip", "normalize"], PIXEL_MEAN/STD = CLIP's; Dassl
dassl/data/transforms/transforms.py: RandomResizedCrop scale (0.08, 1.0); test = Resize of the short
side + CenterCrop):
- test:  Resize(size, bicubic, short side) -> CenterCrop(size) -> ToTensor -> Normalize(CLIP)
- train "coop": RandomResizedCrop(size, scale=(0.08, 1), bicubic) -> RandomHorizontalFlip -> ToTensor
  -> Normalize(CLIP)
- train "flip": the test transform plus a horizontal flip (light augmentation)
- train "none": the test transform (deterministic; lets cached image features stand in for images)
"""

from __future__ import annotations

from collections.abc import Sequence

from torchvision import transforms as T

from promptlab.errors import ConfigError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
AUGMENTS = ("none", "flip", "coop")
RRC_SCALE = (0.08, 1.0)
RRC_RATIO = (3.0 / 4.0, 4.0 / 3.0)  # torchvision's default, which Dassl does not change


def build_transform(
    image_size: int,
    train: bool,
    augment: str = "none",
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
    interpolation: str = "bicubic",
    resize_mode: str = "shortest",
) -> T.Compose:
    """PIL image -> normalised float tensor (3, image_size, image_size). `augment` applies to train only.

    mean, std, interpolation and resize_mode come from the loaded model's open_clip preprocess config
    (OpenAI's values for OpenAI CLIP; SigLIP squashes to the square and normalises with 0.5/0.5)."""
    if augment not in AUGMENTS:
        raise ConfigError(f"augment must be one of {AUGMENTS}, got {augment!r}.")
    if not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < 1:
        raise ConfigError(f"image_size must be a positive integer, got {image_size!r}.")
    if resize_mode not in ("shortest", "squash"):
        raise ConfigError(f"resize_mode={resize_mode!r} (from the model's open_clip preprocess config): promptlab's "
                          "transforms implement 'shortest' (resize the short side, centre crop) and 'squash'.")
    try:
        mode = T.InterpolationMode(interpolation)  # open_clip's names ("bicubic", "bilinear") are torchvision's
    except ValueError as err:
        raise ConfigError(f"interpolation={interpolation!r} from the model's preprocess config is not a "
                          "torchvision interpolation (bicubic, bilinear, nearest).") from err
    to_tensor = [T.ToTensor(), T.Normalize(mean=tuple(mean), std=tuple(std))]
    if train and augment == "coop":
        return T.Compose([
            T.RandomResizedCrop(image_size, scale=RRC_SCALE, ratio=RRC_RATIO, interpolation=mode),
            T.RandomHorizontalFlip(),
            *to_tensor,
        ])
    if resize_mode == "squash":
        resize_crop = [T.Resize((image_size, image_size), interpolation=mode)]
    else:
        resize_crop = [T.Resize(image_size, interpolation=mode), T.CenterCrop(image_size)]
    if train and augment == "flip":
        return T.Compose([*resize_crop, T.RandomHorizontalFlip(), *to_tensor])
    return T.Compose([*resize_crop, *to_tensor])
