"""KgCoOp: CoOp plus a knowledge-guided term that keeps learned class embeddings near the hand-written
ones (Yao et al., CVPR 2023): loss = CE + lambda * (1 - mean_c cos(w_c, w_c^clip)), with w_c^clip the
zero-shot embedding of the hand-written prompts (prompts.templates / prompts.descriptions, the dataset's
template by default). lambda = 0 is exactly CoOp.
"""

from __future__ import annotations

import torch

from promptlab.methods.coop import CoOpPrompts
from promptlab.methods.prompts import TextPrompts
from promptlab.models.frozen import FrozenCLIP


class KgCoOpPrompts(CoOpPrompts):
    def __init__(
        self,
        clip: FrozenCLIP,
        templates: list[str],
        kg_weight: float = 8.0,
        n_ctx: int = 4,
        ctx_init: str | None = "a photo of a",
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

    def regularization(self, clip: FrozenCLIP, text_features: torch.Tensor) -> torch.Tensor | None:
        if self.kg_weight == 0:
            return None
        cosine = (text_features * self.zeroshot_features).sum(dim=-1)
        return self.kg_weight * (1.0 - cosine.mean())
