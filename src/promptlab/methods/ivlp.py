"""IVLP: independent deep prompts in the text and image towers (Khattak et al., MaPLe paper's baseline;
muzairkhattak/multimodal-prompt-learning trainers/independentVL.py, also PromptSRC's architecture).

Text: a context of n_ctx tokens after SOS (from the init phrase's first tokens or N(0, 0.02)) plus fresh
N(0, 0.02) tokens for blocks 1..text_depth-1. Vision: n_ctx_vision N(0, 0.02) tokens appended before ln_pre
plus fresh ones for blocks 1..vision_depth-1. No coupling between the towers. vision_depth=0 is the
deep-language variant: no image tokens, so the module keeps the frozen-feature path (`encodes_images` False).
"""

from __future__ import annotations

import torch
from torch import nn

from promptlab.methods.coop import init_context, normal_tokens
from promptlab.methods.deep_prompts import (
    DeepPromptLearner,
    check_depth,
    seeded_generator,
)
from promptlab.models.frozen import FrozenCLIP


class IVLPPrompts(DeepPromptLearner):
    def __init__(
        self,
        clip: FrozenCLIP,
        n_ctx: int = 2,
        ctx_init: str | None = "a photo of a",
        text_depth: int = 12,
        n_ctx_vision: int = 2,
        vision_depth: int = 12,
        keep_init_tail: bool = True,
        fp16_prompts: bool = False,
        checkpoint_blocks: bool = False,
        init_seed: int | None = None,
    ) -> None:
        super().__init__(fp16_prompts=fp16_prompts, checkpoint_blocks=checkpoint_blocks)
        generator = seeded_generator(init_seed)
        # The reference asserts PROMPT_DEPTH_TEXT >= 1 for IVLP (vision-only prompting is VPT).
        check_depth(text_depth, clip.text_layers, "method.learner.text_depth", "text", clip, minimum=1)
        vectors, self.ctx_text = init_context(clip, n_ctx, ctx_init, generator, keep_init_tail=keep_init_tail)
        self.n_ctx = vectors.shape[0]
        self.ctx = nn.Parameter(vectors)
        self.text_deep = nn.ParameterList(
            [nn.Parameter(normal_tokens(self.n_ctx, clip.ctx_dim, generator)) for _ in range(text_depth - 1)])
        self.text_depth, self.vision_depth, self.n_ctx_vision = text_depth, vision_depth, n_ctx_vision
        self.encodes_images = vision_depth > 0
        if self.encodes_images:
            clip.check_vision_prompts("ivlp")
            check_depth(vision_depth, clip.vision_layers, "method.learner.vision_depth", "image", clip)
            if n_ctx_vision < 1:
                raise ValueError(f"method.learner.n_ctx_vision={n_ctx_vision}: vision prompts need >= 1 token "
                                 "(vision_depth=0 switches them off).")
            width = clip.vision_width
            self.vision_ctx = nn.Parameter(normal_tokens(n_ctx_vision, width, generator))
            self.vision_deep = nn.ParameterList(
                [nn.Parameter(normal_tokens(n_ctx_vision, width, generator)) for _ in range(vision_depth - 1)])

    def text_deep_prompts(self) -> list[torch.Tensor]:
        return list(self.text_deep)

    def vision_prompts(self) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
        if not self.encodes_images:
            return None, []
        return self.vision_ctx, list(self.vision_deep)
