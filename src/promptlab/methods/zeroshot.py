"""Zero-shot CLIP: hand-written templates (or class descriptions) around each class name, nothing to fit
(Radford et al. 2021). The prompt sources are in promptlab.methods.prompts.

Defaults (ZeroShotMethodConf): the dataset's template(s); prompts.templates / prompts.descriptions choose
others.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from promptlab.config.method import (
    II,
    PROMPT_DESCRIPTIONS_SHA256,
    PROMPT_TEMPLATES,
    Augment,
    MethodConf,
    MethodLoaderConf,
    OptimConf,
)
from promptlab.methods.base import PromptLearner
from promptlab.methods.prompts import TextPrompts, check_templates, class_embeddings
from promptlab.methods.registry import register_method
from promptlab.models.frozen import FrozenCLIP


def template_embeddings(clip: FrozenCLIP, templates: list[str], classnames: list[str]) -> torch.Tensor:
    """Normalised class embeddings [C, D] from one template, or the normalised mean over an ensemble."""
    check_templates(templates, "zero-shot templates (dataset.templates / prompts.templates)")
    return class_embeddings(clip, templates, classnames)


@dataclass
class ZeroShotLearnerConf:
    _target_: str = "promptlab.methods.ZeroShotPrompts"
    templates: list[str] = II(PROMPT_TEMPLATES)
    descriptions: str | None = II("prompts.descriptions")
    descriptions_sha256: str | None = II(PROMPT_DESCRIPTIONS_SHA256)
    combine_templates: bool = II("prompts.combine")


@dataclass
class ZeroShotMethodConf(MethodConf):
    name: str = "zeroshot"
    display_name: str = "CLIP"
    learner: ZeroShotLearnerConf = field(default_factory=ZeroShotLearnerConf)
    optim: OptimConf = field(default_factory=lambda: OptimConf(epochs=0))
    loader: MethodLoaderConf = field(default_factory=lambda: MethodLoaderConf(augment=Augment.none))


@register_method(ZeroShotMethodConf)
class ZeroShotPrompts(PromptLearner):
    trainable = False
    text_prompts: TextPrompts  # always set by the constructor
    text_features: torch.Tensor  # buffer: the classifier of the current class list

    def __init__(
        self,
        clip: FrozenCLIP,
        templates: list[str],
        descriptions: str | None = None,
        descriptions_sha256: str | None = None,
        combine_templates: bool = False,
    ) -> None:
        super().__init__()
        self.text_prompts = TextPrompts(templates, descriptions, descriptions_sha256, combine_templates)
        self.templates = self.text_prompts.templates

    def set_classnames(self, clip: FrozenCLIP, classnames: list[str]) -> None:
        self.classnames = list(classnames)
        self.register_buffer("text_features", self.text_prompts.class_embeddings(clip, classnames), persistent=False)

    def forward(self, clip: FrozenCLIP, image_features: torch.Tensor | None = None) -> torch.Tensor:
        return self.text_features
