"""Linear probe: L2-regularised logistic regression on frozen image features (CLIP paper; CoOp's lpclip/).

The regularisation strength C is chosen on the few-shot validation split exactly as the reference's
search (docs/reference.md, "Linear probe"): the grid 1e6 .. 1e-6 (first maximum in grid order), then
`search_steps` bisection steps in log10 space over [C/10, 10C], each fitting both ends and keeping the
better one (a tie keeps the left, smaller C). The classifier of the last kept end is the result. Only
train and val features are ever given to `fit_features`; the test set is scored afterwards.

Defaults (LinearProbeMethodConf): scikit-learn lbfgs, max_iter 1000, on L2-normalised features;
learner.normalize=false uses the raw features, as the reference. It cannot score classes it was not fitted
on: base-to-novel records novel as not applicable, with that reason.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from promptlab.config.method import Augment, MethodConf, MethodLoaderConf, OptimConf
from promptlab.errors import ConfigError
from promptlab.methods.base import FitFeatures, PromptLearner
from promptlab.methods.registry import register_method
from promptlab.models.frozen import FrozenCLIP

REFERENCE_GRID = (1e6, 1e4, 1e2, 1.0, 1e-2, 1e-4, 1e-6)


@dataclass
class LinearProbeLearnerConf:
    """Logistic regression on frozen image features, C searched on the few-shot val split (CoOp lpclip/)."""

    _target_: str = "promptlab.methods.LinearProbe"
    normalize: bool = True  # false: un-normalised features, as the reference
    c_grid: list[float] = field(default_factory=lambda: list(REFERENCE_GRID))
    search_steps: int = 8  # log10 bisection steps around the best grid value
    max_iter: int = 1000


@dataclass
class LinearProbeMethodConf(MethodConf):
    name: str = "linear_probe"
    display_name: str = "Linear probe"
    learner: LinearProbeLearnerConf = field(default_factory=LinearProbeLearnerConf)
    optim: OptimConf = field(default_factory=lambda: OptimConf(epochs=0))  # closed-form fit, no epochs
    # The reference (CoOp lpclip/) encodes every split with the test transform.
    loader: MethodLoaderConf = field(default_factory=lambda: MethodLoaderConf(augment=Augment.none))


def search_c(
    score: Callable[[float], float], grid: Sequence[float] = REFERENCE_GRID, steps: int = 8
) -> tuple[float, list[tuple[float, float]]]:
    """The reference's C search: returns (chosen C, every (C, val score) evaluated, in order).

    `score(c)` fits at C = c and returns the validation accuracy. Kept free of sklearn so that the rule is
    tested on its own.
    """
    trace: list[tuple[float, float]] = []

    def scored(c: float) -> float:
        value = score(c)
        trace.append((c, value))
        return value

    grid_scores = [scored(c) for c in grid]
    best = grid[int(np.argmax(grid_scores))]  # np.argmax: the first maximum, in grid order
    left, right = best / 10.0, best * 10.0
    chosen = best
    for _ in range(steps):
        acc_left, acc_right = scored(left), scored(right)
        log_left, log_right = math.log10(left), math.log10(right)
        if acc_left < acc_right:
            chosen = right
            left, right = 10 ** (0.5 * (log_left + log_right)), right
        else:  # a tie keeps the left (smaller C) end, as the reference
            chosen = left
            left, right = left, 10 ** (0.5 * (log_left + log_right))
    return chosen, trace


@register_method(LinearProbeMethodConf)
class LinearProbe(PromptLearner):
    """A linear classifier over the training classes; it has no text side and cannot score other classes."""

    trainable = False
    direct_logits = True
    fits_features = True
    scores_unseen_classes = False
    unseen_classes_reason = (
        "a linear probe has one weight vector per class it was fitted on and cannot score other classes"
    )
    weight: torch.Tensor  # buffers, zero-sized until fitted
    bias: torch.Tensor

    def __init__(
        self,
        clip: FrozenCLIP,
        normalize: bool = LinearProbeLearnerConf.normalize,
        c_grid: Sequence[float] = REFERENCE_GRID,
        search_steps: int = LinearProbeLearnerConf.search_steps,
        max_iter: int = LinearProbeLearnerConf.max_iter,
    ) -> None:
        super().__init__()
        self.normalize = normalize
        # The reference probes un-normalised features; the data module reads this to encode them so.
        self.normalize_features = normalize
        self.c_grid = [float(c) for c in c_grid]
        self.fit_info: dict[str, Any] = {}  # what fit_features chose (the record's `fit`)
        self.search_steps = search_steps
        self.max_iter = max_iter
        self.fitted_classnames: list[str] = []
        # Zero-sized until fitted: the learner composes and moves like any other before its fit.
        self.register_buffer("weight", torch.zeros(0, clip.embed_dim))
        self.register_buffer("bias", torch.zeros(0))

    @classmethod
    def config_problems(cls, learner: Any, count_tokens: Callable[[str], int] | None = None) -> list[str]:
        found = []
        if not learner.c_grid or any(c <= 0 for c in learner.c_grid):
            found.append(f"method.learner.c_grid={list(learner.c_grid)}: needs at least one C, every C > 0.")
        if learner.search_steps < 0 or learner.max_iter < 1:
            found.append(f"method.learner.search_steps={learner.search_steps} / max_iter={learner.max_iter}: "
                         "search_steps >= 0 and max_iter >= 1.")
        return found

    def set_classnames(self, clip: FrozenCLIP, classnames: list[str]) -> None:
        if self.fitted_classnames and list(classnames) != self.fitted_classnames:
            raise ConfigError(f"linear probe: {self.unseen_classes_reason} (fitted on {len(self.fitted_classnames)} "
                              f"classes, asked to score {len(classnames)}).")
        self.classnames = list(classnames)

    def forward(self, clip: FrozenCLIP, image_features: torch.Tensor | None = None) -> torch.Tensor:
        # The "class embeddings" of a probe are its normalised weight vectors (used by diagnostics only).
        if self.weight.shape[0] == 0:
            return torch.zeros(len(self.classnames), clip.embed_dim, device=self.weight.device)
        return F.normalize(self.weight, dim=-1)

    def logits(self, clip: FrozenCLIP, image_features: torch.Tensor) -> torch.Tensor:
        if self.weight.shape[0] == 0:
            raise RuntimeError("linear probe: fit_features must run before scoring.")
        return image_features.to(self.weight.dtype) @ self.weight.t() + self.bias

    def _prepare(self, features: torch.Tensor) -> np.ndarray:
        if features.dim() == 3:  # K cached views: their mean stands for the image
            features = features.mean(dim=0)
        features = features.double()
        if self.normalize:
            features = F.normalize(features, dim=-1)
        return features.cpu().numpy()

    def fit_features(self, clip: FrozenCLIP, data: FitFeatures) -> dict[str, Any]:
        try:
            from sklearn.linear_model import LogisticRegression
        except ImportError as err:  # a declared dependency; a clear message if an environment lacks it
            raise ConfigError("method=linear_probe needs scikit-learn: pip install scikit-learn") from err
        x_train, y_train = self._prepare(data.train), data.train_labels.cpu().numpy()
        x_val, y_val = self._prepare(data.val), data.val_labels.cpu().numpy()
        if len(y_val) == 0:
            raise ConfigError("linear probe: the few-shot val split is empty; C is chosen on it (dataset val split).")
        fitted: dict[float, Any] = {}

        def fit(c: float) -> Any:
            if c not in fitted:
                fitted[c] = LogisticRegression(solver="lbfgs", max_iter=self.max_iter, C=c).fit(x_train, y_train)
            return fitted[c]

        def val_accuracy(c: float) -> float:
            return float((fit(c).predict(x_val) == y_val).mean())

        chosen, trace = search_c(val_accuracy, self.c_grid, self.search_steps)
        self._store(fit(chosen), len(self.classnames))
        self.fitted_classnames = list(self.classnames)
        self.fit_info = {"linear_probe_c": chosen, "linear_probe_val_acc": 100.0 * dict(trace)[chosen]}
        return dict(self.fit_info)

    def fitted_values(self) -> dict[str, Any]:
        return dict(self.fit_info)

    def tuned_values(self) -> dict[str, str]:
        return {"C": "few-shot val"}  # always searched on the few-shot val split (the reference's rule)

    def _store(self, clf: Any, n_classes: int) -> None:
        coef = torch.as_tensor(clf.coef_, dtype=torch.float64)
        intercept = torch.as_tensor(clf.intercept_, dtype=torch.float64)
        if coef.shape[0] == 1 and len(clf.classes_) == 2:
            # Binary problems keep one decision function z (class 1 when z > 0): scores (-z/2, z/2) rank alike.
            coef = torch.cat([-coef / 2, coef / 2])
            intercept = torch.cat([-intercept / 2, intercept / 2])
        # Classes absent from the training features (none under few-shot sampling) can never be predicted.
        weight = torch.zeros(n_classes, coef.shape[1], dtype=torch.float64)
        bias = torch.full((n_classes,), float("-inf"), dtype=torch.float64)
        index = torch.as_tensor(clf.classes_, dtype=torch.long)
        weight[index], bias[index] = coef, intercept
        device = self.weight.device
        self.weight, self.bias = weight.to(device), bias.to(device)
