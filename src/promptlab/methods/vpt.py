"""VPT (deep vision prompting) on CLIP, as the MaPLe paper's baseline (muzairkhattak/multimodal-prompt-learning,
trainers/vpt.py; Jia et al., ECCV 2022): n_ctx_vision N(0, 0.02) tokens appended in the image tower before
ln_pre and fresh ones before blocks 1..vision_depth-1; the text side is fixed, frozen CLIP's embedding of
"a photo of a {class}." computed once per class list (the reference's FixedEmbeddings, for every dataset).

Defaults (VPTMethodConf, the reference's configs/trainers/VPT/vit_b16_c2_ep5_batch4_4.yaml): 8 image tokens at
depth 12, SGD lr 0.0025, 5 epochs, batch 4, one warm-up epoch at 1e-5 then cosine. Images go through the
prompted image tower at every step (no feature cache); ViT backbones only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from promptlab.config.method import MethodConf, MethodLoaderConf, OptimConf
from promptlab.methods.coop import normal_tokens
from promptlab.methods.deep_prompts import (
    DeepPromptLearner,
    DeepPromptOptions,
    check_depth,
    deep_optim,
    seeded_generator,
)
from promptlab.methods.prompts import TextPrompts
from promptlab.methods.registry import register_method
from promptlab.models.frozen import FrozenCLIP

#: The reference's fixed text prompt, for every dataset.
VPT_TEMPLATES = ("a photo of a {}.",)


@dataclass
class VPTLearnerConf(DeepPromptOptions):
    """configs/trainers/VPT/vit_b16_c2_ep5_batch4_4.yaml: 8 vision tokens, depth 12; text fixed."""

    _target_: str = "promptlab.methods.vpt.VPTPrompts"
    n_ctx_vision: int = 8
    vision_depth: int = 12
    templates: list[str] = field(default_factory=lambda: list(VPT_TEMPLATES))


@dataclass
class VPTMethodConf(MethodConf):
    name: str = "vpt"
    display_name: str = "VPT"
    learner: VPTLearnerConf = field(default_factory=VPTLearnerConf)
    optim: OptimConf = field(default_factory=lambda: deep_optim(0.0025, 5))
    loader: MethodLoaderConf = field(default_factory=lambda: MethodLoaderConf(batch_size=4))


@register_method(VPTMethodConf)
class VPTPrompts(DeepPromptLearner):
    text_features: torch.Tensor  # buffer: the fixed prompts' classifier of the current class list
    def __init__(
        self,
        clip: FrozenCLIP,
        n_ctx_vision: int = VPTLearnerConf.n_ctx_vision,
        vision_depth: int = VPTLearnerConf.vision_depth,
        templates: list[str] | None = None,
        fp16_prompts: bool = DeepPromptOptions.fp16_prompts,
        recompute_blocks: bool = DeepPromptOptions.recompute_blocks,
        init_seed: int | None = None,
    ) -> None:
        super().__init__(fp16_prompts=fp16_prompts, recompute_blocks=recompute_blocks)
        clip.check_vision_prompts("vpt")
        # The reference asserts PROMPT_DEPTH_VISION >= 1: without image tokens there is nothing to learn.
        check_depth(vision_depth, clip.vision_layers, "method.learner.vision_depth", "image", clip, minimum=1)
        if n_ctx_vision < 1:
            raise ValueError(f"method.learner.n_ctx_vision={n_ctx_vision}: VPT needs >= 1 vision token.")
        generator = seeded_generator(init_seed)
        width = clip.vision_width
        self.n_ctx_vision, self.vision_depth = n_ctx_vision, vision_depth
        self.vision_ctx = nn.Parameter(normal_tokens(n_ctx_vision, width, generator))
        self.vision_deep = nn.ParameterList(
            [nn.Parameter(normal_tokens(n_ctx_vision, width, generator)) for _ in range(vision_depth - 1)])
        # Not named text_prompts: the run record reports prompts.templates for learners that follow it; VPT does not.
        self.fixed_prompts = TextPrompts(list(templates or VPT_TEMPLATES))
        self.templates = self.fixed_prompts.templates

    def set_classnames(self, clip: FrozenCLIP, classnames: list[str]) -> None:
        self.classnames = list(classnames)
        self.register_buffer("text_features", self.fixed_prompts.class_embeddings(clip, classnames), persistent=False)

    def vision_prompts(self) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
        return self.vision_ctx, list(self.vision_deep)

    def forward(self, clip: FrozenCLIP, image_features: torch.Tensor | None = None) -> torch.Tensor:
        return self.text_features
