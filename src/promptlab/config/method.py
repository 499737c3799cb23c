"""The parts every method's config shares: optimiser, schedule and loader nodes, the base `MethodConf`, and the
closed choices they use. A method's own learner and method dataclasses live beside its learner, in its module
under promptlab/methods/ (registered with `promptlab.methods.registry.register_method`).

Defaults are the reference's (CoOp/CoCoOp repository configs, Dassl's schedule); docs/reference.md lists them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from omegaconf import II, MISSING


class Augment(str, Enum):
    """Training-image augmentation: none, horizontal flip, or the reference's RandomResizedCrop + flip."""

    none = "none"
    flip = "flip"
    coop = "coop"


class AugmentBackend(str, Enum):
    """Where training augmentation runs: tensor (decode once, batched on the device) or pil (the reference's)."""

    tensor = "tensor"
    pil = "pil"


class TrainCache(str, Enum):
    """Frozen training features: auto (on exactly when exact), on, off."""

    auto = "auto"
    on = "on"
    off = "off"


class ClassTokenPosition(str, Enum):
    end = "end"
    middle = "middle"
    front = "front"


class LrScaling(str, Enum):
    """lr *= f(batch_size / reference_batch_size): none, linear (x) or sqrt."""

    none = "none"
    linear = "linear"
    sqrt = "sqrt"


class ScheduleUnit(str, Enum):
    """What the cosine schedule counts: epochs (Dassl, CoOp) or iterations (Tip-Adapter-F)."""

    epoch = "epoch"
    step = "step"



# The learners that read hand-written prompts get them resolved from `prompts` (config/registry.py resolvers),
# so a run's saved config holds the exact template list and the description file's content hash.
PROMPT_TEMPLATES = "prompt_templates:${prompts.templates},${dataset.templates},${dataset.ensemble_templates}," \
    "${dataset.name}"
PROMPT_DESCRIPTIONS_SHA256 = "file_sha256:${prompts.descriptions}"



@dataclass
class SGDConf:
    _target_: str = "torch.optim.SGD"
    _partial_: bool = True
    momentum: float = 0.9
    weight_decay: float = 5e-4
    dampening: float = 0.0
    nesterov: bool = False


@dataclass
class AdamWConf:
    _target_: str = "torch.optim.AdamW"
    _partial_: bool = True
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 0.01


@dataclass
class AdamConf:
    """Dassl's `adam` (torch.optim.Adam): L2 weight decay added to the gradient, not decoupled as AdamW's;
    Dassl's default weight decay 5e-4 (TCP's reference also sets eps 1e-3, conf/method/tcp.yaml)."""

    _target_: str = "torch.optim.Adam"
    _partial_: bool = True
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 5e-4


@dataclass
class OptimConf:
    """Optimiser and schedule: Dassl's constant warm-up then cosine over `epochs`, stepped per epoch."""

    # A _partial_ optimiser node from the optimizer group (sgd: the reference), placed here; lr is passed
    # when it is built. MISSING in the schema: the optimizer group is composed before the method (train.yaml)
    # so that a method file can override its choice (tip_adapter_f: adamw), and merging the method's schema
    # must keep the chosen node (a MISSING value never replaces one; None would).
    optimizer: Any = MISSING
    lr: float = 0.002
    lr_scaling: LrScaling = LrScaling.none
    reference_batch_size: int = 32  # the batch size `lr` was tuned for
    epochs: int | None = None  # null: dataset.epochs_by_shots at the run's shot count
    warmup_epochs: int = 1
    warmup_lr: float = 1e-5
    schedule_unit: ScheduleUnit = ScheduleUnit.epoch  # step: cosine over epochs x iterations, no warm-up


@dataclass
class MethodLoaderConf:
    batch_size: int = 32
    eval_batch_size: int = 100
    # The dataset's (dataset.augment: the reference's crop + flip on real data, none on the toy world); the
    # methods that fit on frozen features without augmentation in their reference set none.
    augment: Augment = II("dataset.augment")
    # Frozen training features: auto = on exactly when exact (augment=none). on + augmentation needs
    # train_views=K: K fixed augmented views per image (an approximation, documented).
    train_cache: TrainCache = TrainCache.auto
    train_views: int = 0
    # tensor: each training image decoded once, crop/flip/normalise per batch on the device (the reference's
    # box distribution, data/tensor_augment.py); pil: the reference's per-image PIL pipeline, exactly.
    augment_backend: AugmentBackend = AugmentBackend.tensor
    decoded_cache_disk: bool = False  # also keep the decoded training images under paths.cache_dir/decoded


@dataclass
class MethodConf:
    """A method's node: `learner` (its learner's constructor arguments, `_target_` the class), `optim`, `loader`.
    Each method subclasses it beside its learner, with its reference's defaults."""

    name: str = MISSING
    display_name: str = MISSING
    learner: Any = MISSING
    optim: OptimConf = field(default_factory=OptimConf)
    loader: MethodLoaderConf = field(default_factory=MethodLoaderConf)

OPTIMIZER_SCHEMAS: dict[str, type] = {"sgd": SGDConf, "adamw": AdamWConf, "adam": AdamConf}
