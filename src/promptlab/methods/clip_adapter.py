"""CLIP-Adapter (Gao et al., "CLIP-Adapter: Better Vision-Language Models with Feature Adapters", IJCV 2023;
reference gaopengcuhk/CLIP-Adapter, clip_adapter.py): a bottleneck MLP on the frozen image feature, blended with
it by a residual ratio, scored against the frozen zero-shot text classifier.

    A(x) = ReLU(W2 ReLU(W1 x))      W1: [D/r, D], W2: [D, D/r], no biases (r = reduction, 4)
    x'   = ratio A(x) + (1 - ratio) x                          (ratio 0.2)
    logits = exp(logit_scale) normalise(x') T^T

T: the normalised text embeddings of the hand-written template (dataset.templates: CoOp's per-dataset
template, the reference's CUSTOM_TEMPLATES). Only W1 and W2 train, by cross-entropy on the few-shot training
classes; the reference runs inside CoOp's trainer, so its schedule is CoOp's (SGD lr 0.002, cosine, one warm-up
epoch, batch 32, the dataset's epochs by shots), which are this framework's defaults. The adapter acts on image
features only, so any class list (novel classes, other datasets) is scored with its own text embeddings.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from promptlab.config.method import II, PROMPT_TEMPLATES, MethodConf
from promptlab.errors import ConfigError
from promptlab.methods.base import PromptLearner
from promptlab.methods.prompts import TextPrompts
from promptlab.methods.registry import register_method
from promptlab.models.frozen import FrozenCLIP


@dataclass
class CLIPAdapterLearnerConf:
    """The visual adapter of the reference: reduction 4, residual ratio 0.2."""

    _target_: str = "promptlab.methods.clip_adapter.CLIPAdapter"
    templates: list[str] = II(PROMPT_TEMPLATES)  # the frozen text side follows prompts.templates
    reduction: int = 4
    ratio: float = 0.2


@dataclass
class CLIPAdapterMethodConf(MethodConf):
    # optim and loader: the shared defaults, CoOp's schedule and augmentation (the reference's trainer).
    name: str = "clip_adapter"
    display_name: str = "CLIP-Adapter"
    learner: CLIPAdapterLearnerConf = field(default_factory=CLIPAdapterLearnerConf)


class Adapter(nn.Module):
    """The reference's bottleneck: Linear(D, D/r) - ReLU - Linear(D/r, D) - ReLU, no biases."""

    def __init__(self, dim: int, reduction: int) -> None:
        super().__init__()
        self.down = nn.Linear(dim, dim // reduction, bias=False)
        self.up = nn.Linear(dim // reduction, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.up(F.relu(self.down(x))))


@register_method(CLIPAdapterMethodConf)
class CLIPAdapter(PromptLearner):
    """Zero-shot text classifier, frozen; a residual adapter on the image features, trained."""

    direct_logits = True  # the adapter changes the image feature, so the learner scores images itself
    context_args = ("init_seed",)
    text_features: torch.Tensor  # a buffer (set_classnames), declared for the type checker
    text_prompts: TextPrompts

    def __init__(
        self,
        clip: FrozenCLIP,
        templates: Sequence[str],
        reduction: int = CLIPAdapterLearnerConf.reduction,
        ratio: float = CLIPAdapterLearnerConf.ratio,
        init_seed: int | None = None,
    ) -> None:
        super().__init__()
        problems = self.config_problems(CLIPAdapterLearnerConf(templates=list(templates), reduction=reduction,
                                                               ratio=ratio))
        if clip.embed_dim // max(reduction, 1) < 1:
            problems.append(f"method.learner.reduction={reduction}: leaves no hidden unit of the {clip.embed_dim}-d "
                            "feature.")
        if problems:
            raise ConfigError(" ".join(problems))
        self.text_prompts = TextPrompts(list(templates))
        self.templates = self.text_prompts.templates
        self.reduction, self.ratio = int(reduction), float(ratio)
        # PyTorch's default Linear init (the reference's), drawn from the run's init seed when it has one.
        with torch.random.fork_rng(devices=[]):
            if init_seed is not None:
                torch.manual_seed(init_seed)
            self.adapter = Adapter(clip.embed_dim, self.reduction)

    @classmethod
    def config_problems(cls, learner: Any, count_tokens: Callable[[str], int] | None = None) -> list[str]:
        found = []
        if not 0.0 <= float(learner.ratio) <= 1.0:
            found.append(f"method.learner.ratio={learner.ratio}: the residual ratio is in [0, 1].")
        if int(learner.reduction) < 1:
            found.append(f"method.learner.reduction={learner.reduction}: must be >= 1.")
        return found

    def set_classnames(self, clip: FrozenCLIP, classnames: list[str]) -> None:
        self.classnames = list(classnames)
        device = self.adapter.down.weight.device
        text = self.text_prompts.class_embeddings(clip, classnames).float().to(device)
        self.register_buffer("text_features", text, persistent=False)

    def forward(self, clip: FrozenCLIP, image_features: torch.Tensor | None = None) -> torch.Tensor:
        return self.text_features  # the frozen zero-shot classifier (diagnostics); scoring is `logits`

    def adapted(self, image_features: torch.Tensor) -> torch.Tensor:
        """ratio A(x) + (1 - ratio) x, normalised. The adapter is positively homogeneous (no biases, ReLU), so
        the result does not depend on the scale of x: normalised cached features score as the reference's raw
        ones, and the learner keeps the shared normalised feature cache."""
        x = image_features.float()
        return F.normalize(self.ratio * self.adapter(x) + (1.0 - self.ratio) * x, dim=-1)

    def logits(self, clip: FrozenCLIP, image_features: torch.Tensor) -> torch.Tensor:
        return clip.logit_scale() * self.adapted(image_features) @ self.text_features.t()

    def summary(self) -> dict[str, Any]:
        out = super().summary()
        out |= {"adapter_ratio": self.ratio, "adapter_reduction": self.reduction,
                "adapter_hidden": self.adapter.down.out_features}
        return out
