"""MaPLe: multi-modal prompt learning (Khattak et al., CVPR 2023; muzairkhattak/multimodal-prompt-learning,
trainers/maple.py MultiModalPromptLearner, clip/model.py).

The free parameters live on the text side; the image tokens are functions of them:
- block 0: text context `ctx` [n_ctx, W_t] (the init phrase's first tokens); image tokens `vision_proj(ctx)`;
- blocks i = 1..depth-1: text tokens `text_deep[i-1]` (N(0, 0.02)); image tokens `vision_deep_proj[i-1]
  (text_deep[i-1])`, one Linear(W_t, W_v) per block.
The reference builds the depth-1 deep projections by deep-copying ONE Linear, so they all start with the
same weights, while `vision_proj` is initialised on its own; promptlab does the same. The reference hard-codes
512 -> 768 (ViT-B/16); here the widths are the backbone's.

Defaults (MaPLeMethodConf, the reference's configs/trainers/MaPLe/vit_b16_c2_ep5_batch4_2ctx.yaml): 2 text
tokens from "a photo of a" (the first two learned, "of a" fixed), depth 9, SGD lr 0.0035, 5 epochs, batch 4.
The reference's cross-dataset / domain-generalisation setting: depth 3, lr 0.0026, 2 epochs
(..._2ctx_cross_datasets.yaml).
"""

from __future__ import annotations

import copy
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
class MaPLeLearnerConf(DeepPromptOptions):
    """configs/trainers/MaPLe/vit_b16_c2_ep5_batch4_2ctx.yaml: 2 tokens from "a photo of a", depth 9."""

    _target_: str = "promptlab.methods.maple.MaPLePrompts"
    n_ctx: int = 2
    ctx_init: str | None = "a photo of a"
    depth: int = 9
    keep_init_tail: bool = True


@dataclass
class MaPLeMethodConf(MethodConf):
    name: str = "maple"
    display_name: str = "MaPLe"
    learner: MaPLeLearnerConf = field(default_factory=MaPLeLearnerConf)
    optim: OptimConf = field(default_factory=lambda: deep_optim(0.0035, 5))
    loader: MethodLoaderConf = field(default_factory=lambda: MethodLoaderConf(batch_size=4))


@register_method(MaPLeMethodConf)
class MaPLePrompts(DeepPromptLearner):
    def __init__(
        self,
        clip: FrozenCLIP,
        n_ctx: int = MaPLeLearnerConf.n_ctx,
        ctx_init: str | None = MaPLeLearnerConf.ctx_init,
        depth: int = MaPLeLearnerConf.depth,
        keep_init_tail: bool = MaPLeLearnerConf.keep_init_tail,
        fp16_prompts: bool = DeepPromptOptions.fp16_prompts,
        recompute_blocks: bool = DeepPromptOptions.recompute_blocks,
        init_seed: int | None = None,
    ) -> None:
        super().__init__(fp16_prompts=fp16_prompts, recompute_blocks=recompute_blocks)
        clip.check_vision_prompts("maple")
        layers = min(clip.text_layers, clip.vision_layers)
        check_depth(depth, layers, "method.learner.depth", "text and image", clip, minimum=1)
        generator = seeded_generator(init_seed)
        vectors, self.ctx_text = init_context(clip, n_ctx, ctx_init, generator, keep_init_tail=keep_init_tail)
        self.n_ctx, self.depth = vectors.shape[0], depth
        self.ctx = nn.Parameter(vectors)
        self.text_deep = nn.ParameterList(
            [nn.Parameter(normal_tokens(self.n_ctx, clip.ctx_dim, generator)) for _ in range(depth - 1)])
        with torch.random.fork_rng(devices=[]):
            if init_seed is not None:
                torch.manual_seed(init_seed)
            self.vision_proj = nn.Linear(clip.ctx_dim, clip.vision_width)
            single = nn.Linear(clip.ctx_dim, clip.vision_width)
            self.vision_deep_proj = nn.ModuleList([copy.deepcopy(single) for _ in range(depth - 1)])

    def text_deep_prompts(self) -> list[torch.Tensor]:
        return list(self.text_deep)

    def vision_prompts(self) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
        # The coupling: image tokens = per-depth linear maps of the text tokens of the same depth.
        deep = [proj(tokens) for proj, tokens in zip(self.vision_deep_proj, self.text_deep, strict=True)]
        return self.vision_proj(self.ctx), deep
