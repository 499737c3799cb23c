"""CLAP: a zero-shot-initialised linear probe held near its init by class-wise penalties (Silva-Rodriguez, Hajimiri,
Ben Ayed and Dolz, "A Closer Look at the Few-Shot Adaptation of Large Vision-Language Models", CVPR 2024; reference
jusiro/CLAP, trainers/adapters.py).

    logits = s * norm(f) norm(W)^T                     (s: CLIP's logit scale; W [C, D] the class prototypes)
    loss   = CE(logits, y) + mean_c lambda_c ||w_c - t_c||^2
    W_0    = T (the unnormalised zero-shot text embeddings: per class the mean of the raw template embeddings)
    lambda_c = mean over the support samples i of class c of softmax(s * norm(f_i) norm(T)^T)_c

lambda is fixed for the whole fit (the reference's `CONSTRAINT=l2`, the paper's CLAP); `constraint=false` drops the
penalty (ZS-LP). `adaptive=true` is the reference's optional "adaptative" variant: after every epoch an outer step
of the augmented Lagrangian (PHR penalty) sets lambda <- max(0, lambda + rho h) and rho <- h, with h the current
distances and rho starting at 0. Mini-batch SGD (lr 0.1, momentum 0.9, no weight decay), 300 epochs, Dassl's
cosine schedule after one constant epoch at 1e-5, batches of 256 drawn from all cached views of the support set,
as many batches an epoch as the support set alone would fill. Nothing is read from the val split: the reference
keeps the last epoch (validation-free by design).

W exists only for the classes CLAP was fitted on, and the reference scores no others: for a new class the zero-shot
init would be zero-shot CLIP itself, which method=zeroshot records under its own name; novel classes and other
datasets are not applicable. docs/methods_cached.md has the details.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from promptlab.config.method import II, PROMPT_TEMPLATES, MethodConf, MethodLoaderConf, OptimConf, TrainCache
from promptlab.errors import ConfigError
from promptlab.methods.base import FitFeatures, PromptLearner
from promptlab.methods.prompts import TextPrompts
from promptlab.methods.registry import register_method
from promptlab.models.frozen import FrozenCLIP

#: The reference's schedule (configs/trainers/SGD_lr1e-1_B256_ep300.yaml on Dassl's defaults) and views.
REFERENCE_LR = 0.1
REFERENCE_EPOCHS = 300
REFERENCE_BATCH = 256
MOMENTUM = 0.9
WARMUP_EPOCHS = 1
WARMUP_LR = 1e-5
REFERENCE_VIEWS = 20  # AdapterMethod.epochs_aumentation: augmented passes over the support set, cached


@dataclass
class CLAPLearnerConf:
    """CLAP on frozen features. constraint: the class-wise penalty (false: ZS-LP); adaptive: the outer
    augmented-Lagrangian step after every epoch (the reference's optional variant, off in its CLAP runs)."""

    _target_: str = "promptlab.methods.clap.CLAP"
    templates: list[str] = II(PROMPT_TEMPLATES)  # the zero-shot init follows prompts.templates
    constraint: bool = True
    adaptive: bool = False
    lr: float = REFERENCE_LR
    epochs: int = REFERENCE_EPOCHS
    batch_size: int = REFERENCE_BATCH
    warmup_epochs: int = WARMUP_EPOCHS
    warmup_lr: float = WARMUP_LR


@dataclass
class CLAPMethodConf(MethodConf):
    name: str = "clap"
    display_name: str = "CLAP"
    learner: CLAPLearnerConf = field(default_factory=CLAPLearnerConf)
    optim: OptimConf = field(default_factory=lambda: OptimConf(epochs=0))  # fitted in fit_features, not by the engine
    # The reference caches 20 augmented passes (random resized crop + flip) of the support set and trains on all of
    # them; with the dataset's augmentation that is train_views=20 (the toy world's augment=none gives one view).
    loader: MethodLoaderConf = field(default_factory=lambda: MethodLoaderConf(
        train_cache=TrainCache.on, train_views=REFERENCE_VIEWS))


# --------------------------------------------------------------------------- the reference's rules (pure functions)
@torch.no_grad()
def zero_shot_prototypes(clip: FrozenCLIP, templates: Sequence[str], classnames: Sequence[str]) -> torch.Tensor:
    """[C, D]: per class the mean of the UNnormalised text embeddings of its templates (the reference's
    `_get_base_text_features`). Their norm matters: W starts there and the penalty measures raw distances."""
    names = [name.replace("_", " ") for name in classnames]
    per_template = [clip.adapter.encode_tokens(clip.tokenize([t.format(n) for n in names]),
                                               truncate=clip.truncate_text).float() for t in templates]
    return torch.stack(per_template).mean(dim=0)


def clap_logits(features: torch.Tensor, prototypes: torch.Tensor, logit_scale: float) -> torch.Tensor:
    """s * cos(f, w_c), [B, C]: both sides normalised (the reference's `forward_lp`)."""
    return logit_scale * F.normalize(features, dim=-1) @ F.normalize(prototypes, dim=-1).t()


def init_multipliers(zero_shot_logits: torch.Tensor, labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """lambda_c: the mean zero-shot softmax probability of class c over the support samples of class c
    (`init_lagrangian_multipliers` without its "balanced", "corrected" or "constant" options)."""
    own = torch.softmax(zero_shot_logits, dim=-1)[torch.arange(labels.numel(), device=labels.device), labels]
    counts = torch.bincount(labels, minlength=n_classes).to(own.dtype)
    return torch.zeros(n_classes, dtype=own.dtype, device=own.device).index_add_(0, labels, own) / counts


def distances(prototypes: torch.Tensor, init: torch.Tensor) -> torch.Tensor:
    """h_c = ||w_c - t_c||^2, [C]."""
    return (prototypes - init).pow(2).sum(dim=-1)


def constraint_penalty(prototypes: torch.Tensor, init: torch.Tensor, multipliers: torch.Tensor) -> torch.Tensor:
    """mean_c lambda_c ||w_c - t_c||^2 (`zero_shot_constraint`, l2): a mean over classes, not a sum."""
    return (multipliers * distances(prototypes, init)).mean()


def phr(h: torch.Tensor, multipliers: torch.Tensor, rho: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The PHR augmented-Lagrangian penalty of constraints h <= 0 and its derivative in h: with x = lambda + rho h,
    (x^2 - lambda^2) / (2 rho) and x where x >= 0, else -lambda^2 / (2 rho) and 0. As the reference, the value
    divides by rho, which starts at 0 (only the derivative is used)."""
    x = multipliers + rho * h
    active = x >= 0
    # torch divides by zero without a warning: the value is inf/nan while rho = 0, and nothing reads it then.
    value = torch.where(active, (x**2 - multipliers**2) / (2 * rho), -(multipliers**2) / (2 * rho))
    return value, torch.where(active, x, torch.zeros_like(h))


def outer_step(prototypes: torch.Tensor, init: torch.Tensor, multipliers: torch.Tensor,
               rho: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's `outer_step`: lambda <- PHR'(h; lambda, rho) = max(0, lambda + rho h), then rho <- h."""
    h = distances(prototypes, init).detach()
    _, grad = phr(h, multipliers, rho)
    return grad.clone(), h.clone()


def epoch_lr(epoch: int, lr: float, epochs: int, warmup_epochs: int = WARMUP_EPOCHS,
             warmup_lr: float = WARMUP_LR) -> float:
    """Dassl's per-epoch rate: `warmup_lr` for the first `warmup_epochs`, then cosine annealing from `lr` over
    `epochs` (recounted from the end of the warm-up: WARMUP_RECOUNT, Dassl's default)."""
    if epoch < warmup_epochs:
        return warmup_lr
    return lr * (1 + math.cos(math.pi * (epoch - warmup_epochs) / epochs)) / 2


def batches_per_epoch(n_images: int, batch_size: int) -> int:
    """The reference's epoch: as many batches as its loader of the support images has (one view each), which drops
    the last partial batch only when there is at least one full batch (Dassl's `drop_last`)."""
    return max(1, n_images // batch_size) if n_images >= batch_size else 1


@dataclass
class CLAPSchedule:
    """The optimisation of one fit (the learner's options)."""

    lr: float = REFERENCE_LR
    epochs: int = REFERENCE_EPOCHS
    batch_size: int = REFERENCE_BATCH
    warmup_epochs: int = WARMUP_EPOCHS
    warmup_lr: float = WARMUP_LR
    constraint: bool = True
    adaptive: bool = False


@dataclass
class CLAPState:
    """The prototypes and the multipliers (and the outer step's penalty parameters) after a fit."""

    prototypes: torch.Tensor
    multipliers: torch.Tensor
    rho: torch.Tensor


def train(features: torch.Tensor, labels: torch.Tensor, init: torch.Tensor, multipliers: torch.Tensor,
          logit_scale: float, schedule: CLAPSchedule, n_images: int, generator: torch.Generator,
          after_epoch: Callable[[int, CLAPState], None] | None = None) -> CLAPState:
    """The reference's loop (`run_epoch`, `forward_backward`): each epoch the samples (every cached view) are
    shuffled and the first `batches_per_epoch(n_images)` batches taken; each batch one SGD-with-momentum step on
    CE + penalty at the epoch's rate; with `adaptive`, an outer step after the epoch."""
    weight = init.clone().requires_grad_(True)
    optimiser = torch.optim.SGD([weight], lr=schedule.lr, momentum=MOMENTUM, weight_decay=0.0)
    lam, rho = multipliers.clone(), torch.zeros_like(multipliers)
    n_batches = batches_per_epoch(n_images, schedule.batch_size)
    for epoch in range(schedule.epochs):
        for group in optimiser.param_groups:
            group["lr"] = epoch_lr(epoch, schedule.lr, schedule.epochs, schedule.warmup_epochs, schedule.warmup_lr)
        order = torch.randperm(features.shape[0], generator=generator).to(features.device)
        for batch in range(n_batches):
            idx = order[batch * schedule.batch_size:(batch + 1) * schedule.batch_size]
            loss = F.cross_entropy(clap_logits(features[idx], weight, logit_scale), labels[idx])
            if schedule.constraint:
                loss = loss + constraint_penalty(weight, init, lam)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        if schedule.constraint and schedule.adaptive:
            lam, rho = outer_step(weight.detach(), init, lam, rho)
        if after_epoch is not None:
            after_epoch(epoch, CLAPState(weight.detach(), lam, rho))
    return CLAPState(weight.detach().clone(), lam, rho)


# --------------------------------------------------------------------------- the learner
@register_method(CLAPMethodConf)
class CLAP(PromptLearner):
    """A linear probe started at the zero-shot classifier and penalised class-wise for leaving it, fitted on the
    cached support features."""

    trainable = False  # its SGD runs inside fit_features (its own batching and schedule)
    direct_logits = True
    fits_features = True
    scores_unseen_classes = False
    unseen_classes_reason = ("CLAP has prototypes only for the classes it was fitted on, and the reference scores "
                             "no others (an unseen class's zero-shot init would be zero-shot CLIP itself)")
    context_args = ("init_seed",)
    prototypes: torch.Tensor  # buffers, zero-sized until fitted
    multipliers: torch.Tensor
    text_features: torch.Tensor

    def __init__(
        self,
        clip: FrozenCLIP,
        templates: Sequence[str],
        constraint: bool = CLAPLearnerConf.constraint,
        adaptive: bool = CLAPLearnerConf.adaptive,
        lr: float = CLAPLearnerConf.lr,
        epochs: int = CLAPLearnerConf.epochs,
        batch_size: int = CLAPLearnerConf.batch_size,
        warmup_epochs: int = CLAPLearnerConf.warmup_epochs,
        warmup_lr: float = CLAPLearnerConf.warmup_lr,
        init_seed: int | None = None,
    ) -> None:
        super().__init__()
        self.prompts = TextPrompts(list(templates))
        self.text_prompts = self.prompts
        self.schedule = CLAPSchedule(float(lr), int(epochs), int(batch_size), int(warmup_epochs), float(warmup_lr),
                                     bool(constraint), bool(adaptive))
        self.init_seed = init_seed
        self.fitted_classnames: list[str] = []
        self.fit_info: dict[str, Any] = {}
        dim = clip.embed_dim
        # Persistent, so that a learner's state_dict reloads into a fresh one.
        self.register_buffer("prototypes", torch.zeros(0, dim))
        self.register_buffer("multipliers", torch.zeros(0))

    @classmethod
    def config_problems(cls, learner: Any, count_tokens: Callable[[str], int] | None = None) -> list[str]:
        problems = []
        if learner.epochs < 1 or learner.batch_size < 1:
            problems.append(f"method.learner.epochs={learner.epochs} / batch_size={learner.batch_size}: both >= 1.")
        if learner.lr <= 0 or learner.warmup_epochs < 0:
            problems.append(f"method.learner.lr={learner.lr} must be > 0 and warmup_epochs={learner.warmup_epochs} "
                            ">= 0.")
        if learner.adaptive and not learner.constraint:
            problems.append("method.learner.adaptive=true updates the constraint's multipliers: it needs "
                            "constraint=true.")
        return problems

    @property
    def fitted(self) -> bool:
        return self.prototypes.shape[0] > 0

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # noqa: ANN001
        # A saved fit has its own class count: shape the buffers to it before loading.
        for name in ("prototypes", "multipliers"):
            saved = state_dict.get(prefix + name)
            if saved is not None:
                setattr(self, name, torch.zeros_like(saved, device=self.prototypes.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if self.fitted and self.classnames:
            self.fitted_classnames = list(self.classnames)

    # ----------------------------------------------------------------- class lists and scoring
    def set_classnames(self, clip: FrozenCLIP, classnames: list[str]) -> None:
        if self.fitted_classnames and list(classnames) != self.fitted_classnames:
            raise ConfigError(f"CLAP: {self.unseen_classes_reason} (fitted on {len(self.fitted_classnames)} classes, "
                              f"asked to score {len(classnames)}).")
        self.classnames = list(classnames)
        text = zero_shot_prototypes(clip, self.prompts.templates, classnames).to(self.prototypes.device)
        self.register_buffer("text_features", text, persistent=False)

    def forward(self, clip: FrozenCLIP, image_features: torch.Tensor | None = None) -> torch.Tensor:
        # Normalised class embeddings (diagnostics): the fitted prototypes, or the zero-shot init before the fit.
        return F.normalize(self.prototypes if self.fitted else self.text_features, dim=-1)

    def logits(self, clip: FrozenCLIP, image_features: torch.Tensor) -> torch.Tensor:
        if not self.fitted:
            raise RuntimeError("CLAP: fit_features must run before scoring.")
        return clap_logits(image_features.float(), self.prototypes, float(clip.logit_scale()))

    # ----------------------------------------------------------------- fitting
    def _train_features(self, data: FitFeatures) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Every cached view a sample (the reference concatenates its 20 passes); the image count sets the epoch."""
        train, labels = data.train.float(), data.train_labels
        n_images = int(labels.numel())
        if train.dim() == 3:
            labels = labels.repeat(train.shape[0])
            train = train.reshape(-1, train.shape[-1])
        device = self.prototypes.device
        return F.normalize(train, dim=-1).to(device), labels.to(device), n_images

    @torch.no_grad()
    def fit_features(self, clip: FrozenCLIP, data: FitFeatures) -> dict[str, Any]:
        features, labels, n_images = self._train_features(data)
        n_classes = len(self.classnames)
        counts = torch.bincount(labels, minlength=n_classes)
        if int(counts.min()) < 1:
            empty = [self.classnames[c] for c in range(n_classes) if counts[c] < 1]
            raise ConfigError(f"CLAP: classes without training features: {empty[:5]}.")
        scale = float(clip.logit_scale())
        init = self.text_features.float()
        multipliers = init_multipliers(clap_logits(features, init, scale), labels, n_classes)
        generator = torch.Generator().manual_seed(self.init_seed if self.init_seed is not None else 0)
        with torch.enable_grad():
            final = train(features, labels, init, multipliers, scale, self.schedule, n_images, generator)
        self.prototypes, self.multipliers = final.prototypes, final.multipliers
        self.fitted_classnames = list(self.classnames)
        self.fit_info = {
            "clap_constraint": self.schedule.constraint, "clap_adaptive": self.schedule.adaptive,
            "clap_epochs": self.schedule.epochs, "clap_batches_per_epoch": batches_per_epoch(
                n_images, self.schedule.batch_size), "clap_samples": int(labels.numel()),
            "clap_multiplier_init_mean": float(multipliers.mean()),
            "clap_distance_mean": float(distances(final.prototypes, init).mean()),
        }
        return dict(self.fit_info)

    # ----------------------------------------------------------------- what the record says
    def tuned_values(self) -> dict[str, str]:
        # Validation-free by design: every value is the reference's constant or comes from the support set alone,
        # and the last epoch is kept (the record's tuned_on: none).
        return {}

    def summary(self) -> dict[str, Any]:
        out = super().summary()
        out |= {"clap_constraint": self.schedule.constraint, "clap_adaptive": self.schedule.adaptive,
                "clap_epochs": self.schedule.epochs}
        return out

    def fitted_values(self) -> dict[str, Any]:
        return dict(self.fit_info)

    def notes(self) -> list[str]:
        if not self.fit_info:
            return super().notes()
        what = "CLAP (class-wise constraint)" if self.schedule.constraint else "ZS-LP (no constraint)"
        return [*super().notes(),
                f"{what}: {self.fit_info['clap_epochs']} epochs of {self.fit_info['clap_batches_per_epoch']} batches "
                f"from {self.fit_info['clap_samples']} cached samples, multipliers initialised at a mean of "
                f"{self.fit_info['clap_multiplier_init_mean']:.4g}; the last epoch kept (no validation data read)"]
