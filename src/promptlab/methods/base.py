"""The interface every prompt learner implements, and the token layout they share.

A prompt learner turns a class list into class-text embeddings. Static learners (zero-shot, CoOp,
KgCoOp) give one embedding per class, [C, D]; instance-conditional learners (CoCoOp) give one per
image and class, [B, C, D]. The frozen CLIP is passed in at call time, never stored, so a learner's
state dict holds only what it learns (a CoOp checkpoint is a few KB).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from promptlab.models.frozen import FrozenCLIP


class PromptLearner(nn.Module):
    """Base class: subclasses implement `set_classnames` and `forward`."""

    #: True when the text embeddings depend on the image (CoCoOp): evaluation cannot share them.
    instance_conditional: bool = False
    #: False for methods with nothing to fit by gradient descent (zero-shot, closed-form baselines).
    trainable: bool = True
    #: True when the learner scores images itself (`logits`) instead of by cosine with its text embeddings.
    direct_logits: bool = False
    #: True when the learner is fitted on cached features by `fit_features` before (or instead of) training.
    fits_features: bool = False
    #: False when it cannot score classes it was not fitted on (a linear probe): train.py then records such
    #: evaluations (novel classes, other datasets) as not applicable, with `unseen_classes_reason`.
    scores_unseen_classes: bool = True
    unseen_classes_reason: str = ""
    #: False when the learner wants un-normalised image features (the data module encodes them so).
    normalized_features: bool = True
    #: True when the trained epoch is chosen on held-out data (train.py adds an EpochSelector).
    selects_epoch: bool = False

    @property
    def static_text(self) -> bool:
        """One text embedding per class for every image (no per-image prompts, no scoring of its own): evaluation
        encodes the text once and scores any number of image features against it."""
        return not self.instance_conditional and not self.direct_logits

    def __init__(self) -> None:
        super().__init__()
        self.classnames: list[str] = []

    def set_classnames(self, clip: FrozenCLIP, classnames: list[str]) -> None:
        """Prepare the fixed parts of the prompts for a class list (training, base, novel, another dataset)."""
        raise NotImplementedError

    def keep_prompt_tokens(self, clip: FrozenCLIP, classnames: list[str]) -> PromptTokens:
        """For learners of the "<context> <classname>." layout (`ctx_text`, `n_ctx`): tokenise the class list and keep
        its SOS `prefix`, `suffix` and `eot_index` as buffers. Non-persistent: they depend on the class list and
        are rebuilt, never saved (a saved prompt is the learned tensors only)."""
        prompts = tokenize_prompts(clip, self.ctx_text, self.n_ctx, classnames)
        self.classnames = list(classnames)
        self.register_buffer("prefix", prompts.prefix.float(), persistent=False)
        self.register_buffer("suffix", prompts.suffix.float(), persistent=False)
        self.register_buffer("eot_index", prompts.eot_index, persistent=False)
        return prompts

    def forward(self, clip: FrozenCLIP, image_features: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised class-text embeddings: [C, D], or [B, C, D] when instance-conditional."""
        raise NotImplementedError

    def regularization(self, clip: FrozenCLIP, text_features: torch.Tensor) -> torch.Tensor | None:
        """An extra loss term added to the cross-entropy (KgCoOp); None for most methods."""
        return None

    def logits(self, clip: FrozenCLIP, image_features: torch.Tensor) -> torch.Tensor:
        """Class scores [B, C] of the current class list (only for `direct_logits` learners)."""
        raise NotImplementedError(f"{type(self).__name__} scores through its text embeddings (direct_logits=False).")

    def fit_features(self, clip: FrozenCLIP, data: FitFeatures) -> dict[str, Any]:
        """Fit on cached features of the few-shot train and val splits (never test data); returns what was
        chosen (hyper-parameters) for the run record's summary."""
        raise NotImplementedError(f"{type(self).__name__} has no closed-form fit (fits_features=False).")

    def finish_fit(self, clip: FrozenCLIP, data: FitFeatures) -> dict[str, Any]:
        """Called after gradient training of a `fits_features` learner (e.g. a hyper-parameter search on val)."""
        return {}


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

    tokens: torch.Tensor
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
        tokens=tokens,
        prefix=embeddings[:, :1],
        suffix=embeddings[:, 1 + n_ctx : length],
        eot_index=eot_index,
        name_lens=[clip.name_length(name) for name in names],
    )
