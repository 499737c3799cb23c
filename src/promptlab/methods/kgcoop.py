"""KgCoOp: CoOp plus a knowledge-guided term that keeps learned class embeddings near the hand-written
ones (Yao et al., CVPR 2023): loss = CE + lambda * (1 - mean_c cos(w_c, w_c^clip)), with w_c^clip the
zero-shot embedding of the hand-written prompts (prompts.templates / prompts.descriptions, the dataset's
template by default). lambda = 0 is exactly CoOp.

Defaults (KgCoOpMethodConf, the authors' scripts): lambda 8.0, 4 tokens from "a photo of a", 100 epochs, batch
128, SGD lr 0.002 with warm-up then cosine.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from promptlab.config.method import (
    II,
    PROMPT_DESCRIPTIONS_SHA256,
    PROMPT_TEMPLATES,
    MethodConf,
    MethodLoaderConf,
    OptimConf,
)
from promptlab.methods.base import Loss, TrainingStep
from promptlab.methods.coop import CoOpLearnerConf, CoOpPrompts
from promptlab.methods.prompts import TextPrompts
from promptlab.methods.registry import register_method
from promptlab.models.frozen import FrozenCLIP


@dataclass
class KgCoOpLearnerConf(CoOpLearnerConf):
    _target_: str = "promptlab.methods.KgCoOpPrompts"
    n_ctx: int = 4
    ctx_init: str | None = "a photo of a"
    templates: list[str] = II(PROMPT_TEMPLATES)
    descriptions: str | None = II("prompts.descriptions")
    descriptions_sha256: str | None = II(PROMPT_DESCRIPTIONS_SHA256)
    combine_templates: bool = II("prompts.combine")
    kg_weight: float = 8.0


@dataclass
class KgCoOpMethodConf(MethodConf):
    name: str = "kgcoop"
    display_name: str = "KgCoOp"
    learner: KgCoOpLearnerConf = field(default_factory=KgCoOpLearnerConf)
    optim: OptimConf = field(default_factory=lambda: OptimConf(epochs=100, reference_batch_size=128))
    loader: MethodLoaderConf = field(default_factory=lambda: MethodLoaderConf(batch_size=128))


@register_method(KgCoOpMethodConf)
class KgCoOpPrompts(CoOpPrompts):
    text_prompts: TextPrompts  # always set by the constructor
    zeroshot_features: torch.Tensor  # buffer: the frozen targets of the current class list
    def __init__(
        self,
        clip: FrozenCLIP,
        templates: list[str],
        kg_weight: float = KgCoOpLearnerConf.kg_weight,
        n_ctx: int = KgCoOpLearnerConf.n_ctx,
        ctx_init: str | None = KgCoOpLearnerConf.ctx_init,
        descriptions: str | None = None,
        descriptions_sha256: str | None = None,
        combine_templates: bool = False,
        **coop_kwargs,
    ) -> None:
        super().__init__(clip, n_ctx=n_ctx, ctx_init=ctx_init, **coop_kwargs)
        # The frozen targets are the zero-shot classifier's embeddings, from the same prompt sources.
        self.text_prompts = TextPrompts(templates, descriptions, descriptions_sha256, combine_templates)
        self.templates = self.text_prompts.templates
        self.kg_weight = kg_weight

    def set_classnames(self, clip: FrozenCLIP, classnames: list[str]) -> None:
        super().set_classnames(clip, classnames)
        self.register_buffer("zeroshot_features", self.text_prompts.class_embeddings(clip, classnames),
                             persistent=False)

    def training_loss(self, clip: FrozenCLIP, step: TrainingStep) -> Loss:
        loss = super().training_loss(clip, step)
        assert step.text_features is not None
        term = self.regularization(clip, step.text_features)
        if term is not None:
            loss.terms["kg"] = term
        return loss

    def regularization(self, clip: FrozenCLIP, text_features: torch.Tensor) -> torch.Tensor | None:
        """lambda * (1 - mean_c cos(w_c, w_c^clip)); None at lambda 0 (exactly CoOp)."""
        if self.kg_weight == 0:
            return None
        cosine = (text_features * self.zeroshot_features).sum(dim=-1)
        return self.kg_weight * (1.0 - cosine.mean())
