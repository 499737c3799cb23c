"""GDA: Gaussian discriminant analysis on frozen CLIP features, added to zero-shot CLIP (Wang et al., "A
Hard-to-Beat Baseline for Training-free CLIP-based Adaptation", ICLR 2024; reference mrflogs/ICLR24).

The classes are Gaussians with their own means mu_c and one shared covariance; with uniform priors the
Bayes classifier is linear:

    W = mu P        b_c = log(1 / C) - mu_c P mu_c^T / 2
    logits = 100 f T^T + alpha (f W^T + b)

f: normalised image features; T: the zero-shot classifier of the dataset's templates; P: the precision
(inverse covariance) estimate. `precision=ks` is the reference's few-shot script (main_few_shots.py), the
empirical-Bayes ridge estimate of Kubokawa and Srivastava, P = D ((N - 1) S + tr(S) I)^+ with S the covariance
of the class-centred training features (N of them, D dims); `precision=class_covariance` is its base-to-new
script's (main_base2new.py), P = (mean over classes of the per-class covariances)^+. alpha is chosen on the
few-shot val split from the reference's grid 1e-4 .. 100 (the first strict maximum; 0.1 when no value gets a
val image right, the reference's starting value).

Classes without training features (novel classes, other datasets) get the reference's synthesised classifier
(main_base2new.py): for the text embedding t of each such class, its k nearest training features (by t . x)
give the mean (their sum plus `novel_text_copies` copies of t, averaged) and a KS precision around t,
D ((k - 1) S_t + tr(S_t) I)^+ with S_t = sum (x - t)(x - t)^T / (k - 1); the precisions are averaged over the
class list. The training features are every cached view (the reference fits on 10 augmented passes:
method.loader.augment=coop train_cache=on train_views=10 comes close). docs/methods_cached.md has the details.
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

#: The reference's alpha grid (both scripts).
REFERENCE_ALPHAS = (1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0)
#: The reference's alpha before its search: kept when no grid value gets a val image right (and with search=false).
REFERENCE_ALPHA = 0.1
#: The reference scales the zero-shot term by a fixed 100 (CLIP's trained logit scale), not the model's own.
CLIP_SCALE = 100.0
PRECISIONS = ("ks", "class_covariance")


@dataclass
class GDALearnerConf:
    """Training-free GDA. precision: ks (the paper's estimator, the few-shot script) or class_covariance (the
    base-to-new script's base classifier); novel_k / novel_text_copies: the synthesised classifier of classes
    without training features (the base-to-new script's 64 and 16)."""

    _target_: str = "promptlab.methods.gda.GDA"
    templates: list[str] = II(PROMPT_TEMPLATES)  # the zero-shot part follows prompts.templates
    precision: str = "ks"
    search: bool = True  # alpha chosen on the few-shot val split
    alphas: list[float] = field(default_factory=lambda: list(REFERENCE_ALPHAS))
    alpha: float = REFERENCE_ALPHA
    novel_k: int = 64
    novel_text_copies: int = 16


@dataclass
class GDAMethodConf(MethodConf):
    name: str = "gda"
    display_name: str = "GDA"
    learner: GDALearnerConf = field(default_factory=GDALearnerConf)
    optim: OptimConf = field(default_factory=lambda: OptimConf(epochs=0))  # closed-form fit, no epochs
    # One cached view per image; the reference's 10 augmented passes: augment=coop train_cache=on train_views=10.
    loader: MethodLoaderConf = field(default_factory=lambda: MethodLoaderConf(augment=Augment.none))


# --------------------------------------------------------------------------- the estimates (pure functions)
def class_means(features: torch.Tensor, labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """mu [C, D]: the mean training feature of each class."""
    return torch.stack([features[labels == c].mean(dim=0) for c in range(n_classes)])


def ks_precision(centred: torch.Tensor) -> torch.Tensor:
    """D ((N - 1) S + tr(S) I)^+ of N class-centred features [N, D], S their sample covariance (the reference's
    "KS estimator")."""
    n, dim = centred.shape
    cov = torch.cov(centred.t())
    eye = torch.eye(dim, dtype=centred.dtype, device=centred.device)
    return dim * torch.linalg.pinv((n - 1) * cov + torch.trace(cov) * eye)


def class_covariance_precision(features: torch.Tensor, labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """(mean over classes of each class's sample covariance)^+ (the reference's base-to-new base classifier)."""
    covs = torch.stack([torch.cov(features[labels == c].t()) for c in range(n_classes)])
    return torch.linalg.pinv(covs.mean(dim=0))


def linear_classifier(means: torch.Tensor, precision: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The shared-covariance Gaussian classifier with uniform priors: W = mu P [C, D], b = log(1/C) - mu P mu^T / 2."""
    weight = means @ precision
    bias = math.log(1.0 / means.shape[0]) - 0.5 * (weight * means).sum(dim=-1)
    return weight, bias


def synthesised_gaussians(text: torch.Tensor, train: torch.Tensor, k: int, text_copies: int,
                          chunk: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Means [C, D] and the shared precision [D, D] of classes known by their text embeddings `text` [C, D] only,
    from the training features `train` [N, D]: each class's k nearest features (by t . x) and `text_copies` copies
    of t give its mean; a KS precision around t from the same k features, averaged over the classes."""
    k = min(k, train.shape[0])
    if k < 2:
        raise ConfigError(f"GDA: the synthesised classifier needs at least 2 training features (has {train.shape[0]}).")
    dim = text.shape[1]
    nearest = train[(text @ train.t()).topk(k, dim=1).indices]  # [C, k, D]
    means = (nearest.sum(dim=1) + text_copies * text) / (k + text_copies)
    eye = torch.eye(dim, dtype=train.dtype, device=train.device)
    total = torch.zeros(dim, dim, dtype=train.dtype, device=train.device)
    for start in range(0, text.shape[0], chunk):  # pinv of a few [D, D] matrices at a time
        diff = nearest[start:start + chunk] - text[start:start + chunk, None]
        cov = diff.transpose(1, 2) @ diff / (k - 1)  # covariance about t, not about the mean
        trace = cov.diagonal(dim1=1, dim2=2).sum(dim=-1)
        total += (dim * torch.linalg.pinv((k - 1) * cov + trace[:, None, None] * eye)).sum(dim=0)
    return means, total / text.shape[0]


def search_alpha(zero_shot: torch.Tensor, gda: torch.Tensor, labels: torch.Tensor, alphas: Sequence[float],
                 start: float = REFERENCE_ALPHA) -> tuple[float, int]:
    """The reference's search: (alpha, correct count) of the first grid value whose val accuracy beats every
    earlier one, starting from 0 correct (so `start` is kept when none gets an image right)."""
    best_alpha, best = start, 0
    for alpha in alphas:
        correct = int(((zero_shot + alpha * gda).argmax(dim=-1) == labels).sum())
        if correct > best:
            best_alpha, best = float(alpha), correct
    return best_alpha, best


# --------------------------------------------------------------------------- the learner
@register_method(GDAMethodConf)
class GDA(PromptLearner):
    """Zero-shot CLIP plus a Gaussian discriminant fitted in closed form on the few-shot training features."""

    trainable = False
    direct_logits = True
    fits_features = True
    # Buffers (registered in __init__ / set_classnames): declared for the type checker.
    alpha_value: torch.Tensor
    train_features: torch.Tensor
    means: torch.Tensor
    precision: torch.Tensor
    text_features: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor
    text_prompts: TextPrompts

    def __init__(
        self,
        clip: FrozenCLIP,
        templates: Sequence[str],
        precision: str = GDALearnerConf.precision,
        search: bool = GDALearnerConf.search,
        alphas: Sequence[float] = REFERENCE_ALPHAS,
        alpha: float = GDALearnerConf.alpha,
        novel_k: int = GDALearnerConf.novel_k,
        novel_text_copies: int = GDALearnerConf.novel_text_copies,
    ) -> None:
        super().__init__()
        if precision not in PRECISIONS:
            raise ConfigError(f"method.learner.precision={precision!r}: one of {', '.join(PRECISIONS)}.")
        self.text_prompts = TextPrompts(list(templates))
        self.templates = self.text_prompts.templates
        self.precision_estimate = precision
        self.search = search
        self.alphas = [float(a) for a in alphas]
        self.init_alpha = float(alpha)
        self.novel_k, self.novel_text_copies = int(novel_k), int(novel_text_copies)
        self.fitted_classnames: list[str] = []
        self.val_acc: float | None = None
        self.classifier_source = "none"  # fitted | synthesised: how the current class list is scored
        dim = clip.embed_dim
        # What the fit estimated (float64, as the estimates are computed), zero-sized until fitted. Persistent, so
        # that a saved learner can rebuild both classifiers; _load_from_state_dict shapes them first.
        self.register_buffer("alpha_value", torch.tensor(self.init_alpha, dtype=torch.float64))
        self.register_buffer("train_features", torch.zeros(0, dim, dtype=torch.float64))
        self.register_buffer("means", torch.zeros(0, dim, dtype=torch.float64))
        self.register_buffer("precision", torch.zeros(0, 0, dtype=torch.float64))

    @classmethod
    def config_problems(cls, learner: Any, count_tokens: Callable[[str], int] | None = None) -> list[str]:
        found = []
        if learner.precision not in PRECISIONS:
            found.append(f"method.learner.precision={learner.precision!r}: one of {', '.join(PRECISIONS)}.")
        if not learner.alphas or any(a < 0 for a in learner.alphas) or learner.alpha < 0:
            found.append(f"method.learner.alphas={list(learner.alphas)} / alpha={learner.alpha}: at least one "
                         "alpha, every alpha >= 0.")
        if learner.novel_k < 2 or learner.novel_text_copies < 0:
            found.append(f"method.learner.novel_k={learner.novel_k} / novel_text_copies="
                         f"{learner.novel_text_copies}: novel_k >= 2 (a covariance of k features), copies >= 0.")
        return found

    @property
    def alpha(self) -> float:
        return float(self.alpha_value)

    @alpha.setter
    def alpha(self, value: float) -> None:
        self.alpha_value.fill_(float(value))

    @property
    def fitted(self) -> bool:
        return self.means.shape[0] > 0

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # noqa: ANN001
        # A saved fit has its own sizes: shape the buffers to it before loading.
        for name in ("train_features", "means", "precision"):
            saved = state_dict.get(prefix + name)
            if saved is not None:
                setattr(self, name, torch.zeros_like(saved, device=self.means.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if self.fitted and self.classnames:
            self.fitted_classnames = list(self.classnames)  # a saved learner is loaded with its training classes
            self._build_classifier()

    # ----------------------------------------------------------------- class lists
    def set_classnames(self, clip: FrozenCLIP, classnames: list[str]) -> None:
        self.classnames = list(classnames)
        text = self.text_prompts.class_embeddings(clip, classnames).float().to(self.means.device)
        self.register_buffer("text_features", text, persistent=False)
        self._build_classifier()

    def _build_classifier(self) -> None:
        device = self.means.device
        if not self.fitted:
            weight, bias = torch.zeros(0, self.means.shape[1], dtype=torch.float64), torch.zeros(0, dtype=torch.float64)
            self.classifier_source = "none"
        elif self.classnames == self.fitted_classnames:
            weight, bias = linear_classifier(self.means, self.precision)
            self.classifier_source = "fitted"
        else:
            # Not the fitted class list: every class gets the reference's base-to-new synthesised Gaussian.
            text = self.text_features.double()
            means, precision = synthesised_gaussians(text, self.train_features, self.novel_k, self.novel_text_copies)
            weight, bias = linear_classifier(means, precision)
            self.classifier_source = "synthesised"
        self.register_buffer("weight", weight.to(device), persistent=False)
        self.register_buffer("bias", bias.to(device), persistent=False)

    # ----------------------------------------------------------------- scoring
    def forward(self, clip: FrozenCLIP, image_features: torch.Tensor | None = None) -> torch.Tensor:
        return self.text_features  # the zero-shot classifier (diagnostics); scoring is `logits`

    def zero_shot_logits(self, image_features: torch.Tensor) -> torch.Tensor:
        return CLIP_SCALE * image_features.float() @ self.text_features.float().t()

    def gda_logits(self, image_features: torch.Tensor) -> torch.Tensor:
        """f W^T + b [B, C] (float64)."""
        return image_features.double() @ self.weight.t() + self.bias

    def logits(self, clip: FrozenCLIP, image_features: torch.Tensor) -> torch.Tensor:
        if not self.fitted:
            raise RuntimeError("GDA: fit_features must run before scoring.")
        return (self.zero_shot_logits(image_features).double() + self.alpha * self.gda_logits(image_features)).float()

    # ----------------------------------------------------------------- fitting
    @torch.no_grad()
    def fit_features(self, clip: FrozenCLIP, data: FitFeatures) -> dict[str, Any]:
        device = self.means.device
        train, labels = data.train, data.train_labels
        if train.dim() == 3:  # K cached views: every view is a sample (the reference's augmented passes)
            labels = labels.repeat(train.shape[0])
            train = train.reshape(-1, train.shape[-1])
        train = F.normalize(train.double(), dim=-1).to(device)
        labels = labels.to(device)
        n_classes = len(self.classnames)
        counts = torch.bincount(labels, minlength=n_classes)
        least = 2 if self.precision_estimate == "class_covariance" else 1
        if int(counts.min()) < least:
            empty = [self.classnames[c] for c in range(n_classes) if counts[c] < least]
            raise ConfigError(f"GDA: classes with fewer than {least} training features: {empty[:5]} (precision="
                              f"{self.precision_estimate} needs at least {least} per class).")
        means = class_means(train, labels, n_classes)
        if self.precision_estimate == "ks":
            precision = ks_precision(train - means[labels])
        else:
            precision = class_covariance_precision(train, labels, n_classes)
        self.train_features, self.means, self.precision = train, means, precision
        self.fitted_classnames = list(self.classnames)
        self._build_classifier()
        self.alpha = self.init_alpha
        if self.search:
            self.search_hyperparameters(data)
        return self.chosen()

    def chosen(self) -> dict[str, Any]:
        out: dict[str, Any] = {"gda_alpha": self.alpha, "gda_precision": self.precision_estimate}
        if self.val_acc is not None:
            out["gda_val_acc"] = self.val_acc
        return out

    @torch.no_grad()
    def search_hyperparameters(self, data: FitFeatures) -> None:
        """alpha from the reference's grid on the few-shot val split (never test data)."""
        if data.val_labels.numel() == 0:
            raise ConfigError("GDA: the few-shot val split is empty; alpha is chosen on it (set "
                              "method.learner.search=false to keep method.learner.alpha).")
        device = self.means.device
        val, labels = F.normalize(data.val.double(), dim=-1).to(device), data.val_labels.to(device)
        alpha, correct = search_alpha(self.zero_shot_logits(val).double(), self.gda_logits(val), labels,
                                      self.alphas, start=self.init_alpha)
        self.alpha = alpha
        self.val_acc = 100.0 * correct / labels.numel()

    # ----------------------------------------------------------------- what the record says
    def tuned_values(self) -> dict[str, str]:
        return {"alpha": "few-shot val"} if self.search else {}

    def fitted_values(self) -> dict[str, Any]:
        return self.chosen() if self.fitted else {}

    def summary(self) -> dict[str, Any]:
        out = super().summary()
        out |= {"gda_precision": self.precision_estimate, "gda_alpha_searched": self.search}
        return out

    def notes(self) -> list[str]:
        how = (f"chosen on the few-shot val split from {self.alphas}" if self.search else "fixed (search=false)")
        return [*super().notes(),
                f"GDA: alpha={self.alpha:.6g} {how}; precision={self.precision_estimate}; classes without training "
                f"features are scored by the synthesised classifier (k={self.novel_k} nearest training features, "
                f"{self.novel_text_copies} text copies)"]
