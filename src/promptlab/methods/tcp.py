"""TCP: Textual-based Class-aware Prompt tuning (Yao, Zhang and Xu, CVPR 2024; htyao89/
Textual-based_Class-aware_prompt_tuning, trainers/tcp.py and trainers/clip_text/model.py, docs/tcp.md).

A KgCoOp model (CoOp context + the knowledge-guided term) whose prompts also carry class-aware tokens: a small
"text knowledge embedding" MLP maps each class's frozen hand-written-prompt embedding w_c^clip [D] to n_ctx tokens
[n_ctx, W], and these replace the context slots (positions 1..n_ctx after SOS) of class c's residual stream
before text block `insert_layer` (8 of ViT-B/16's 12; 0-based, so blocks 0..7 see the learned context).
Since the tokens come from class names, novel classes get theirs from their own names.

    prompt_c   = [SOS, v_1..v_M, <class c's prompt suffix>]   (the reference's "X X X X {}, a type of pet.")
    tokens_c   = linear2(QuickGELU(linear1(w_c^clip))).view(M, W)   (D -> D/4 -> M*W)
    w_c        = text tower(prompt_c) with tokens_c spliced in before block insert_layer
    loss       = CE(logit_scale * cos(x, w)) + kg_weight * (1 - mean_c cos(w_c, w_c^clip))

w_c^clip is the zero-shot embedding of the hand-written prompts (prompts.templates, the dataset's template by
default, as the reference's CUSTOM_TEMPLATES_ori); it is both the MLP's input and KgCoOp's target.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from promptlab.config.method import (
    II,
    PROMPT_DESCRIPTIONS_SHA256,
    PROMPT_TEMPLATES,
    MethodConf,
    MethodLoaderConf,
    OptimConf,
)
from promptlab.errors import ConfigError
from promptlab.methods.base import Loss, PromptLearner, TrainingStep
from promptlab.methods.coop import context_problems, init_context
from promptlab.methods.prompts import TextPrompts, check_templates
from promptlab.methods.registry import register_method
from promptlab.models.frozen import FrozenCLIP

#: The text after the context in TCP's learned prompts (trainers/tcp.py CUSTOM_TEMPLATES, whose first four words,
#: "X X X X" or "a photo of a", are the four context slots), keyed by promptlab's dataset names. They differ from
#: the hand-written templates the frozen embeddings use (dataset.templates, CUSTOM_TEMPLATES_ori): e.g. DTD
#: "{} texture." here, "a photo of a {}, a type of texture." there. Stanford Cars has no final period, as there.
TCP_PROMPT_SUFFIXES: dict[str, str] = {
    "oxford_pets": "{}, a type of pet.",
    "oxford_flowers": "{}, a type of flower.",
    "fgvc_aircraft": "{}, a type of aircraft.",
    "dtd": "{} texture.",
    "eurosat": "{}.",
    "stanford_cars": "{}, a type of car",
    "food101": "{}, a type of food.",
    "sun397": "{}.",
    "caltech101": "{}.",
    "ucf101": "person doing {}.",
    "imagenet": "{}.",
    "imagenet_sketch": "{}.",
    "imagenet_v2": "{}.",
    "imagenet_a": "{}.",
    "imagenet_r": "{}.",
}
#: The suffix of datasets the reference's table lacks (the toy world, an image folder): CoOp's "<context> name.".
DEFAULT_PROMPT_SUFFIX = "{}."


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): the reference's activation between the MLP's two layers (named "relu" there)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


@dataclass
class TCPLearnerConf:
    """configs/trainers/TCP/vit_b16_ep100_ctxv1.yaml + scripts/base2new_train.sh: 4 random N(0, 0.02) context
    vectors (CTX_INIT False), class-aware tokens before text block 8, lambda 8 (hard-coded in CustomCLIP.forward).

    `reduction`: the MLP's hidden width is embed_dim // reduction (the reference's vis_dim // 4); `insert_layer`
    counts 0-based text blocks (1..layers-1); `reference_prompts`: the learned prompt's text after the context is
    the dataset's TCP_PROMPT_SUFFIXES entry, else `prompt_suffix`."""

    _target_: str = "promptlab.methods.tcp.TCPPrompts"
    n_ctx: int = 4
    ctx_init: str | None = None
    insert_layer: int = 8
    reduction: int = 4
    kg_weight: float = 8.0
    reference_prompts: bool = True
    prompt_suffix: str = DEFAULT_PROMPT_SUFFIX
    dataset: str = II("dataset.name")
    templates: list[str] = II(PROMPT_TEMPLATES)
    descriptions: str | None = II("prompts.descriptions")
    descriptions_sha256: str | None = II(PROMPT_DESCRIPTIONS_SHA256)
    combine_templates: bool = II("prompts.combine")


@dataclass
class TCPMethodConf(MethodConf):
    """The reference's schedule: Adam (eps 1e-3, weight decay 5e-4: conf/method/tcp.yaml picks optimizer=adam)
    at lr 0.002, 1 constant warm-up epoch at 1e-5 then cosine, 50 epochs (25 on ImageNet and SUN397, train.py),
    batch 32."""

    name: str = "tcp"
    display_name: str = "TCP"
    learner: TCPLearnerConf = field(default_factory=TCPLearnerConf)
    optim: OptimConf = field(default_factory=lambda: OptimConf(lr=0.002, epochs=50, reference_batch_size=32))
    loader: MethodLoaderConf = field(default_factory=lambda: MethodLoaderConf(batch_size=32))


@register_method(TCPMethodConf)
class TCPPrompts(PromptLearner):
    """CoOp context + class-aware tokens from the frozen class-text embeddings (see the module docstring)."""

    n_ctx: int  # always set by the constructor
    text_prompts: TextPrompts  # always set by the constructor
    zeroshot_features: torch.Tensor  # buffer: w^clip of the current class list, the MLP's input and KgCoOp's target
    context_args = ("init_seed",)

    def __init__(
        self,
        clip: FrozenCLIP,
        templates: list[str],
        n_ctx: int = TCPLearnerConf.n_ctx,
        ctx_init: str | None = TCPLearnerConf.ctx_init,
        insert_layer: int = TCPLearnerConf.insert_layer,
        reduction: int = TCPLearnerConf.reduction,
        kg_weight: float = TCPLearnerConf.kg_weight,
        reference_prompts: bool = TCPLearnerConf.reference_prompts,
        prompt_suffix: str = TCPLearnerConf.prompt_suffix,
        dataset: str | None = None,
        descriptions: str | None = None,
        descriptions_sha256: str | None = None,
        combine_templates: bool = False,
        init_seed: int | None = None,
    ) -> None:
        super().__init__()
        layers = clip.text_layers
        if not 1 <= insert_layer < layers:
            raise ConfigError(
                f"method.learner.insert_layer={insert_layer}: the class-aware tokens replace the context slots "
                f"before a text block from 1 to {layers - 1} ({clip.name} has {layers}); the reference's 8 is for "
                "ViT-B/16's 12 (the toy world's config uses 1 of 3)."
            )
        if reduction < 1 or clip.embed_dim // reduction < 1:
            raise ConfigError(f"method.learner.reduction={reduction}: the MLP's hidden width embed_dim // reduction "
                              f"({clip.embed_dim} // {reduction}) must be at least 1.")
        generator = torch.Generator().manual_seed(init_seed) if init_seed is not None else None
        vectors, self.ctx_text = init_context(clip, n_ctx, ctx_init, generator)
        self.n_ctx = vectors.shape[0]
        self.ctx = nn.Parameter(vectors)
        self.insert_layer = insert_layer
        self.kg_weight = kg_weight
        suffix = TCP_PROMPT_SUFFIXES.get(str(dataset)) if reference_prompts else None
        self.prompt_suffix = suffix if suffix is not None else prompt_suffix
        self.suffix_source = "tcp_reference" if suffix is not None else "config"
        check_templates([self.prompt_suffix], "method.learner.prompt_suffix")
        hidden = clip.embed_dim // reduction
        # nn.Linear's own initialisation, as the reference; seeded apart from the global stream like MaPLe's.
        with torch.random.fork_rng(devices=[]):
            if init_seed is not None:
                torch.manual_seed(init_seed)
            self.meta_net = nn.Sequential(OrderedDict([
                ("linear1", nn.Linear(clip.embed_dim, hidden)),
                ("relu", QuickGELU()),
                ("linear2", nn.Linear(hidden, self.n_ctx * clip.ctx_dim)),
            ]))
        self.text_prompts = TextPrompts(templates, descriptions, descriptions_sha256, combine_templates)
        self.templates = self.text_prompts.templates

    @classmethod
    def config_problems(cls, learner: Any, count_tokens: Callable[[str], int] | None = None) -> list[str]:
        found = context_problems(learner, count_tokens)
        if int(learner.insert_layer) < 1:
            found.append(f"method.learner.insert_layer={learner.insert_layer}: the class-aware tokens enter before a "
                         "text block from 1 to the tower's last (8 on ViT-B/16, as the reference).")
        if int(learner.reduction) < 1:
            found.append(f"method.learner.reduction={learner.reduction}: must be >= 1.")
        return found

    # ----------------------------------------------------------------- prompts
    def set_classnames(self, clip: FrozenCLIP, classnames: list[str]) -> None:
        names = [name.replace("_", " ") for name in classnames]
        tokens = clip.tokenize([f"{self.ctx_text} {self.prompt_suffix.format(name)}" for name in names])
        embeddings = clip.embed_tokens(tokens)
        eot_index = clip.eot_index(tokens)
        length = int(eot_index.max()) + 1 if clip.truncate_text else tokens.shape[1]
        self.classnames = list(classnames)
        # Non-persistent: they follow the class list (base, novel, another dataset) and are rebuilt, never saved.
        self.register_buffer("prefix", embeddings[:, :1].float(), persistent=False)
        self.register_buffer("suffix", embeddings[:, 1 + self.n_ctx : length].float(), persistent=False)
        self.register_buffer("eot_index", eot_index, persistent=False)
        self.register_buffer("zeroshot_features", self.text_prompts.class_embeddings(clip, classnames).float(),
                             persistent=False)

    def class_tokens(self) -> torch.Tensor:
        """The class-aware tokens [C, n_ctx, W] of the current class list (the reference's class_feature)."""
        out = self.meta_net(self.zeroshot_features.to(self.ctx.dtype))
        return out.view(out.shape[0], self.n_ctx, -1)

    def prompt_embeddings(self) -> torch.Tensor:
        """Token embeddings [C, T, W] of [SOS, context, suffix] (the block-0 input; the class tokens come later)."""
        ctx = self.ctx.unsqueeze(0).expand(self.prefix.shape[0], -1, -1)
        return torch.cat([self.prefix, ctx.to(self.prefix.dtype), self.suffix], dim=1)

    def forward(self, clip: FrozenCLIP, image_features: torch.Tensor | None = None) -> torch.Tensor:
        # Each class has its own tokens inside the context slots, so no prefix is shared between classes:
        # every prompt runs in full (truncated after the longest EOT where exact).
        deep: list[torch.Tensor | None] = [None] * (self.insert_layer - 1) + [self.class_tokens()]
        return clip.encode_token_embeddings(self.prompt_embeddings(), self.eot_index, deep=deep)

    # ----------------------------------------------------------------- training
    def training_loss(self, clip: FrozenCLIP, step: TrainingStep) -> Loss:
        loss = super().training_loss(clip, step)
        assert step.text_features is not None
        if self.kg_weight != 0:
            cosine = (step.text_features * self.zeroshot_features).sum(dim=-1)
            loss.terms["kg"] = self.kg_weight * (1.0 - cosine.mean())
        return loss

    def summary(self) -> dict[str, Any]:
        return {**super().summary(), "insert_layer": self.insert_layer, "prompt_suffix": self.prompt_suffix,
                "prompt_suffix_source": self.suffix_source}
