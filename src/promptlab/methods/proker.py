"""ProKeR: proximal kernel ridge regression around zero-shot CLIP, training-free (Bendou et al., "A Kernel-based
Perspective on Training-Free Few-shot Adaptation of Large Vision-Language Models", CVPR 2025; reference ybendou/ProKeR,
trainers/proker.py).

    logits(f) = f T^T + K(f, S) A          A = (K(S, S) / lambda + I)^-1 (Y - S T^T)

f: normalised image features; T: the zero-shot classifier (unscaled cosines); S [N, D]: the normalised few-shot
training features (every cached view a sample); Y their one-hot labels; K(x, y) = exp(-beta (1 - x . y)), a Gaussian
kernel on the sphere (||x - y||^2 = 2 (1 - x . y)). The regression fits the residual of zero-shot CLIP on the
training features, and the penalty of its RKHS norm keeps the classifier close to zero-shot CLIP (the proximal
term): lambda large fits the residual, lambda small stays at zero-shot. beta and lambda are searched on the few-shot
val split over the reference's per-dataset linspace grids (first strict maximum, as the reference).

Another class list (novel classes, other datasets): A's columns follow the classes by name; a class without training
features has no residual to fit, so its score is the zero-shot term alone (the proximal term's minimiser), as
Tip-Adapter's. For novel classes ProKeR is then zero-shot CLIP. docs/methods_cached.md has the details.
"""

from __future__ import annotations

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

#: The reference's grids [start, stop, count] (torch.linspace) of caltech101, fgvc, food101, ucf101 (RN50); per-dataset
#: ones in conf/method_dataset/proker_*.yaml.
BETA_GRID = (0.5, 3.0, 20)
LAMBDA_GRID = (0.001, 1.0, 10)
#: Its ImageNet 16-shot values (configs_proker/hyperparameters.json): search=false keeps them.
REFERENCE_BETA, REFERENCE_LAMBDA = 1.7, 0.1


@dataclass
class ProKeRLearnerConf:
    """Training-free ProKeR. beta_grid / lambda_grid: [start, stop, count] of torch.linspace, searched on the
    few-shot val split; search=false keeps beta and lmbda (read no validation data)."""

    _target_: str = "promptlab.methods.proker.ProKeR"
    templates: list[str] = II(PROMPT_TEMPLATES)  # the zero-shot part follows prompts.templates
    search: bool = True
    beta_grid: list[float] = field(default_factory=lambda: list(BETA_GRID))
    lambda_grid: list[float] = field(default_factory=lambda: list(LAMBDA_GRID))
    beta: float = REFERENCE_BETA
    lmbda: float = REFERENCE_LAMBDA


@dataclass
class ProKeRMethodConf(MethodConf):
    name: str = "proker"
    display_name: str = "ProKeR"
    learner: ProKeRLearnerConf = field(default_factory=ProKeRLearnerConf)
    optim: OptimConf = field(default_factory=lambda: OptimConf(epochs=0))  # closed-form fit, no epochs
    # One cached view per image; the reference's 10 augmented passes: augment=coop train_cache=on train_views=10.
    loader: MethodLoaderConf = field(default_factory=lambda: MethodLoaderConf(augment=Augment.none))


# --------------------------------------------------------------------------- the closed form (pure functions)
def sphere_rbf(x: torch.Tensor, y: torch.Tensor, beta: float) -> torch.Tensor:
    """exp(-beta (1 - x . y)) [len(x), len(y)] of normalised features."""
    return torch.exp(-beta * (1.0 - x @ y.t()))


def dual_coefficients(support: torch.Tensor, residual: torch.Tensor, beta: float, lmbda: float) -> torch.Tensor:
    """A = (K(S, S) / lambda + I)^-1 R [N, C], R the residual of zero-shot CLIP on the training features."""
    gram = sphere_rbf(support, support, beta) / lmbda
    gram.diagonal().add_(1.0)
    return torch.linalg.solve(gram, residual)


def linspace_grid(spec: Sequence[float]) -> list[float]:
    """torch.linspace(start, stop, count) as floats (the reference's grids)."""
    start, stop, count = spec
    return [float(v) for v in torch.linspace(float(start), float(stop), int(count))]


def search_beta_lambda(support: torch.Tensor, residual: torch.Tensor, val: torch.Tensor, val_zero_shot: torch.Tensor,
                       val_labels: torch.Tensor, betas: Sequence[float], lambdas: Sequence[float],
                       start: tuple[float, float]) -> tuple[float, float, int]:
    """The reference's search, beta outer and lambda inner: (beta, lambda, correct count) of the first value whose val
    accuracy beats every earlier one, from 0 correct (`start` is kept when none gets an image right)."""
    best_beta, best_lambda = start
    best = 0
    for beta in betas:
        cross = sphere_rbf(val, support, beta)
        for lmbda in lambdas:
            logits = val_zero_shot + cross @ dual_coefficients(support, residual, beta, lmbda)
            correct = int((logits.argmax(dim=-1) == val_labels).sum())
            if correct > best:
                best_beta, best_lambda, best = beta, lmbda, correct
    return best_beta, best_lambda, best


# --------------------------------------------------------------------------- the learner
@register_method(ProKeRMethodConf)
class ProKeR(PromptLearner):
    """Zero-shot CLIP plus a kernel ridge regression of its residual on the few-shot training features."""

    trainable = False
    direct_logits = True
    fits_features = True
    support: torch.Tensor  # buffers: normalised training features, A over the fitted classes, [beta, lambda]
    dual_coef: torch.Tensor
    beta_lambda: torch.Tensor
    text_features: torch.Tensor
    coef: torch.Tensor  # A's columns for the current class list (zero for classes without training features)

    def __init__(
        self,
        clip: FrozenCLIP,
        templates: Sequence[str],
        search: bool = ProKeRLearnerConf.search,
        beta_grid: Sequence[float] = BETA_GRID,
        lambda_grid: Sequence[float] = LAMBDA_GRID,
        beta: float = ProKeRLearnerConf.beta,
        lmbda: float = ProKeRLearnerConf.lmbda,
    ) -> None:
        super().__init__()
        problems = grid_problems(beta_grid, lambda_grid, beta, lmbda)
        if problems:
            raise ConfigError(" ".join(problems))
        self.prompts = TextPrompts(list(templates))  # typed: never None here
        self.text_prompts = self.prompts
        self.search = search
        self.beta_grid, self.lambda_grid = [float(v) for v in beta_grid], [float(v) for v in lambda_grid]
        self.init_beta, self.init_lambda = float(beta), float(lmbda)
        self.fitted_classnames: list[str] = []
        self.val_acc: float | None = None
        dim = clip.embed_dim
        # Persistent (float64, as fitted), so that a learner's state_dict reloads into a fresh one.
        self.register_buffer("beta_lambda", torch.tensor([self.init_beta, self.init_lambda], dtype=torch.float64))
        self.register_buffer("support", torch.zeros(0, dim, dtype=torch.float64))
        self.register_buffer("dual_coef", torch.zeros(0, 0, dtype=torch.float64))

    @classmethod
    def config_problems(cls, learner: Any, count_tokens: Callable[[str], int] | None = None) -> list[str]:
        return grid_problems(learner.beta_grid, learner.lambda_grid, learner.beta, learner.lmbda)

    @property
    def beta(self) -> float:
        return float(self.beta_lambda[0])

    @property
    def lmbda(self) -> float:
        return float(self.beta_lambda[1])

    @property
    def fitted(self) -> bool:
        return self.support.shape[0] > 0

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # noqa: ANN001
        # A saved fit has its own sizes: shape the buffers to it before loading (loaded with its training classes).
        for name in ("support", "dual_coef"):
            saved = state_dict.get(prefix + name)
            if saved is not None:
                setattr(self, name, torch.zeros_like(saved, device=self.support.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if self.fitted and self.classnames:
            self.fitted_classnames = list(self.classnames)
            self._build_coef()

    # ----------------------------------------------------------------- class lists
    def set_classnames(self, clip: FrozenCLIP, classnames: list[str]) -> None:
        self.classnames = list(classnames)
        text = self.prompts.class_embeddings(clip, classnames).double().to(self.support.device)
        self.register_buffer("text_features", text, persistent=False)
        self._build_coef()

    def _build_coef(self) -> None:
        # A's columns by class name: a class without training features gets a zero column (zero-shot alone).
        coef = torch.zeros(self.support.shape[0], len(self.classnames), dtype=torch.float64, device=self.support.device)
        column = {name: i for i, name in enumerate(self.fitted_classnames)}
        for target, name in enumerate(self.classnames):
            if name in column and self.dual_coef.numel():
                coef[:, target] = self.dual_coef[:, column[name]]
        self.register_buffer("coef", coef, persistent=False)

    # ----------------------------------------------------------------- scoring
    def forward(self, clip: FrozenCLIP, image_features: torch.Tensor | None = None) -> torch.Tensor:
        return self.text_features.float()  # the zero-shot classifier (diagnostics); scoring is `logits`

    def logits(self, clip: FrozenCLIP, image_features: torch.Tensor) -> torch.Tensor:
        if not self.fitted:
            raise RuntimeError("ProKeR: fit_features must run before scoring.")
        f = image_features.double()
        return (f @ self.text_features.t() + sphere_rbf(f, self.support, self.beta) @ self.coef).float()

    # ----------------------------------------------------------------- fitting
    @torch.no_grad()
    def fit_features(self, clip: FrozenCLIP, data: FitFeatures) -> dict[str, Any]:
        device = self.support.device
        train, labels = data.train, data.train_labels
        if train.dim() == 3:  # K cached views: every view is a sample (the reference's augmented passes)
            labels = labels.repeat(train.shape[0])
            train = train.reshape(-1, train.shape[-1])
        support = F.normalize(train.double(), dim=-1).to(device)
        labels = labels.to(device)
        onehot = F.one_hot(labels, len(self.classnames)).double()
        residual = onehot - support @ self.text_features.t()
        beta, lmbda = self.init_beta, self.init_lambda
        if self.search:
            beta, lmbda = self._search(support, residual, data)
        self.beta_lambda = torch.tensor([beta, lmbda], dtype=torch.float64, device=device)
        self.support, self.dual_coef = support, dual_coefficients(support, residual, beta, lmbda)
        self.fitted_classnames = list(self.classnames)
        self._build_coef()
        return self.chosen()

    def _search(self, support: torch.Tensor, residual: torch.Tensor, data: FitFeatures) -> tuple[float, float]:
        """beta and lambda on the few-shot val split (never test data)."""
        if data.val_labels.numel() == 0:
            raise ConfigError("ProKeR: the few-shot val split is empty; beta and lambda are chosen on it (set "
                              "method.learner.search=false to keep method.learner.beta and lmbda).")
        val = F.normalize(data.val.double(), dim=-1).to(support.device)
        val_labels = data.val_labels.to(support.device)
        beta, lmbda, correct = search_beta_lambda(
            support, residual, val, val @ self.text_features.t(), val_labels, linspace_grid(self.beta_grid),
            linspace_grid(self.lambda_grid), (self.init_beta, self.init_lambda))
        self.val_acc = 100.0 * correct / val_labels.numel()
        return beta, lmbda

    def chosen(self) -> dict[str, Any]:
        out: dict[str, Any] = {"proker_beta": self.beta, "proker_lambda": self.lmbda}
        if self.val_acc is not None:
            out["proker_val_acc"] = self.val_acc
        return out

    # ----------------------------------------------------------------- what the record says
    def tuned_values(self) -> dict[str, str]:
        return {"beta": "few-shot val", "lambda": "few-shot val"} if self.search else {}

    def fitted_values(self) -> dict[str, Any]:
        return self.chosen()

    def summary(self) -> dict[str, Any]:
        return {**super().summary(), "proker_searched": self.search}

    def notes(self) -> list[str]:
        how = (f"chosen on the few-shot val split from linspace grids beta {self.beta_grid}, lambda "
               f"{self.lambda_grid}" if self.search else "fixed (search=false, no validation data read)")
        return [*super().notes(),
                f"ProKeR: beta={self.beta:.6g}, lambda={self.lmbda:.6g} {how}; classes without training features "
                "are scored by zero-shot CLIP alone"]


def grid_problems(beta_grid: Sequence[float], lambda_grid: Sequence[float], beta: float, lmbda: float) -> list[str]:
    """What a learner node's grids and values must satisfy: [start, stop, count >= 1], every beta >= 0, lambda > 0."""
    found = []
    for name, spec, least in (("beta_grid", beta_grid, 0.0), ("lambda_grid", lambda_grid, 1e-300)):
        values = list(spec)
        if len(values) != 3 or int(values[2]) < 1 or min(values[0], values[1]) < least:
            found.append(f"method.learner.{name}={values}: [start, stop, count] with count >= 1 and "
                         f"{'values >= 0' if name == 'beta_grid' else 'values > 0'}.")
    if beta < 0:
        found.append(f"method.learner.beta={beta}: must be >= 0.")
    if lmbda <= 0:
        found.append(f"method.learner.lmbda={lmbda}: must be > 0.")
    return found
