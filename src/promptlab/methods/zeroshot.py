"""Zero-shot CLIP: hand-written templates around each class name, nothing to fit (Radford et al. 2021)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from promptlab.errors import ConfigError
from promptlab.methods.base import PromptLearner
from promptlab.models.frozen import FrozenCLIP


def template_embeddings(clip: FrozenCLIP, templates: list[str], classnames: list[str]) -> torch.Tensor:
    """Normalised class embeddings [C, D] from one template, or the normalised mean over an ensemble."""
    if not templates:
        raise ConfigError("No zero-shot template given: set dataset.templates (or method.learner.templates).")
    for template in templates:
        if "{}" not in template:
            raise ConfigError(f"Template {template!r} has no '{{}}' placeholder for the class name.")
    names = [name.replace("_", " ") for name in classnames]
    per_template = torch.stack([clip.encode_text([t.format(n) for n in names]) for t in templates])
    # Ensembling as in CLIP's ImageNet notebook: average the normalised embeddings, renormalise.
    return F.normalize(per_template.mean(dim=0), dim=-1)


class ZeroShotPrompts(PromptLearner):
    trainable = False

    def __init__(self, clip: FrozenCLIP, templates: list[str]) -> None:
        super().__init__()
        self.templates = list(templates)

    def set_classnames(self, clip: FrozenCLIP, classnames: list[str]) -> None:
        self.classnames = list(classnames)
        self.register_buffer("text_features", template_embeddings(clip, self.templates, classnames), persistent=False)

    def forward(self, clip: FrozenCLIP, image_features: torch.Tensor | None = None) -> torch.Tensor:
        return self.text_features
