"""IVLP: independent deep prompts in the text and image towers (Khattak et al., MaPLe paper's baseline;
muzairkhattak/multimodal-prompt-learning trainers/independentVL.py, also PromptSRC's architecture).

Text: a context of n_ctx tokens after SOS (from the init phrase's first tokens or N(0, 0.02)) plus fresh
N(0, 0.02) tokens for blocks 1..text_depth-1. Vision: n_ctx_vision N(0, 0.02) tokens appended before ln_pre
plus fresh ones for blocks 1..vision_depth-1. No coupling between the towers. vision_depth=0 is the
deep-language variant: no image tokens, so the module keeps the frozen-feature path (`encodes_images` False).

Defaults (IVLPMethodConf, the reference's configs/trainers/IVLP/vit_b16_c2_ep5_batch4_2+2ctx.yaml): 2 text
tokens from "a photo of a" (the first two; "of a" stays fixed: learner.keep_init_tail), 2 image tokens, depth
12 in both towers, SGD lr 0.0035, 5 epochs, batch 4. PromptSRC's IVLP baseline is 4 + 4 tokens at depth 9, lr
0.0025, 20 epochs (method.learner.n_ctx=4 n_ctx_vision=4 text_depth=9 vision_depth=9, method.optim.lr=0.0025
epochs=20). `ivlp_language` (IVLPLanguageMethodConf, ..._4ctx_language_only.yaml): 4 text tokens from
"a photo of a" at depth 12, no image tokens, SGD lr 0.0025, 5 epochs, batch 4; with loader.augment=none its
training features are cached (the image tower is the frozen one).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from promptlab.config.method import MethodConf, MethodLoaderConf, OptimConf
from promptlab.methods.coop import init_context, normal_tokens
from promptlab.methods.deep_prompts import (
    DeepPromptLearner,
    DeepPromptOptions,
    check_depth,
    deep_optim,
    seeded_generator,
)
from promptlab.methods.registry import register_method
from promptlab.models.frozen import FrozenCLIP


@dataclass
class IVLPLearnerConf(DeepPromptOptions):
    """configs/trainers/IVLP/vit_b16_c2_ep5_batch4_2+2ctx.yaml: 2 + 2 tokens, depth 12 in both towers.

    keep_init_tail: the reference learns the first n_ctx tokens of ctx_init and keeps the rest of the phrase as
    fixed words ("a photo" learned, "of a" fixed for n_ctx=2); false: n_ctx must equal the phrase's tokens."""

    _target_: str = "promptlab.methods.ivlp.IVLPPrompts"
    n_ctx: int = 2
    ctx_init: str | None = "a photo of a"
    text_depth: int = 12
    n_ctx_vision: int = 2
    vision_depth: int = 12
    keep_init_tail: bool = True


@dataclass
class IVLPLanguageLearnerConf(IVLPLearnerConf):
    """configs/trainers/IVLP/vit_b16_c2_ep5_batch4_4ctx_language_only.yaml: 4 text tokens, depth 12, no vision."""

    n_ctx: int = 4
    n_ctx_vision: int = 0
    vision_depth: int = 0


@dataclass
class IVLPMethodConf(MethodConf):
    name: str = "ivlp"
    display_name: str = "IVLP"
    learner: IVLPLearnerConf = field(default_factory=IVLPLearnerConf)
    optim: OptimConf = field(default_factory=lambda: deep_optim(0.0035, 5))
    loader: MethodLoaderConf = field(default_factory=lambda: MethodLoaderConf(batch_size=4))


@dataclass
class IVLPLanguageMethodConf(MethodConf):
    name: str = "ivlp_language"
    display_name: str = "Deep language prompts"
    learner: IVLPLanguageLearnerConf = field(default_factory=IVLPLanguageLearnerConf)
    optim: OptimConf = field(default_factory=lambda: deep_optim(0.0025, 5))
    loader: MethodLoaderConf = field(default_factory=lambda: MethodLoaderConf(batch_size=4))


@register_method(IVLPLanguageMethodConf)
@register_method(IVLPMethodConf)
class IVLPPrompts(DeepPromptLearner):
    def __init__(
        self,
        clip: FrozenCLIP,
        n_ctx: int = IVLPLearnerConf.n_ctx,
        ctx_init: str | None = IVLPLearnerConf.ctx_init,
        text_depth: int = IVLPLearnerConf.text_depth,
        n_ctx_vision: int = IVLPLearnerConf.n_ctx_vision,
        vision_depth: int = IVLPLearnerConf.vision_depth,
        keep_init_tail: bool = IVLPLearnerConf.keep_init_tail,
        fp16_prompts: bool = DeepPromptOptions.fp16_prompts,
        recompute_blocks: bool = DeepPromptOptions.recompute_blocks,
        init_seed: int | None = None,
    ) -> None:
        super().__init__(fp16_prompts=fp16_prompts, recompute_blocks=recompute_blocks)
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
