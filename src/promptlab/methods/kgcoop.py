"""KgCoOp: CoOp plus a knowledge-guided term that keeps learned class embeddings near the hand-written
ones (Yao et al., CVPR 2023): loss = CE + lambda * (1 - mean_c cos(w_c, w_c^clip)), with w_c^clip the
zero-shot embedding of the dataset's template. lambda = 0 is exactly CoOp.
"""

from __future__ import annotations

import torch

from promptlab.methods.coop import CoOpPrompts
from promptlab.methods.zeroshot import template_embeddings
from promptlab.models.frozen import FrozenCLIP


class KgCoOpPrompts(CoOpPrompts):
    def __init__(
        self,
        clip: FrozenCLIP,
        templates: list[str],
        kg_weight: float = 8.0,
        n_ctx: int = 4,
        ctx_init: str | None = "a photo of a",
        **coop_kwargs,
    ) -> None:
        super().__init__(clip, n_ctx=n_ctx, ctx_init=ctx_init, **coop_kwargs)
        self.templates = list(templates)
        self.kg_weight = kg_weight

    def set_classnames(self, clip: FrozenCLIP, classnames: list[str]) -> None:
        super().set_classnames(clip, classnames)
        self.register_buffer("zeroshot_features", template_embeddings(clip, self.templates, classnames),
                             persistent=False)

    def regularization(self, clip: FrozenCLIP, text_features: torch.Tensor) -> torch.Tensor | None:
        if self.kg_weight == 0:
            return None
        cosine = (text_features * self.zeroshot_features).sum(dim=-1)
        return self.kg_weight * (1.0 - cosine.mean())
