"""The interface every prompt learner implements, and the token layout they share.

A prompt learner turns a class list into class-text embeddings. Static learners (zero-shot, CoOp,
KgCoOp) give one embedding per class, [C, D]; instance-conditional learners (CoCoOp) give one per
image and class, [B, C, D]. The frozen CLIP is passed in at call time, never stored, so a learner's
state dict holds only what it learns (a CoOp checkpoint is a few KB).
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from promptlab.models.frozen import FrozenCLIP
from promptlab.results.records import TUNING_SOURCES

if TYPE_CHECKING:
    from promptlab.methods.prompts import TextPrompts


@dataclass(frozen=True)
class RunContext:
    """What a learner may take from the run besides its own config node, handed to `PromptLearner.build` in one
    object: the frozen CLIP, the training class list, the initialisation seed and the dataset's name."""

    clip: FrozenCLIP
    classnames: list[str]
    init_seed: int | None = None
    dataset: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.classnames)


@dataclass
class TrainingStep:
    """One training batch as the engine computed it, for `PromptLearner.training_loss`.

    `images` is the batch's (augmented) images, None when the batch holds cached frozen features;
    `text_features` the float class-text embeddings ([C, D] or [B, C, D]), None for learners that score images
    themselves (`direct_logits`); `logits` [B, C]."""

    images: torch.Tensor | None
    image_features: torch.Tensor
    text_features: torch.Tensor | None
    logits: torch.Tensor
    labels: torch.Tensor


@dataclass
class Loss:
    """A learner's training loss as named terms.

    `terms` are added, in order, into the optimised loss (the first is the cross-entropy for every method so
    far); `logged` are values the engine logs but does not optimise (ProGrad's KL, its conflict rate);
    `surrogate`, when set, is what is back-propagated instead of the sum: a tensor with the sum's value and
    another gradient (ProGrad's projected gradient)."""

    terms: dict[str, torch.Tensor]
    logged: dict[str, torch.Tensor] = field(default_factory=dict)
    surrogate: torch.Tensor | None = None

    @property
    def total(self) -> torch.Tensor:
        """The sum of the terms (the value recorded as the training loss)."""
        return functools.reduce(operator.add, self.terms.values())

    @property
    def optimised(self) -> torch.Tensor:
        """What the engine back-propagates."""
        return self.surrogate if self.surrogate is not None else self.total


def tuned_on(values: dict[str, str]) -> str:
    """The strongest source among a run's tuned values ("none" when there are none)."""
    return max(values.values(), key=TUNING_SOURCES.index, default="none")


class PromptLearner(nn.Module):
    """The method contract: everything the engine, the records and the tools ask of a method.

    A method subclasses this (or one of its subclasses), overrides what differs from the defaults below, and
    registers itself with `@register_method(ItsMethodConf)` (promptlab.methods.registry). The engine reads only
    the attributes and calls only the methods declared here (tests/methods/test_method_contract.py checks that no module
    probes a learner for anything else).
    """

    # ----------------------------------------------------------------- what the method is
    #: False for methods with nothing to fit by gradient descent (zero-shot, closed-form baselines).
    trainable: bool = True
    #: True when the text embeddings depend on the image (CoCoOp): evaluation cannot share them.
    instance_conditional: bool = False
    #: True when images go through the learner's own image-tower tokens (VPT, IVLP, MaPLe, PromptSRC): batches
    #: carry images, never cached frozen features, and gradients reach the image prompts through the frozen tower.
    encodes_images: bool = False
    #: False when the learner wants un-normalised frozen image features (the reference linear probe).
    normalize_features: bool = True
    #: True when the learner scores images itself (`logits`) instead of by cosine with its text embeddings.
    direct_logits: bool = False
    #: True when the learner is fitted on cached features by `fit_features` before (or instead of) training.
    fits_features: bool = False
    #: False when it cannot score classes it was not fitted on (a linear probe): such evaluations (novel
    #: classes, other datasets) are recorded as not applicable, with `unseen_classes_reason`.
    scores_unseen_classes: bool = True
    unseen_classes_reason: str = ""
    #: True when the trained epoch is chosen on held-out data (`selection_split`): the engine keeps that epoch.
    selects_epoch: bool = False
    #: The RunContext fields the constructor takes as keyword arguments (`build` passes them).
    context_args: tuple[str, ...] = ()
    #: The text context length (CoOp-style learners; recorded as the run's n_ctx), None for learners without one.
    n_ctx: int | None = None
    #: The prompt text whose first n_ctx tokens the context replaces ("X X X X", "a photo of a").
    ctx_text: str = ""
    #: The hand-written prompts the learner reads (zero-shot classifier, KgCoOp/ProGrad teacher), if any.
    text_prompts: TextPrompts | None = None
    # Buffers of the "<context> <classname>." layout, registered by `keep_prompt_tokens`.
    prefix: torch.Tensor
    suffix: torch.Tensor
    eot_index: torch.Tensor

    @property
    def static_text(self) -> bool:
        """One text embedding per class for every image (no per-image prompts, no scoring of its own): evaluation
        encodes the text once and scores any number of image features against it."""
        return not self.instance_conditional and not self.direct_logits

    @property
    def selection_split(self) -> str:
        """The held-out split a `selects_epoch` learner chooses its epoch on: "val" (the few-shot val split)."""
        return "val"

    def __init__(self) -> None:
        super().__init__()
        self.classnames: list[str] = []

    @classmethod
    def build(cls, options: dict[str, Any], context: RunContext) -> PromptLearner:
        """The learner of a run: `options` are its config's learner node (without `_target_`), plus the
        `context_args` fields of the run's context."""
        extra = {name: getattr(context, name) for name in cls.context_args}
        construct: Callable[..., PromptLearner] = cls  # a subclass's constructor: it takes the frozen CLIP first
        return construct(context.clip, **options, **extra)

    @classmethod
    def config_problems(cls, learner: Any, count_tokens: Callable[[str], int] | None = None) -> list[str]:
        """Checks of this method's learner node that its type cannot express, run at compose time before
        anything is loaded (`learner` is the composed node; `count_tokens(text)` counts a phrase's tokens with
        the run's model's own tokenizer, None when that needs the model loaded: the learner then checks)."""
        return []

    # ----------------------------------------------------------------- class lists and scoring
    def set_classnames(self, clip: FrozenCLIP, classnames: list[str]) -> None:
        """Prepare the fixed parts of the prompts for a class list (training, base, novel, another dataset)."""
        raise NotImplementedError

    def keep_prompt_tokens(self, clip: FrozenCLIP, classnames: list[str]) -> PromptTokens:
        """For learners of the "<context> <classname>." layout (`ctx_text`, `n_ctx`): tokenise the class list and keep
        its SOS `prefix`, `suffix` and `eot_index` as buffers. Non-persistent: they depend on the class list and
        are rebuilt, never saved (a saved prompt is the learned tensors only)."""
        prompts = tokenize_prompts(clip, self.ctx_text, int(self.n_ctx or 0), classnames)
        self.classnames = list(classnames)
        self.register_buffer("prefix", prompts.prefix.float(), persistent=False)
        self.register_buffer("suffix", prompts.suffix.float(), persistent=False)
        self.register_buffer("eot_index", prompts.eot_index, persistent=False)
        return prompts

    def forward(self, clip: FrozenCLIP, image_features: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised class-text embeddings: [C, D], or [B, C, D] when instance-conditional."""
        raise NotImplementedError

    def encode_images(self, clip: FrozenCLIP, images: torch.Tensor) -> torch.Tensor:
        """Image embeddings [B, D] the learner scores with: the frozen tower's (normalised unless
        `normalize_features` is False); learners with image-tower tokens encode through them."""
        return clip.encode_image(images, normalize=self.normalize_features)

    def logits(self, clip: FrozenCLIP, image_features: torch.Tensor) -> torch.Tensor:
        """Class scores [B, C] of the current class list (only for `direct_logits` learners)."""
        raise NotImplementedError(f"{type(self).__name__} scores through its text embeddings (direct_logits=False).")

    # ----------------------------------------------------------------- training
    def training_loss(self, clip: FrozenCLIP, step: TrainingStep) -> Loss:
        """The loss of one training batch as named terms: the cross-entropy by default; methods add their
        regularisers (KgCoOp, PromptSRC) or a surrogate with another gradient (ProGrad)."""
        return Loss({"ce": F.cross_entropy(step.logits, step.labels)})

    def callbacks(self) -> list[Any]:
        """Lightning callbacks the method's training needs (PromptSRC's Gaussian prompt aggregation); fresh per fit."""
        return []

    def fit_features(self, clip: FrozenCLIP, data: FitFeatures) -> dict[str, Any]:
        """Fit on cached features of the few-shot train and val splits (never test data); returns what was
        chosen (hyper-parameters) for the run record's summary."""
        raise NotImplementedError(f"{type(self).__name__} has no closed-form fit (fits_features=False).")

    def finish_fit(self, clip: FrozenCLIP, data: FitFeatures) -> dict[str, Any]:
        """Called after gradient training of a `fits_features` learner (e.g. a hyper-parameter search on val)."""
        return {}

    # ----------------------------------------------------------------- what the record says
    def tuned_values(self) -> dict[str, str]:
        """Each value this learner chose by looking at data other than its training split, and which data:
        "few-shot val", "full val" or "test" (TUNING_SOURCES). {} when nothing is tuned (validation-free). The
        engine adds "epoch" when it keeps the best epoch of a training run. Valid after the fit."""
        return {}

    def fitted_values(self) -> dict[str, Any]:
        """What the fit chose from data (searched hyperparameters, the epoch kept, statistics of the fit): the
        record's `fit` section. Kept out of `summary`, whose keys split a table's rows when they vary within a
        method (they would split it by seed). {} for a learner with nothing fitted from data."""
        return {}

    def summary(self) -> dict[str, Any]:
        """The learner's part of the run record's summary: what ran (the effective context length, the prompts)."""
        out: dict[str, Any] = {}
        if self.n_ctx is not None:
            out["n_ctx"] = int(self.n_ctx)
        if self.text_prompts is not None:
            out.update(self.text_prompts.summary())
        return out

    def notes(self) -> list[str]:
        """Lines for the run record's notes (e.g. classes without a description)."""
        return list(self.text_prompts.notes) if self.text_prompts is not None else []


@dataclass
class FitFeatures:
    """Frozen features of the few-shot splits, labels indexed in the training class list.

    `train` is [N, D], or [K, N, D] for K cached augmented views per image; `val` is [M, D] (M may be 0).
    """

    train: torch.Tensor
    train_labels: torch.Tensor
    val: torch.Tensor
    val_labels: torch.Tensor


def logits_from_features(
    image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor
) -> torch.Tensor:
    """Scaled cosine logits [B, C] for static ([C, D]) or per-image ([B, C, D]) text embeddings."""
    if text_features.dim() == 2:
        return logit_scale * image_features @ text_features.t()
    return logit_scale * torch.einsum("bd,bcd->bc", image_features, text_features)


@dataclass
class PromptTokens:
    """Tokenised prompts "<ctx words> <classname>." of a class list, split the way the reference does.

    `prefix` is the SOS embedding [C, 1, W]; `suffix` everything after the context (class-name tokens,
    ".", EOT, padding) [C, T - 1 - n_ctx, W]; `eot_index` [C]; `name_lens` the class-name token counts.
    With `truncate=True` the sequences stop after the longest EOT (causal text transformer, exact).
    """

    prefix: torch.Tensor
    suffix: torch.Tensor
    eot_index: torch.Tensor
    name_lens: list[int]


def tokenize_prompts(clip: FrozenCLIP, ctx_text: str, n_ctx: int, classnames: list[str]) -> PromptTokens:
    """Tokenise `"{ctx_text} {name}."` for each class and cut SOS / context / suffix (CoOp, Zhou et al. 2022)."""
    names = [name.replace("_", " ") for name in classnames]
    texts = [f"{ctx_text} {name}." for name in names]
    tokens = clip.tokenize(texts)
    embeddings = clip.embed_tokens(tokens)
    eot_index = clip.eot_index(tokens)
    length = int(eot_index.max()) + 1 if clip.truncate_text else tokens.shape[1]
    return PromptTokens(
        prefix=embeddings[:, :1],
        suffix=embeddings[:, 1 + n_ctx : length],
        eot_index=eot_index,
        name_lens=[clip.token_count(name) for name in names],
    )
