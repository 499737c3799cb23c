"""Tip-Adapter and Tip-Adapter-F (Zhang et al., ECCV 2022): a key-value cache of the few-shot training set
added to zero-shot CLIP.

    logits = 100 f W^T + alpha * exp(-beta * (1 - f K^T)) V

f: normalised image features [B, D]; W: the zero-shot classifier of the dataset's templates [C, D];
K: cache keys, the normalised training features [NK, D] (the mean over cached views when there are
several, as the reference's 10 augmented passes); V: their one-hot labels [NK, C]. alpha and beta are
searched on the few-shot val split with the reference's grid. Tip-Adapter-F makes K a trainable
linear layer, trained with alpha and beta at their init values, then searches them on val.

Scoring another class list (novel classes, other datasets): V's columns follow the classes by name, so
a class without keys gets no cache term and is scored by the zero-shot classifier alone; for novel
classes Tip-Adapter is exactly zero-shot CLIP (docs/reference.md, "Tip-Adapter").

Defaults (TipAdapterMethodConf): the reference's grid (learner.search_scale / search_step, [beta, alpha]),
per-dataset scales in conf/method_dataset. The reference averages 10 augmented views per image:
method.loader.augment=coop train_cache=on train_views=10 comes close (promptlab's crop scale is CoOp's
0.08-1, the reference's 0.5-1). Tip-Adapter-F's preset is conf/method/tip_adapter_f.yaml (AdamW).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from promptlab.config.method import II, PROMPT_TEMPLATES, Augment, MethodConf, MethodLoaderConf, OptimConf, ScheduleUnit
from promptlab.errors import ConfigError
from promptlab.methods.base import FitFeatures, PromptLearner
from promptlab.methods.registry import register_method
from promptlab.methods.zeroshot import template_embeddings
from promptlab.models.frozen import FrozenCLIP

#: Tip-Adapter's fixed logit scale of the zero-shot term (CLIP's trained scale, 100).
CLIP_SCALE = 100.0


def search_grid(scale: float, steps: int) -> list[float]:
    """The reference's grid: 0.1 + i * (scale - 0.1) / steps for i = 0 .. steps - 1 (the end excluded)."""
    return [0.1 + i * (scale - 0.1) / steps for i in range(steps)]


#: The reference's ImageNet / OxfordPets search: scales and step counts, [beta, alpha].
SEARCH_SCALE, SEARCH_STEP = (7.0, 3.0), (200, 20)


@dataclass
class TipAdapterLearnerConf:
    """Training-free cache model (Tip-Adapter). search_scale / search_step are [beta, alpha], the reference's
    order; the defaults are its ImageNet / OxfordPets values (per-dataset ones in conf/method_dataset)."""

    _target_: str = "promptlab.methods.TipAdapter"
    templates: list[str] = II(PROMPT_TEMPLATES)  # the zero-shot part follows prompts.templates
    init_alpha: float = 1.17
    init_beta: float = 1.0
    search: bool = True  # alpha/beta grid search on the few-shot val split
    search_scale: list[float] = field(default_factory=lambda: list(SEARCH_SCALE))
    search_step: list[int] = field(default_factory=lambda: list(SEARCH_STEP))


@dataclass
class TipAdapterFLearnerConf(TipAdapterLearnerConf):
    """Tip-Adapter-F: the cache keys become a trainable linear layer. select_on_test=true keeps the epoch with
    the best TEST accuracy (the reference's choice, Tip-Adapter#11); the default selects on the val split."""

    _target_: str = "promptlab.methods.TipAdapterF"
    select_on_test: bool = False


@dataclass
class TipAdapterMethodConf(MethodConf):
    name: str = "tip_adapter"
    display_name: str = "Tip-Adapter"
    learner: TipAdapterLearnerConf = field(default_factory=TipAdapterLearnerConf)
    optim: OptimConf = field(default_factory=lambda: OptimConf(epochs=0))
    # One cached view per image; the reference's 10 averaged crops: augment=coop train_cache=on train_views=10.
    loader: MethodLoaderConf = field(default_factory=lambda: MethodLoaderConf(augment=Augment.none))


@dataclass
class TipAdapterFMethodConf(MethodConf):
    """The reference's training: AdamW lr 1e-3 eps 1e-4 (conf/method/tip_adapter_f.yaml picks adamw), cosine per
    iteration, 20 epochs, batch 256."""

    name: str = "tip_adapter_f"
    display_name: str = "Tip-Adapter-F"
    learner: TipAdapterFLearnerConf = field(default_factory=TipAdapterFLearnerConf)
    optim: OptimConf = field(default_factory=lambda: OptimConf(
        lr=1e-3, epochs=20, warmup_epochs=0, reference_batch_size=256, schedule_unit=ScheduleUnit.step))
    loader: MethodLoaderConf = field(default_factory=lambda: MethodLoaderConf(batch_size=256, augment=Augment.none))


@register_method(TipAdapterMethodConf)
class TipAdapter(PromptLearner):
    trainable = False
    direct_logits = True
    fits_features = True
    # Buffers: [alpha, beta]; the cache (keys, labels, one-hot values over the class list); the zero-shot classifier.
    alpha_beta: torch.Tensor
    cache_keys: torch.Tensor
    cache_labels: torch.Tensor
    cache_values: torch.Tensor
    text_features: torch.Tensor

    def __init__(
        self,
        clip: FrozenCLIP,
        templates: Sequence[str],
        init_alpha: float = TipAdapterLearnerConf.init_alpha,
        init_beta: float = TipAdapterLearnerConf.init_beta,
        search: bool = TipAdapterLearnerConf.search,
        search_scale: Sequence[float] = SEARCH_SCALE,
        search_step: Sequence[int] = SEARCH_STEP,
    ) -> None:
        super().__init__()
        if len(search_scale) != 2 or len(search_step) != 2:
            raise ConfigError("method.learner.search_scale and search_step are pairs [beta, alpha].")
        self.templates = list(templates)
        self.init_alpha, self.init_beta = float(init_alpha), float(init_beta)
        # A buffer, so that a saved Tip-Adapter-F (prompt_learner.pt) keeps the alpha and beta it chose.
        self.register_buffer("alpha_beta", torch.tensor([self.init_alpha, self.init_beta], dtype=torch.float64))
        self.search = search
        self.search_scale = [float(s) for s in search_scale]
        self.search_step = [int(s) for s in search_step]
        self.cache_classnames: list[str] = []
        self.register_buffer("cache_keys", torch.zeros(0, clip.embed_dim))
        self.register_buffer("cache_labels", torch.zeros(0, dtype=torch.long))

    @classmethod
    def config_problems(cls, learner: Any, count_tokens: Callable[[str], int] | None = None) -> list[str]:
        found = []
        scale, steps = list(learner.search_scale), list(learner.search_step)
        if len(scale) != 2 or len(steps) != 2 or any(s <= 0.1 for s in scale) or any(n < 1 for n in steps):
            found.append(f"method.learner.search_scale={scale} / search_step={steps}: pairs [beta, alpha] with each "
                         "scale > 0.1 (the grid starts at 0.1) and each step count >= 1.")
        if learner.init_alpha < 0 or learner.init_beta < 0:
            found.append(f"method.learner.init_alpha={learner.init_alpha} / init_beta={learner.init_beta}: "
                         "must be >= 0.")
        return found

    @property
    def alpha(self) -> float:
        return float(self.alpha_beta[0])

    @alpha.setter
    def alpha(self, value: float) -> None:
        self.alpha_beta[0] = float(value)

    @property
    def beta(self) -> float:
        return float(self.alpha_beta[1])

    @beta.setter
    def beta(self, value: float) -> None:
        self.alpha_beta[1] = float(value)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # noqa: ANN001
        # A saved cache has its own size: shape the buffers (and the adapter) to it before loading. The cache
        # belongs to the class list the learner is loaded with (its training classes, see engine.build).
        keys = state_dict.get(prefix + "cache_keys")
        if keys is not None:
            self.set_cache(torch.zeros_like(keys, device=self.cache_keys.device),
                           torch.zeros(keys.shape[0], dtype=torch.long, device=self.cache_keys.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if keys is not None:
            self._build_values()

    # ----------------------------------------------------------------- class lists
    def set_classnames(self, clip: FrozenCLIP, classnames: list[str]) -> None:
        self.classnames = list(classnames)
        device = self.cache_keys.device
        self.register_buffer("text_features", template_embeddings(clip, self.templates, classnames).to(device),
                             persistent=False)
        self._build_values()

    def _build_values(self) -> None:
        # One-hot values over the current class list, matched by name: classes without keys get a zero column.
        column = {name: i for i, name in enumerate(self.classnames)}
        values = torch.zeros(self.cache_labels.shape[0], len(self.classnames), device=self.cache_keys.device)
        for row, label in enumerate(self.cache_labels.tolist()):
            target = column.get(self.cache_classnames[label])
            if target is not None:
                values[row, target] = 1.0
        self.register_buffer("cache_values", values, persistent=False)

    # ----------------------------------------------------------------- scoring
    def forward(self, clip: FrozenCLIP, image_features: torch.Tensor | None = None) -> torch.Tensor:
        return self.text_features  # the zero-shot classifier (diagnostics); scoring is `logits`

    def affinity(self, image_features: torch.Tensor) -> torch.Tensor:
        """f K^T, [B, NK]."""
        return image_features @ self.cache_keys.t()

    def cache_logits(self, image_features: torch.Tensor, beta: float) -> torch.Tensor:
        return torch.exp(-beta * (1.0 - self.affinity(image_features))) @ self.cache_values

    def logits(self, clip: FrozenCLIP, image_features: torch.Tensor) -> torch.Tensor:
        zero_shot = CLIP_SCALE * image_features @ self.text_features.t()
        if self.cache_values.shape[0] == 0 or self.alpha == 0:
            return zero_shot  # alpha = 0 (or no cache) is exactly zero-shot CLIP
        return zero_shot + self.alpha * self.cache_logits(image_features, self.beta)

    # ----------------------------------------------------------------- fitting
    def fit_features(self, clip: FrozenCLIP, data: FitFeatures) -> dict[str, Any]:
        train = data.train.mean(dim=0) if data.train.dim() == 3 else data.train  # average the cached views
        device = self.cache_keys.device
        self.set_cache(F.normalize(train.float(), dim=-1).to(device), data.train_labels.to(device))
        return self.search_hyperparameters(data) if self.search else self.chosen()

    def set_cache(self, keys: torch.Tensor, labels: torch.Tensor) -> None:
        self.cache_keys, self.cache_labels = keys, labels.long()
        self.cache_classnames = list(self.classnames)
        self._build_values()

    def chosen(self) -> dict[str, Any]:
        return {"tip_alpha": self.alpha, "tip_beta": self.beta}

    def tuned_values(self) -> dict[str, str]:
        return {"alpha": "few-shot val", "beta": "few-shot val"} if self.search else {}

    def fitted_values(self) -> dict[str, Any]:
        return self.chosen()

    @torch.no_grad()
    def search_hyperparameters(self, data: FitFeatures) -> dict[str, Any]:
        """The reference's grid over beta (outer) and alpha (inner), keeping the first strict maximum of val
        accuracy; the val split only."""
        if data.val_labels.numel() == 0:
            raise ConfigError("Tip-Adapter: the few-shot val split is empty; alpha/beta are searched on it "
                              "(set method.learner.search=false to keep init_alpha/init_beta).")
        device = self.cache_keys.device
        val, labels = data.val.float().to(device), data.val_labels.to(device)
        zero_shot = CLIP_SCALE * val @ self.text_features.t()
        best, best_alpha, best_beta = -1, self.init_alpha, self.init_beta
        alpha_values = search_grid(self.search_scale[1], self.search_step[1])  # python floats: recorded exactly
        alphas = torch.tensor(alpha_values, device=device)
        for beta in search_grid(self.search_scale[0], self.search_step[0]):
            cache = self.cache_logits(val, beta)
            # All alphas of this beta at once: [A, M, C] -> correct counts [A]; the first strict maximum wins.
            logits = zero_shot.unsqueeze(0) + alphas.view(-1, 1, 1) * cache.unsqueeze(0)
            correct = (logits.argmax(dim=-1) == labels).sum(dim=-1)
            for alpha, count in zip(alpha_values, correct.tolist(), strict=True):
                if count > best:
                    best, best_alpha, best_beta = count, alpha, beta
        self.alpha, self.beta = best_alpha, best_beta
        return {**self.chosen(), "tip_val_acc": 100.0 * best / labels.numel()}


@register_method(TipAdapterFMethodConf)
class TipAdapterF(TipAdapter):
    """Tip-Adapter-F: the cache keys are the weight of a trainable `Linear(D, NK)` initialised with them."""

    trainable = True
    selects_epoch = True

    def __init__(self, clip: FrozenCLIP, templates: Sequence[str],
                 select_on_test: bool = TipAdapterFLearnerConf.select_on_test, **tip_adapter: Any) -> None:
        super().__init__(clip, templates, **tip_adapter)
        self.select_on_test = select_on_test
        self.adapter: nn.Linear | None = None

    @property
    def selection_split(self) -> str:
        # The reference keeps the epoch with the best test accuracy (select_on_test=true reproduces it).
        return "test" if self.select_on_test else "val"

    def affinity(self, image_features: torch.Tensor) -> torch.Tensor:
        if self.adapter is None:
            return super().affinity(image_features)
        return self.adapter(image_features)

    def set_cache(self, keys: torch.Tensor, labels: torch.Tensor) -> None:
        super().set_cache(keys, labels)
        self.adapter = nn.Linear(keys.shape[1], keys.shape[0], bias=False).to(keys.device)
        with torch.no_grad():
            self.adapter.weight.copy_(keys)

    def fit_features(self, clip: FrozenCLIP, data: FitFeatures) -> dict[str, Any]:
        # Training runs with alpha and beta at their init values (the reference); the search follows it.
        train = data.train.mean(dim=0) if data.train.dim() == 3 else data.train
        device = self.cache_keys.device
        self.set_cache(F.normalize(train.float(), dim=-1).to(device), data.train_labels.to(device))
        self.alpha, self.beta = self.init_alpha, self.init_beta
        return self.chosen()

    def finish_fit(self, clip: FrozenCLIP, data: FitFeatures) -> dict[str, Any]:
        return self.search_hyperparameters(data) if self.search else self.chosen()
