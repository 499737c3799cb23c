"""CoCoOp: context conditioned on each image through a small meta-net (Zhou et al., CVPR 2022).

meta-net: Linear(vis_dim, vis_dim // 16) -> ReLU -> Linear(vis_dim // 16, ctx_dim); its output is
added to every context vector, so image b and class c get the prompt [SOS, v1+pi_b .. vM+pi_b, CLASS].
The reference (trainers/cocoop.py) loops over the images of a batch in Python and trains with batch
size 1. Here all B x C prompts of a batch go through the text encoder as one batched call, in chunks of
`class_chunk` classes to bound memory (optionally recomputed in backward with activation checkpointing).
`reference_forward` keeps the per-image loop for equivalence tests and the benchmark.

Defaults (CoCoOpMethodConf, the reference's): 4 context vectors from "a photo of a", SGD lr 0.002, 10 epochs,
batch 1. As the batch size is free here, the lr is scaled with it against the reference batch of 1:
optim.lr * f(loader.batch_size / optim.reference_batch_size), f = optim.lr_scaling (sqrt by default);
loader.batch_size=1 reproduces the reference schedule exactly.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from promptlab.config.method import LrScaling, MethodConf, MethodLoaderConf, OptimConf
from promptlab.methods.base import PromptLearner
from promptlab.methods.coop import context_problems, init_context
from promptlab.methods.registry import register_method
from promptlab.models.frozen import FrozenCLIP


@dataclass
class CoCoOpLearnerConf:
    _target_: str = "promptlab.methods.CoCoOpPrompts"
    n_ctx: int = 4
    ctx_init: str | None = "a photo of a"
    class_chunk: int | None = None  # classes per text-encoder call (bounds memory, e.g. 100 for ImageNet)
    recompute_chunks: bool = False  # recompute chunk activations in backward (compute for memory)
    checkpoint_chunks: bool | None = None  # deprecated: recompute_chunks (promptlab.config.deprecated)


@dataclass
class CoCoOpMethodConf(MethodConf):
    name: str = "cocoop"
    display_name: str = "CoCoOp"
    learner: CoCoOpLearnerConf = field(default_factory=CoCoOpLearnerConf)
    optim: OptimConf = field(
        default_factory=lambda: OptimConf(epochs=10, reference_batch_size=1, lr_scaling=LrScaling.sqrt)
    )
    loader: MethodLoaderConf = field(default_factory=lambda: MethodLoaderConf(batch_size=1))


@register_method(CoCoOpMethodConf)
class CoCoOpPrompts(PromptLearner):
    instance_conditional = True
    context_args = ("init_seed",)

    def __init__(
        self,
        clip: FrozenCLIP,
        n_ctx: int = CoCoOpLearnerConf.n_ctx,
        ctx_init: str | None = CoCoOpLearnerConf.ctx_init,
        class_chunk: int | None = CoCoOpLearnerConf.class_chunk,
        recompute_chunks: bool = CoCoOpLearnerConf.recompute_chunks,
        init_seed: int | None = None,
    ) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(init_seed) if init_seed is not None else None
        vectors, self.ctx_text = init_context(clip, n_ctx, ctx_init, generator)
        self.n_ctx = vectors.shape[0]
        self.ctx = nn.Parameter(vectors)
        vis_dim, hidden = clip.vis_dim, max(clip.vis_dim // 16, 1)
        self.meta_net = nn.Sequential(
            OrderedDict(
                [("linear1", nn.Linear(vis_dim, hidden)), ("relu", nn.ReLU(inplace=True)),
                 ("linear2", nn.Linear(hidden, clip.ctx_dim))]
            )
        )
        if init_seed is not None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(init_seed)
                for layer in self.meta_net.modules():  # linear1, then linear2
                    if isinstance(layer, nn.Linear):
                        layer.reset_parameters()
        self.class_chunk = class_chunk
        self.recompute_chunks = recompute_chunks

    @classmethod
    def config_problems(cls, learner: Any, count_tokens: Callable[[str], int] | None = None) -> list[str]:
        found = context_problems(learner, count_tokens)
        if learner.class_chunk is not None and learner.class_chunk < 1:
            found.append(f"method.learner.class_chunk={learner.class_chunk}: must be at least 1 or null.")
        return found

    def set_classnames(self, clip: FrozenCLIP, classnames: list[str]) -> None:
        self.keep_prompt_tokens(clip, classnames)

    def context_shift(self, image_features: torch.Tensor) -> torch.Tensor:
        """pi(x): [B, W], added to every context vector."""
        return self.meta_net(image_features.to(self.ctx.dtype))

    def _encode_chunk(self, clip: FrozenCLIP, ctx_shifted: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        # One group per image: its prompts share [SOS, v1+pi .. vM+pi] and differ from the class name on.
        batch = ctx_shifted.shape[0]
        sos = self.prefix[:1].expand(batch, -1, -1)
        prefix = torch.cat([sos, ctx_shifted.to(sos.dtype)], dim=1)  # [B, 1+M, W]
        return clip.encode_prefix_suffix(prefix, self.suffix[start:stop], self.eot_index[start:stop])

    def forward(self, clip: FrozenCLIP, image_features: torch.Tensor | None = None) -> torch.Tensor:
        if image_features is None:
            raise ValueError("CoCoOp prompts depend on the image: pass image_features.")
        ctx_shifted = self.ctx.unsqueeze(0) + self.context_shift(image_features).unsqueeze(1)  # [B, M, W]
        n_cls = self.prefix.shape[0]
        chunk = self.class_chunk or n_cls
        outputs = []
        for start in range(0, n_cls, chunk):
            stop = min(start + chunk, n_cls)
            if self.recompute_chunks and torch.is_grad_enabled():
                out = checkpoint(self._encode_chunk, clip, ctx_shifted, start, stop, use_reentrant=False)
            else:
                out = self._encode_chunk(clip, ctx_shifted, start, stop)
            outputs.append(out)
        return torch.cat(outputs, dim=1)  # [B, C, D]

    def reference_forward(self, clip: FrozenCLIP, image_features: torch.Tensor) -> torch.Tensor:
        """The reference's per-image loop (one text-encoder call of C prompts per image)."""
        shifts = self.context_shift(image_features)
        outputs = []
        for shift in shifts:
            ctx_i = (self.ctx + shift).unsqueeze(0).expand(self.prefix.shape[0], -1, -1)
            prompts = torch.cat([self.prefix, ctx_i, self.suffix], dim=1)
            outputs.append(clip.encode_token_embeddings(prompts, self.eot_index))
        return torch.stack(outputs)
