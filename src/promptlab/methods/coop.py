"""CoOp: M learnable context vectors in place of the template words (Zhou et al., IJCV 2022).

The prompt of class c is [SOS, v1..vM, CLASS, ".", EOT]: the context is the same for every image
(static), unified across classes or class-specific (CSC), with the class token at the end, middle
or front. Faithful to the reference (CoOp repo, trainers/coop.py): prompt text "X X .. X name.",
prefix/suffix token-embedding buffers, EOT pooling; init from words or N(0, 0.02).
"""

from __future__ import annotations

import torch
from torch import nn

from promptlab.errors import ConfigError
from promptlab.methods.base import PromptLearner, tokenize_prompts
from promptlab.models.frozen import FrozenCLIP

CLASS_TOKEN_POSITIONS = ("end", "middle", "front")


def init_context(clip: FrozenCLIP, n_ctx: int, ctx_init: str | None, generator: torch.Generator | None = None):
    """Return (context vectors [M, W], prompt text that stands for them).

    From words (the reference CoOp/CoCoOp): one vector per BPE token of `ctx_init`, initialised with that
    token's embedding; `n_ctx` must equal the token count (a mismatch is refused, not silently ignored,
    so a record never shows a context length that did not run). Random: n_ctx vectors from N(0, 0.02)
    and "X" placeholders, as the reference.
    """
    if n_ctx < 1:
        raise ConfigError(f"method.learner.n_ctx={n_ctx}: a context needs at least one vector (n_ctx >= 1).")
    if ctx_init:
        text = ctx_init.replace("_", " ").strip()
        tokens = clip.tokenize([text])
        n_init = int(clip.eot_index(tokens)[0]) - 1
        if n_init != n_ctx:
            raise ConfigError(
                f"method.learner.n_ctx={n_ctx} but method.learner.ctx_init={ctx_init!r} is {n_init} tokens: the "
                f"context has one vector per phrase token. Set method.learner.n_ctx={n_init}, or "
                f"method.learner.ctx_init=null for {n_ctx} random vectors."
            )
        vectors = clip.embed_tokens(tokens)[0, 1 : 1 + n_init].detach().clone().float()
        return vectors, text
    vectors = torch.empty(n_ctx, clip.ctx_dim)
    nn.init.normal_(vectors, std=0.02, generator=generator)
    return vectors, " ".join(["X"] * n_ctx)


def class_token_permutation(position: str, n_ctx: int, name_lens: list[int], length: int) -> torch.Tensor | None:
    """Per-class index that reorders [SOS, ctx, CLASS, rest] into the reference's middle/front layouts.

    Returns None for "end" (the identity). All layouts keep the same number of tokens before EOT, so
    the EOT index of the tokenised "end" prompt stays valid.
    """
    if position not in CLASS_TOKEN_POSITIONS:
        raise ConfigError(f"class_token_position={position!r}; expected one of {CLASS_TOKEN_POSITIONS}.")
    if position == "end":
        return None
    rows = []
    half = n_ctx // 2
    for name_len in name_lens:
        sos, ctx = [0], list(range(1, 1 + n_ctx))
        name = list(range(1 + n_ctx, 1 + n_ctx + name_len))
        rest = list(range(1 + n_ctx + name_len, length))
        if position == "front":
            order = sos + name + ctx + rest
        else:  # middle: first half of the context, class, second half
            order = sos + ctx[:half] + name + ctx[half:] + rest
        rows.append(order)
    return torch.tensor(rows, dtype=torch.long)


class CoOpPrompts(PromptLearner):
    """Static learnable context (unified or class-specific)."""

    def __init__(
        self,
        clip: FrozenCLIP,
        n_ctx: int = 16,
        ctx_init: str | None = None,
        csc: bool = False,
        class_token_position: str = "end",
        num_classes: int | None = None,
        init_seed: int | None = None,
    ) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(init_seed) if init_seed is not None else None
        vectors, self.ctx_text = init_context(clip, n_ctx, ctx_init, generator)
        self.n_ctx = vectors.shape[0]
        self.csc = csc
        class_token_position = str(getattr(class_token_position, "value", class_token_position))  # Enum from configs
        if class_token_position not in CLASS_TOKEN_POSITIONS:
            raise ConfigError(f"method.learner.class_token_position={class_token_position!r}; expected one of "
                              f"{CLASS_TOKEN_POSITIONS}.")
        self.class_token_position = class_token_position
        if csc:
            if not num_classes:
                raise ValueError("Class-specific context (csc=true) needs the number of training classes.")
            if ctx_init:
                # The reference silently falls back to a unified context when ctx_init is set; we give
                # every class its own copy of the init words instead (documented in promptlab/conf/method/coop.yaml).
                vectors = vectors.unsqueeze(0).repeat(num_classes, 1, 1)
            else:
                vectors = torch.empty(num_classes, self.n_ctx, clip.ctx_dim)
                nn.init.normal_(vectors, std=0.02, generator=generator)
        self.ctx = nn.Parameter(vectors)

    def set_classnames(self, clip: FrozenCLIP, classnames: list[str]) -> None:
        if self.csc and len(classnames) != self.ctx.shape[0]:
            raise ConfigError(
                f"Class-specific context (csc=true) was learned for {self.ctx.shape[0]} classes and cannot be "
                f"evaluated on another class list ({len(classnames)} classes: novel classes or another dataset). "
                "Use method.learner.csc=false for base-to-novel and cross-dataset protocols, or protocol=fewshot."
            )
        prompts = tokenize_prompts(clip, self.ctx_text, self.n_ctx, classnames)
        self.classnames = list(classnames)
        # Non-persistent: they depend on the class list and are rebuilt, never saved in checkpoints.
        self.register_buffer("prefix", prompts.prefix.float(), persistent=False)
        self.register_buffer("suffix", prompts.suffix.float(), persistent=False)
        self.register_buffer("eot_index", prompts.eot_index, persistent=False)
        self.register_buffer("tokens", prompts.tokens, persistent=False)
        length = 1 + self.n_ctx + prompts.suffix.shape[1]
        perm = class_token_permutation(self.class_token_position, self.n_ctx, prompts.name_lens, length)
        self.register_buffer("layout", perm, persistent=False)

    def prompt_embeddings(self, ctx: torch.Tensor | None = None) -> torch.Tensor:
        """Token embeddings fed to the text transformer, [C, T, W] (ctx: [M, W] or [C, M, W])."""
        ctx = self.ctx if ctx is None else ctx
        n_cls = self.prefix.shape[0]
        if ctx.dim() == 2:
            ctx = ctx.unsqueeze(0).expand(n_cls, -1, -1)
        prompts = torch.cat([self.prefix, ctx.to(self.prefix.dtype), self.suffix], dim=1)
        if self.layout is not None:
            index = self.layout.unsqueeze(-1).expand(-1, -1, prompts.shape[-1])
            prompts = prompts.gather(1, index)
        return prompts

    def forward(self, clip: FrozenCLIP, image_features: torch.Tensor | None = None) -> torch.Tensor:
        if self.layout is None and not self.csc:
            # [SOS, v1..vM] is the same for every class: encode it once (exact, see clip/shared_prefix.py).
            prefix = torch.cat([self.prefix[:1], self.ctx.unsqueeze(0).to(self.prefix.dtype)], dim=1)
            return clip.encode_prefix_suffix(prefix, self.suffix, self.eot_index)[0]
        return clip.encode_token_embeddings(self.prompt_embeddings(), self.eot_index)
