"""CoOp: M learnable context vectors in place of the template words (Zhou et al., IJCV 2022).

The prompt of class c is [SOS, v1..vM, CLASS, ".", EOT]: the context is the same for every image
(static), unified across classes or class-specific (CSC), with the class token at the end, middle
or front. Faithful to the reference (CoOp repo, trainers/coop.py): prompt text "X X .. X name.",
prefix/suffix token-embedding buffers, EOT pooling; init from words or N(0, 0.02).

Defaults (CoOpMethodConf, the reference's; docs/reference.md, "CoOp"): 16 random context vectors, unified,
class token at the end, SGD lr 0.002 momentum 0.9 wd 5e-4, batch 32, cosine over epochs after one constant
warm-up epoch at 1e-5, epochs by shots (dataset.epochs_by_shots). With an init phrase
(learner.ctx_init="a photo of a") the context has one vector per phrase token and learner.n_ctx must equal
that count (refused at compose time otherwise). csc=true with an init phrase: the reference silently falls
back to one shared context; promptlab copies the init words into every class's context instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from promptlab.config.method import ClassTokenPosition, MethodConf
from promptlab.errors import ConfigError
from promptlab.methods.base import PromptLearner
from promptlab.methods.registry import register_method
from promptlab.models.frozen import FrozenCLIP

CLASS_TOKEN_POSITIONS = ("end", "middle", "front")


def normal_tokens(n: int, width: int, generator: torch.Generator | None) -> torch.Tensor:
    """n prompt vectors from N(0, 0.02), the reference's initialisation of every random context or prompt."""
    tokens = torch.empty(n, width)
    nn.init.normal_(tokens, std=0.02, generator=generator)
    return tokens


def init_context(clip: FrozenCLIP, n_ctx: int, ctx_init: str | None, generator: torch.Generator | None = None,
                 keep_init_tail: bool | None = None, option: str = "method.learner") -> tuple[torch.Tensor, str]:
    """Return (context vectors [n_ctx, W], prompt text whose first n_ctx tokens they replace).

    From words (the reference CoOp/CoCoOp, `keep_init_tail=None`): one vector per BPE token of `ctx_init`,
    initialised with that token's embedding; `n_ctx` must equal the token count (a mismatch is refused, not
    silently ignored, so a record never shows a context length that did not run). Random: n_ctx vectors from
    N(0, 0.02) and "X" placeholders, as the reference.

    The deep prompts' reference (VLPromptLearner / MultiModalPromptLearner.__init__) learns the *first* n_ctx
    tokens of the phrase and keeps the whole phrase in the prompt text (`keep_init_tail=True`): with n_ctx=2 and
    "a photo of a", "a", "photo" are learned while "of a" stay fixed words between the context and the class name
    (`token_suffix = embedding[:, 1 + n_ctx:]`); `keep_init_tail=False` asks for CoOp's rule there. An n_ctx
    above the phrase's token count is refused (that reference silently switches to random vectors when n_ctx > 4).
    """
    deep = keep_init_tail is not None
    if n_ctx < 1:
        what = "a text context" if deep else "a context"
        raise ConfigError(f"{option}.n_ctx={n_ctx}: {what} needs at least one vector (n_ctx >= 1).")
    if not ctx_init:
        return normal_tokens(n_ctx, clip.ctx_dim, generator), " ".join(["X"] * n_ctx)
    text = ctx_init.replace("_", " ").strip()
    tokens = clip.tokenize([text])
    n_init = clip.token_count(text)  # the model's own tokenizer, as compose-time validation counts
    if not deep and n_init != n_ctx:
        raise ConfigError(
            f"{option}.n_ctx={n_ctx} but {option}.ctx_init={ctx_init!r} is {n_init} tokens: the "
            f"context has one vector per phrase token. Set {option}.n_ctx={n_init}, or "
            f"{option}.ctx_init=null for {n_ctx} random vectors."
        )
    if deep and (n_ctx > n_init or (not keep_init_tail and n_ctx != n_init)):
        rule = ("n_ctx must equal its token count (keep_init_tail=false)" if n_ctx <= n_init
                else "at most that many tokens can be initialised from it")
        raise ConfigError(
            f"{option}.n_ctx={n_ctx} but {option}.ctx_init={ctx_init!r} is {n_init} tokens: {rule}. Set "
            f"{option}.n_ctx <= {n_init} (the first n_ctx tokens are learned, the rest stay fixed words, as the "
            f"reference), or {option}.ctx_init=null for {n_ctx} random vectors."
        )
    vectors = clip.embed_tokens(tokens)[0, 1 : 1 + n_ctx].detach().clone().float()
    return vectors, text


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


@dataclass
class CoOpLearnerConf:
    """n_ctx and ctx_init: with an init phrase, n_ctx must equal the phrase's token count (the reference
    learns one vector per init token); a different n_ctx is refused. Without one, n_ctx random vectors."""

    _target_: str = "promptlab.methods.CoOpPrompts"
    n_ctx: int = 16
    ctx_init: str | None = None
    csc: bool = False  # class-specific context
    class_token_position: ClassTokenPosition = ClassTokenPosition.end


@dataclass
class CoOpMethodConf(MethodConf):
    name: str = "coop"
    display_name: str = "CoOp"
    learner: CoOpLearnerConf = field(default_factory=CoOpLearnerConf)


def context_problems(learner: Any, count_tokens: Callable[[str], int] | None, keep_init_tail: bool = False,
                     key: str = "method.learner") -> list[str]:
    """The context rule at compose time, with the run's tokenizer (`count_tokens`; None: checked when the model
    is loaded, by `init_context`): with an init phrase the context has one vector per phrase token (the
    reference CoOp/CoCoOp), so another n_ctx is refused, not silently ignored; the deep prompts
    (`keep_init_tail`) learn the first n_ctx tokens of the phrase and keep the rest as fixed words."""
    n_ctx, ctx_init = int(learner.n_ctx), learner.get("ctx_init")
    if n_ctx < 1:
        return [f"{key}.n_ctx={n_ctx}: a context needs at least one vector (n_ctx >= 1)."]
    if not ctx_init or count_tokens is None:
        return []
    tokens = count_tokens(ctx_init.replace("_", " ").strip())
    if keep_init_tail and n_ctx <= tokens:
        return []
    if tokens != n_ctx:
        rule = f"at most {tokens} can be learned from it" if keep_init_tail else \
            f"the context is initialised from the phrase, one vector per token, so it has {tokens} vectors"
        return [f"{key}.n_ctx={n_ctx} but {key}.ctx_init={ctx_init!r} is {tokens} tokens: {rule}. Set "
                f"{key}.n_ctx={tokens}, or {key}.ctx_init=null for {n_ctx} random vectors."]
    return []


@register_method(CoOpMethodConf)
class CoOpPrompts(PromptLearner):
    n_ctx: int  # always set by the constructor
    layout: torch.Tensor | None  # buffer: the class-token permutation, None at the end position
    """Static learnable context (unified or class-specific)."""

    context_args = ("num_classes", "init_seed")

    def __init__(
        self,
        clip: FrozenCLIP,
        n_ctx: int = CoOpLearnerConf.n_ctx,
        ctx_init: str | None = CoOpLearnerConf.ctx_init,
        csc: bool = CoOpLearnerConf.csc,
        class_token_position: str = CoOpLearnerConf.class_token_position,
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
                # every class its own copy of the init words instead (documented in this module's docstring).
                vectors = vectors.unsqueeze(0).repeat(num_classes, 1, 1)
            else:
                vectors = torch.empty(num_classes, self.n_ctx, clip.ctx_dim)
                nn.init.normal_(vectors, std=0.02, generator=generator)
        self.ctx = nn.Parameter(vectors)

    @classmethod
    def config_problems(cls, learner: Any, count_tokens: Callable[[str], int] | None = None) -> list[str]:
        return context_problems(learner, count_tokens)

    def set_classnames(self, clip: FrozenCLIP, classnames: list[str]) -> None:
        if self.csc and len(classnames) != self.ctx.shape[0]:
            raise ConfigError(
                f"Class-specific context (csc=true) was learned for {self.ctx.shape[0]} classes and cannot be "
                f"evaluated on another class list ({len(classnames)} classes: novel classes or another dataset). "
                "Use method.learner.csc=false for base-to-novel and cross-dataset protocols, or protocol=fewshot."
            )
        prompts = self.keep_prompt_tokens(clip, classnames)
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
