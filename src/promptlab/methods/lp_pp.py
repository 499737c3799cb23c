"""LP++: a linear probe blended with zero-shot CLIP by learnable class-wise weights (Huang, Shakeri et al., "LP++: A
Surprisingly Strong Linear Probe for Few-Shot CLIP", CVPR 2024; reference FereshteShakeri/FewShot-CLIP-Strong-Baseline,
methods/linear_probe_p2.py).

    logits = f W^T + b + alpha * (f T^T)        (alpha [C]: one blending weight per class, times column c)

f: normalised image features; T: the zero-shot classifier of the dataset's templates (unscaled cosines); W [C, D]
and b [C] a linear probe. Full-batch gradient descent on the cross-entropy of the few-shot training features, with
step sizes computed from the data (no learning-rate search):

    lr_w     = 4 N / lambda_max(F^T F)                   (SGD with momentum 0.9 on W and b, every epoch)
    lr_alpha = N / (4 max_c sum_i (f_i . t_c)^2)         (plain step on alpha every 10th epoch)
    W_0      = the per-class SUM of training features     b_0 ~ U(-1/sqrt(D), 1/sqrt(D)) (nn.Linear's default)
    alpha_0  = 250 * mean over classes c of (mean f_i . t_c over the training images i of class c), for every class

As the reference, alpha's gradient is never zeroed: every 10th epoch it steps by the gradients summed over ALL
epochs so far. 300 epochs; the reference keeps the last epoch with the best accuracy on the few-shot val split
(`select_epoch=true`); `select_epoch=false` keeps the last epoch and reads no validation data at all.

The probe has a weight and a bias only for the classes it was fitted on and the reference scores no others: novel
classes and other datasets are not applicable (its text-only part on them would be zero-shot CLIP's ranking,
which method=zeroshot records under its own name). docs/methods_cached.md has the details.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from promptlab.config.method import II, PROMPT_TEMPLATES, Augment, MethodConf, MethodLoaderConf, OptimConf
from promptlab.errors import ConfigError
from promptlab.methods.base import FitFeatures, PromptLearner
from promptlab.methods.prompts import TextPrompts
from promptlab.methods.registry import register_method
from promptlab.models.frozen import FrozenCLIP

#: The reference's constants (linear_probe_p2.py, configs/base.yaml).
REFERENCE_EPOCHS = 300
ALPHA_EVERY = 10  # alpha steps after every 10th epoch
ALPHA_INIT_SCALE = 250.0
MOMENTUM = 0.9


@dataclass
class LPPPLearnerConf:
    """LP++ on frozen features. epochs: full-batch steps (the reference's train_epoch 300); select_epoch: keep the
    last epoch with the best few-shot val accuracy (the reference) or, false, the last epoch (validation-free)."""

    _target_: str = "promptlab.methods.lp_pp.LPPlusPlus"
    templates: list[str] = II(PROMPT_TEMPLATES)  # the text part follows prompts.templates
    epochs: int = REFERENCE_EPOCHS
    alpha_every: int = ALPHA_EVERY
    select_epoch: bool = True


@dataclass
class LPPPMethodConf(MethodConf):
    name: str = "lp_pp"
    display_name: str = "LP++"
    learner: LPPPLearnerConf = field(default_factory=LPPPLearnerConf)
    optim: OptimConf = field(default_factory=lambda: OptimConf(epochs=0))  # fitted in fit_features, not by the engine
    # One cached view per image (the reference: one random-resized-crop view; method.loader.augment=coop comes close).
    loader: MethodLoaderConf = field(default_factory=lambda: MethodLoaderConf(augment=Augment.none))


# --------------------------------------------------------------------------- the reference's rules (pure functions)
def class_sums(features: torch.Tensor, labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """[C, D]: the sum (not the mean: the reference's division is commented out) of each class's features."""
    return torch.zeros(n_classes, features.shape[1], dtype=features.dtype, device=features.device).index_add_(
        0, labels, features)


def init_alpha(text_logits: torch.Tensor, labels: torch.Tensor, n_classes: int) -> float:
    """250 * the mean over classes of each class's mean text logit f_i . t_c over its own images (shots cancel)."""
    own = text_logits[torch.arange(labels.numel(), device=labels.device), labels]
    counts = torch.bincount(labels, minlength=n_classes).to(own.dtype)
    per_class = torch.zeros(n_classes, dtype=own.dtype, device=own.device).index_add_(0, labels, own) / counts
    return float(ALPHA_INIT_SCALE * per_class.mean())


def lr_weight(features: torch.Tensor) -> float:
    """4 N / the largest eigenvalue of F^T F (the reference's step size of W and b)."""
    largest = torch.linalg.eigvalsh(features.t() @ features)[-1]
    return float(4 * features.shape[0] / largest)


def lr_alpha(text_logits: torch.Tensor) -> float:
    """N / (4 max_c sum_i (f_i . t_c)^2) (the reference's step size of alpha)."""
    return float(text_logits.shape[0] / (4 * text_logits.pow(2).sum(dim=0).max()))


@dataclass
class LPPPState:
    """The probe and the blending weights at one epoch."""

    weight: torch.Tensor
    bias: torch.Tensor
    alpha: torch.Tensor


def blended_logits(features: torch.Tensor, text: torch.Tensor, state: LPPPState) -> torch.Tensor:
    """f W^T + b + alpha_c f . t_c, [B, C]."""
    return features @ state.weight.t() + state.bias + state.alpha * (features @ text.t())


def train(features: torch.Tensor, labels: torch.Tensor, text: torch.Tensor, start: LPPPState, epochs: int,
          rates: tuple[float, float], alpha_every: int = ALPHA_EVERY,
          after_epoch: Callable[[int, LPPPState], None] | None = None) -> LPPPState:
    """The reference's loop: each epoch one full-batch cross-entropy gradient at the current (W, b, alpha); W and b
    take an SGD-with-momentum step (lr_w); alpha's gradient is added to a sum that is never reset and, after every
    `alpha_every`-th epoch, alpha steps by lr_alpha times that sum. `after_epoch(epoch, state)` sees each epoch's
    state (the reference validates there)."""
    lr_w, lr_a = rates
    weight, bias = start.weight.clone().requires_grad_(True), start.bias.clone().requires_grad_(True)
    alpha = start.alpha.clone().requires_grad_(True)
    optimiser = torch.optim.SGD([weight, bias], lr=lr_w, momentum=MOMENTUM)
    text_logits = features @ text.t()
    for epoch in range(epochs):
        logits = features @ weight.t() + bias + alpha * text_logits
        optimiser.zero_grad()  # W and b only: alpha.grad keeps accumulating, as the reference's
        F.cross_entropy(logits, labels).backward()
        optimiser.step()
        if (epoch + 1) % alpha_every == 0 and alpha.grad is not None:
            with torch.no_grad():
                alpha -= lr_a * alpha.grad
        if after_epoch is not None:
            after_epoch(epoch, LPPPState(weight.detach(), bias.detach(), alpha.detach()))
    return LPPPState(weight.detach().clone(), bias.detach().clone(), alpha.detach().clone())


# --------------------------------------------------------------------------- the learner
@register_method(LPPPMethodConf)
class LPPlusPlus(PromptLearner):
    """A linear probe plus class-wise multiples of zero-shot CLIP's logits, fitted on the cached training features."""

    trainable = False  # its gradient steps run inside fit_features (full batch, data-driven rates)
    direct_logits = True
    fits_features = True
    scores_unseen_classes = False
    unseen_classes_reason = ("LP++ has a linear weight, a bias and a blending weight only for the classes it was "
                             "fitted on, and the reference scores no others")
    context_args = ("init_seed",)
    weight: torch.Tensor  # buffers, zero-sized until fitted
    bias: torch.Tensor
    alpha: torch.Tensor
    text_features: torch.Tensor

    def __init__(
        self,
        clip: FrozenCLIP,
        templates: Sequence[str],
        epochs: int = LPPPLearnerConf.epochs,
        alpha_every: int = LPPPLearnerConf.alpha_every,
        select_epoch: bool = LPPPLearnerConf.select_epoch,
        init_seed: int | None = None,
    ) -> None:
        super().__init__()
        self.prompts = TextPrompts(list(templates))  # typed: never None here
        self.text_prompts = self.prompts
        self.epochs, self.alpha_every, self.select_epoch = int(epochs), int(alpha_every), bool(select_epoch)
        self.init_seed = init_seed
        self.fitted_classnames: list[str] = []
        self.fit_info: dict[str, Any] = {}
        self.val_history: list[float] = []  # val accuracy by epoch (select_epoch)
        dim = clip.embed_dim
        # Persistent (float64, as fitted), so that a learner's state_dict reloads into a fresh one.
        self.register_buffer("weight", torch.zeros(0, dim, dtype=torch.float64))
        self.register_buffer("bias", torch.zeros(0, dtype=torch.float64))
        self.register_buffer("alpha", torch.zeros(0, dtype=torch.float64))

    @classmethod
    def config_problems(cls, learner: Any, count_tokens: Callable[[str], int] | None = None) -> list[str]:
        if learner.epochs < 1 or learner.alpha_every < 1:
            return [f"method.learner.epochs={learner.epochs} / alpha_every={learner.alpha_every}: both >= 1."]
        return []

    @property
    def fitted(self) -> bool:
        return self.weight.shape[0] > 0

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # noqa: ANN001
        # A saved fit has its own class count: shape the buffers to it before loading.
        for name in ("weight", "bias", "alpha"):
            saved = state_dict.get(prefix + name)
            if saved is not None:
                setattr(self, name, torch.zeros_like(saved, device=self.weight.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if self.fitted and self.classnames:
            self.fitted_classnames = list(self.classnames)

    # ----------------------------------------------------------------- class lists and scoring
    def set_classnames(self, clip: FrozenCLIP, classnames: list[str]) -> None:
        if self.fitted_classnames and list(classnames) != self.fitted_classnames:
            raise ConfigError(f"LP++: {self.unseen_classes_reason} (fitted on {len(self.fitted_classnames)} classes, "
                              f"asked to score {len(classnames)}).")
        self.classnames = list(classnames)
        text = self.prompts.class_embeddings(clip, classnames).double().to(self.weight.device)
        self.register_buffer("text_features", text, persistent=False)

    def forward(self, clip: FrozenCLIP, image_features: torch.Tensor | None = None) -> torch.Tensor:
        return self.text_features.float()  # the zero-shot classifier (diagnostics); scoring is `logits`

    def state(self) -> LPPPState:
        return LPPPState(self.weight, self.bias, self.alpha)

    def logits(self, clip: FrozenCLIP, image_features: torch.Tensor) -> torch.Tensor:
        if not self.fitted:
            raise RuntimeError("LP++: fit_features must run before scoring.")
        return blended_logits(image_features.double(), self.text_features, self.state()).float()

    # ----------------------------------------------------------------- fitting
    def _train_features(self, data: FitFeatures) -> tuple[torch.Tensor, torch.Tensor]:
        train = data.train
        if train.dim() == 3:  # K cached views: their mean stands for the image (the reference has one view)
            train = train.double().mean(dim=0)
        return F.normalize(train.double(), dim=-1).to(self.weight.device), data.train_labels.to(self.weight.device)

    def initial_state(self, features: torch.Tensor, labels: torch.Tensor) -> LPPPState:
        n_classes, dim = len(self.classnames), features.shape[1]
        generator = torch.Generator().manual_seed(self.init_seed if self.init_seed is not None else 0)
        bound = 1.0 / math.sqrt(dim)  # nn.Linear's default bias init, which the reference keeps
        bias = (torch.rand(n_classes, generator=generator, dtype=torch.float64) * 2 - 1) * bound
        alpha = torch.full((n_classes,), init_alpha(features @ self.text_features.t(), labels, n_classes),
                           dtype=torch.float64, device=features.device)
        return LPPPState(class_sums(features, labels, n_classes), bias.to(features.device), alpha)

    @torch.no_grad()
    def fit_features(self, clip: FrozenCLIP, data: FitFeatures) -> dict[str, Any]:
        features, labels = self._train_features(data)
        n_classes = len(self.classnames)
        counts = torch.bincount(labels, minlength=n_classes)
        if int(counts.min()) < 1:
            empty = [self.classnames[c] for c in range(n_classes) if counts[c] < 1]
            raise ConfigError(f"LP++: classes without training features: {empty[:5]}.")
        start = self.initial_state(features, labels)
        text_logits = features @ self.text_features.t()
        rates = (lr_weight(features), lr_alpha(text_logits))
        self.fit_info = {"lp_pp_lr_w": rates[0], "lp_pp_lr_alpha": rates[1], "lp_pp_alpha_init": float(start.alpha[0]),
                         "lp_pp_epochs": self.epochs}
        with torch.enable_grad():
            if self.select_epoch:
                final = self._train_selecting(features, labels, start, rates, data)
            else:
                final = train(features, labels, self.text_features, start, self.epochs, rates, self.alpha_every)
                self.fit_info["lp_pp_selected_epoch"] = self.epochs
        self.weight, self.bias, self.alpha = final.weight, final.bias, final.alpha
        self.fitted_classnames = list(self.classnames)
        self.fit_info["lp_pp_alpha_mean"] = float(self.alpha.mean())
        return dict(self.fit_info)

    def _train_selecting(self, features: torch.Tensor, labels: torch.Tensor, start: LPPPState,
                         rates: tuple[float, float], data: FitFeatures) -> LPPPState:
        """The reference's selection: after each epoch, the val accuracy; the last epoch with the best one is kept
        (>=, from 0). The few-shot val split only, never test data."""
        if data.val_labels.numel() == 0:
            raise ConfigError("LP++: the few-shot val split is empty; the epoch is chosen on it (set "
                              "method.learner.select_epoch=false to keep the last epoch).")
        val = F.normalize(data.val.double(), dim=-1).to(self.weight.device)
        val_labels = data.val_labels.to(self.weight.device)
        best: dict[str, Any] = {"acc": 0.0}
        history: list[float] = []

        def keep_best(epoch: int, state: LPPPState) -> None:
            acc = 100.0 * float((blended_logits(val, self.text_features, state).argmax(dim=-1) == val_labels)
                                .double().mean())
            history.append(acc)
            if acc >= best["acc"]:
                best.update(acc=acc, epoch=epoch + 1, state=LPPPState(state.weight.clone(), state.bias.clone(),
                                                                       state.alpha.clone()))

        train(features, labels, self.text_features, start, self.epochs, rates, self.alpha_every, keep_best)
        self.fit_info.update(lp_pp_selected_epoch=best["epoch"], lp_pp_val_acc=best["acc"])
        self.val_history = history
        return best["state"]

    # ----------------------------------------------------------------- what the record says
    def tuned_values(self) -> dict[str, str]:
        return {"epoch": "few-shot val"} if self.select_epoch else {}

    def fitted_values(self) -> dict[str, Any]:
        return dict(self.fit_info)

    def summary(self) -> dict[str, Any]:
        out = super().summary()
        out["lp_pp_select_epoch"] = self.select_epoch
        return out

    def notes(self) -> list[str]:
        if not self.fit_info:
            return super().notes()
        if self.select_epoch:
            how = (f"epoch {self.fit_info['lp_pp_selected_epoch']} of {self.epochs} kept: the last with the best "
                   "few-shot val accuracy")
        else:
            how = f"the last of {self.epochs} epochs kept (no validation data read)"
        return [*super().notes(),
                f"LP++: step sizes from the training features (lr_w={self.fit_info['lp_pp_lr_w']:.6g}, "
                f"lr_alpha={self.fit_info['lp_pp_lr_alpha']:.6g}), alpha initialised at "
                f"{self.fit_info['lp_pp_alpha_init']:.6g}; {how}"]
