"""What the deep / multi-modal prompt learners share (VPT, IVLP, MaPLe, PromptSRC): learned tokens inside the
text tower, the image tower or both, at the input and at deeper blocks (docs/deep_prompts.md).

Depth J counts the blocks that get fresh tokens, block 0 included: block 0 sees the input-level prompts, and
before each block 1..J-1 the prompt slots of the residual stream are replaced by new tokens; later blocks carry
what the previous block wrote there. Text slots are the n_ctx positions right after SOS, vision slots the last
n tokens (appended after the patches, before ln_pre). The token surgery itself is in models/adapter.py; a
learner only holds the tensors and says which go where.

Reference: muzairkhattak/multimodal-prompt-learning (trainers/independentVL.py, maple.py, vpt.py) and
muzairkhattak/PromptSRC (trainers/promptsrc.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from promptlab.config.method import OptimConf
from promptlab.errors import ConfigError
from promptlab.methods.base import PromptLearner
from promptlab.methods.coop import context_problems
from promptlab.models.frozen import FrozenCLIP


# Defaults of the deep learners' configs (vpt.py, ivlp.py, maple.py, promptsrc.py): the reference's base-to-novel
# configs (ViT-B/16, batch 4, SGD, 1 warm-up epoch then cosine), read in muzairkhattak/multimodal-prompt-learning
# @69bce21 and muzairkhattak/PromptSRC @bb95c77 (docs/deep_prompts.md). Depths count the blocks that get fresh
# tokens, block 0 included (at most the tower's block count).
@dataclass
class DeepPromptOptions:
    """Options every deep prompt learner shares (reference quirks and memory)."""

    # The reference casts every inserted prompt with .half() whatever its precision: true rounds them to fp16
    # values the same way (deep text prompts and all image prompts; not the block-0 text context).
    fp16_prompts: bool = False
    recompute_blocks: bool = False  # recompute image-tower block activations in backward (memory for compute)
    checkpoint_blocks: bool | None = None  # deprecated: recompute_blocks (promptlab.config.deprecated)


def deep_optim(lr: float, epochs: int) -> OptimConf:
    """The deep prompts' reference schedule: SGD at `lr` for `epochs` epochs, tuned for batch 4."""
    return OptimConf(lr=lr, epochs=epochs, reference_batch_size=4)


def seeded_generator(init_seed: int | None) -> torch.Generator | None:
    return torch.Generator().manual_seed(init_seed) if init_seed is not None else None


def check_depth(depth: int, layers: int, option: str, tower: str, clip: FrozenCLIP, minimum: int = 0) -> None:
    if depth < minimum or depth > layers:
        raise ConfigError(
            f"{option}={depth}: the depth counts the {tower}-tower blocks that get fresh prompt tokens, from "
            f"{minimum} to the tower's {layers} blocks ({clip.name}). The reference's depths (9, 12) are for "
            f"ViT-B/16; the toy world's configs use smaller ones (conf/method_dataset/*_toyworld.yaml)."
        )


def fp16_round(tensors: Sequence[torch.Tensor], enabled: bool) -> list[torch.Tensor]:
    """The reference casts every inserted prompt with `.half()` (clip/model.py), whatever PREC says; with
    `enabled` the tokens are rounded to fp16 values the same way (then cast back to the compute dtype)."""
    return [t.half().to(t.dtype) if enabled else t for t in tensors]


class DeepPromptLearner(PromptLearner):
    """Base of the deep prompt learners: a text context after SOS (possibly deep) and/or image-tower tokens.

    Subclasses fill `text_deep_prompts()` and `vision_prompts()`; `encodes_images` (set per instance) tells
    the module to encode images through `encode_images` (with gradients to the prompts) instead of reading
    frozen features.
    """

    encodes_images: bool = True
    context_args = ("init_seed",)
    ctx: torch.Tensor  # the block-0 text context, set by subclasses with a text side

    @classmethod
    def config_problems(cls, learner: Any, count_tokens: Callable[[str], int] | None = None) -> list[str]:
        if "n_ctx" not in learner:
            return []
        return context_problems(learner, count_tokens, keep_init_tail=bool(learner.get("keep_init_tail")))

    def __init__(self, fp16_prompts: bool = DeepPromptOptions.fp16_prompts,
                 recompute_blocks: bool = DeepPromptOptions.recompute_blocks) -> None:
        super().__init__()
        self.fp16_prompts = fp16_prompts
        self.recompute_blocks = recompute_blocks
        self.n_ctx = 0
        self.ctx_text = ""

    # ----------------------------------------------------------------- text side
    def set_classnames(self, clip: FrozenCLIP, classnames: list[str]) -> None:
        self.keep_prompt_tokens(clip, classnames)

    def text_context(self) -> torch.Tensor:
        """The block-0 text context [n_ctx, W] (part of the token embeddings, so it gets the positional embedding)."""
        return self.ctx

    def text_deep_prompts(self) -> list[torch.Tensor]:
        """Fresh text tokens for blocks 1..J_text-1, [n_ctx, W] each."""
        return []

    def vision_prompts(self) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
        """(block-0 image tokens [n, W_v] or None, fresh image tokens for blocks 1..J_vision-1)."""
        return None, []

    def prompt_embeddings(self) -> torch.Tensor:
        """Token embeddings [C, T, W] of the prompts [SOS, context, class tokens, ".", EOT] (the plain path)."""
        ctx = self.text_context().unsqueeze(0).expand(self.prefix.shape[0], -1, -1)
        return torch.cat([self.prefix, ctx.to(self.prefix.dtype), self.suffix], dim=1)

    def encode_text(self, clip: FrozenCLIP) -> torch.Tensor:
        """Normalised class-text embeddings [C, D] with the deep text prompts."""
        deep = fp16_round(self.text_deep_prompts(), self.fp16_prompts)
        # Every prompt starts with [SOS, context] and every deep slot lies inside it: encode it once (exact,
        # models/shared_prefix.py), or run the full prompts when the backbone or model.share_prefix says no.
        prefix = torch.cat([self.prefix[:1], self.text_context().unsqueeze(0).to(self.prefix.dtype)], dim=1)
        return clip.encode_prefix_suffix(prefix, self.suffix, self.eot_index, deep=deep)[0]

    def forward(self, clip: FrozenCLIP, image_features: torch.Tensor | None = None) -> torch.Tensor:
        return self.encode_text(clip)

    # ----------------------------------------------------------------- image side
    def encode_images(self, clip: FrozenCLIP, images: torch.Tensor) -> torch.Tensor:
        """Normalised image embeddings [B, D] through the image tower with this learner's tokens."""
        shallow, deep = self.vision_prompts()
        if shallow is None:
            return clip.encode_image(images)
        shallow_r, *deep_r = fp16_round([shallow, *deep], self.fp16_prompts)
        return clip.encode_image_prompted(images, shallow_r, deep_r, recompute_blocks=self.recompute_blocks)
