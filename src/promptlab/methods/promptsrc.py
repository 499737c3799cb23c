"""PromptSRC: IVLP prompts regulated by frozen CLIP (Khattak et al., ICCV 2023; muzairkhattak/PromptSRC,
trainers/promptsrc.py, read at commit bb95c77).

Loss per batch of B images and C classes, on top of the cross-entropy (PromptSRC.forward_backward):
- text: `text_loss_weight * mean |t_c - t_c^zs|` over C x D, t_c^zs the frozen teacher embedding: the mean
  of the UNnormalised features of the class under every teacher template, normalised afterwards (the
  reference's `fixed_embeddings`; CLIP-style ensembling would normalise each template first);
- image: `image_loss_weight * mean |v - v^zs|` over B x D, v^zs the frozen tower's feature of the same
  augmented image;
- logits: `sum p_zs (log p_zs - log p) / (B C)` (F.kl_div with reduction 'sum' divided by logits.numel(): C
  times smaller than 'batchmean'), zero-shot logits `logit_scale * v^zs . t^zs`, temperature 1.
Gaussian prompt aggregation (GPA): after epoch e (1..E) the prompts are added with weight
w_e ∝ N(e; gpa_mean, gpa_std), the weights normalised over the E epochs, and the sum replaces the prompts
when training ends. The reference sums the whole state_dict (frozen weights included, in fp16); promptlab
averages the learned tensors only, the clean equivalent.

Defaults (PromptSRCMethodConf, the reference's configs/trainers/PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx.yaml):
4 + 4 tokens, depth 9 / 9, weights 25 (text) and 10 (image), SGD lr 0.0025, 20 epochs, batch 4, GPA mean 15
std 1. The reference's cross-dataset / DG setting: depth 3 / 3, GPA mean 6 std 10; few-shot: 50 epochs, GPA
mean 30 std 30 or mean 45 std 5 by dataset.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F

from promptlab.config.method import MethodConf, MethodLoaderConf, OptimConf
from promptlab.errors import ConfigError
from promptlab.methods.base import Loss, TrainingStep
from promptlab.methods.deep_prompts import DeepPromptOptions, deep_optim
from promptlab.methods.ivlp import IVLPLearnerConf, IVLPPrompts
from promptlab.methods.registry import register_method
from promptlab.models.frozen import FrozenCLIP

#: PromptSRC's teacher templates (trainers/imagenet_templates.py IMAGENET_TEMPLATES, the same for every
#: dataset) are the first 60 of CLIP's 80 ImageNet templates, with "a photo of a {}." listed first; the order
#: does not matter for their mean.
N_TEACHER_TEMPLATES = 60


def reference_teacher_templates() -> list[str]:
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    return [template("{}") for template in OPENAI_IMAGENET_TEMPLATES[:N_TEACHER_TEMPLATES]]


def gpa_weights(mean: float, std: float, epochs: int) -> torch.Tensor:
    """w_e ∝ N(e; mean, std) for e = 1..epochs, normalised to sum 1 (float64) (PromptSRC.get_gauss)."""
    if std <= 0:
        raise ConfigError(f"method.learner.gpa_std={std}: the Gaussian's standard deviation must be > 0.")
    e = torch.arange(1, epochs + 1, dtype=torch.float64)
    density = torch.exp(-0.5 * ((e - mean) / std) ** 2) / (std * math.sqrt(2 * math.pi))
    if float(density.sum()) == 0.0:
        raise ConfigError(f"GPA: N(e; {mean}, {std}) underflows to 0 on every epoch 1..{epochs}; choose gpa_mean "
                          "inside the schedule or a larger gpa_std.")
    return density / density.sum()


def self_regulating_losses(
    text_features: torch.Tensor, teacher_text: torch.Tensor, image_features: torch.Tensor,
    teacher_image: torch.Tensor, logits: torch.Tensor, teacher_logits: torch.Tensor,
    text_weight: float, image_weight: float, logit_weight: float,
) -> dict[str, torch.Tensor]:
    """The three PromptSRC terms (all features L2-normalised), weighted as the reference."""
    kl = F.kl_div(F.log_softmax(logits, dim=1), F.log_softmax(teacher_logits, dim=1), reduction="sum",
                  log_target=True) / logits.numel()
    return {
        "l1_text": text_weight * F.l1_loss(text_features, teacher_text, reduction="mean"),
        "l1_image": image_weight * F.l1_loss(image_features, teacher_image, reduction="mean"),
        "kl_logits": logit_weight * kl,
    }


def _learner(pl_module: L.LightningModule) -> torch.nn.Module:
    """The prompt learner the Lightning module trains (its `learner`)."""
    learner = pl_module.learner
    assert isinstance(learner, torch.nn.Module)
    return learner


class GaussianPromptAggregation(L.Callback):
    """GPA over the learner's trainable tensors: sum_e w_e * theta_e, loaded when the last epoch has ended.

    Lightning's WeightAveraging callback was not used: it deep-copies the whole LightningModule (the frozen
    CLIP with it) into an AveragedModel and averages every parameter and buffer of it; GPA needs only the few
    learned tensors and per-epoch weights that are known in advance."""

    def __init__(self, mean: float, std: float) -> None:
        self.mean, self.std = mean, std
        self.weights: torch.Tensor | None = None
        self.sums: dict[str, torch.Tensor] = {}
        self.epochs_added = 0
        self._restored = False  # a resumed run (in-run checkpoint) continues the sums it saved

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        assert trainer.max_epochs is not None, "Gaussian prompt aggregation weighs a fixed number of epochs"
        self.weights = gpa_weights(self.mean, self.std, int(trainer.max_epochs))
        if not self._restored:
            self.sums, self.epochs_added = {}, 0
        self._restored = False

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        assert self.weights is not None
        weight = float(self.weights[trainer.current_epoch])
        for name, param in _learner(pl_module).named_parameters():
            if param.requires_grad:
                term = param.detach().double() * weight  # float64 sums: 20 terms, no rounding worth a thought
                self.sums[name] = term if name not in self.sums else self.sums[name] + term
        self.epochs_added += 1

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Only a complete schedule has weights that sum to 1 (an interrupted run keeps its last prompts).
        if self.weights is None or self.epochs_added != len(self.weights):
            return
        with torch.no_grad():
            for name, param in _learner(pl_module).named_parameters():
                if name in self.sums:
                    param.copy_(self.sums[name].to(param.dtype))

    def state_dict(self) -> dict[str, Any]:
        return {"sums": self.sums, "epochs_added": self.epochs_added}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.sums = dict(state_dict.get("sums", {}))
        self.epochs_added = int(state_dict.get("epochs_added", 0))
        self._restored = True


@dataclass
class PromptSRCLearnerConf(IVLPLearnerConf):
    """configs/trainers/PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx.yaml: IVLP 4 + 4 tokens, depth 9 / 9, loss
    weights 25 (text L1) and 10 (image L1), the KL unweighted; GPA mean 15, std 1 over 20 epochs.
    teacher_templates null: the reference's 60 (the first 60 of CLIP's 80 ImageNet templates)."""

    _target_: str = "promptlab.methods.promptsrc.PromptSRCPrompts"
    n_ctx: int = 4
    text_depth: int = 9
    n_ctx_vision: int = 4
    vision_depth: int = 9
    text_loss_weight: float = 25.0
    image_loss_weight: float = 10.0
    logit_loss_weight: float = 1.0
    gpa: bool = True
    gpa_mean: float = 15.0
    gpa_std: float = 1.0
    teacher_templates: list[str] | None = None


@dataclass
class PromptSRCMethodConf(MethodConf):
    name: str = "promptsrc"
    display_name: str = "PromptSRC"
    learner: PromptSRCLearnerConf = field(default_factory=PromptSRCLearnerConf)
    optim: OptimConf = field(default_factory=lambda: deep_optim(0.0025, 20))
    loader: MethodLoaderConf = field(default_factory=lambda: MethodLoaderConf(batch_size=4))


@register_method(PromptSRCMethodConf)
class PromptSRCPrompts(IVLPPrompts):
    teacher_text: torch.Tensor  # buffer: the frozen text tower's class embeddings (the teacher)
    def __init__(
        self,
        clip: FrozenCLIP,
        n_ctx: int = PromptSRCLearnerConf.n_ctx,
        ctx_init: str | None = PromptSRCLearnerConf.ctx_init,
        text_depth: int = PromptSRCLearnerConf.text_depth,
        n_ctx_vision: int = PromptSRCLearnerConf.n_ctx_vision,
        vision_depth: int = PromptSRCLearnerConf.vision_depth,
        text_loss_weight: float = PromptSRCLearnerConf.text_loss_weight,
        image_loss_weight: float = PromptSRCLearnerConf.image_loss_weight,
        logit_loss_weight: float = PromptSRCLearnerConf.logit_loss_weight,
        gpa: bool = PromptSRCLearnerConf.gpa,
        gpa_mean: float = PromptSRCLearnerConf.gpa_mean,
        gpa_std: float = PromptSRCLearnerConf.gpa_std,
        teacher_templates: list[str] | None = None,
        keep_init_tail: bool = PromptSRCLearnerConf.keep_init_tail,
        fp16_prompts: bool = DeepPromptOptions.fp16_prompts,
        recompute_blocks: bool = DeepPromptOptions.recompute_blocks,
        init_seed: int | None = None,
    ) -> None:
        super().__init__(clip, n_ctx=n_ctx, ctx_init=ctx_init, text_depth=text_depth, n_ctx_vision=n_ctx_vision,
                         vision_depth=vision_depth, keep_init_tail=keep_init_tail, fp16_prompts=fp16_prompts,
                         recompute_blocks=recompute_blocks, init_seed=init_seed)
        self.text_loss_weight, self.image_loss_weight = text_loss_weight, image_loss_weight
        self.logit_loss_weight = logit_loss_weight
        self.gpa, self.gpa_mean, self.gpa_std = gpa, gpa_mean, gpa_std
        self.teacher_templates = list(teacher_templates) if teacher_templates else reference_teacher_templates()

    def set_classnames(self, clip: FrozenCLIP, classnames: list[str]) -> None:
        super().set_classnames(clip, classnames)
        self.register_buffer("teacher_text", teacher_text_embeddings(clip, self.teacher_templates, classnames),
                             persistent=False)

    def training_loss(self, clip: FrozenCLIP, step: TrainingStep) -> Loss:
        loss = super().training_loss(clip, step)
        assert step.text_features is not None
        loss.terms.update(self.loss_terms(clip, step.images, step.image_features, step.text_features, step.logits))
        return loss

    def loss_terms(self, clip: FrozenCLIP, images: torch.Tensor | None, image_features: torch.Tensor,
                   text_features: torch.Tensor, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        """The self-regulating terms added to the cross-entropy (logged as train/<name>)."""
        with torch.no_grad():
            # The frozen tower on the same (augmented) images; without image tokens the features are frozen ones.
            teacher_image = clip.encode_image(images) if images is not None else image_features.detach().float()
            teacher_logits = clip.logit_scale() * teacher_image @ self.teacher_text.t()
        return self_regulating_losses(text_features.float(), self.teacher_text, image_features.float(), teacher_image,
                                      logits.float(), teacher_logits, self.text_loss_weight, self.image_loss_weight,
                                      self.logit_loss_weight)

    def callbacks(self) -> list[L.Callback]:
        return [GaussianPromptAggregation(self.gpa_mean, self.gpa_std)] if self.gpa else []


@torch.no_grad()
def teacher_text_embeddings(clip: FrozenCLIP, templates: list[str], classnames: list[str]) -> torch.Tensor:
    """PromptSRC's frozen text targets [C, D]: per class the mean of the unnormalised features over the templates,
    then L2-normalised."""
    names = [name.replace("_", " ") for name in classnames]
    total = None
    for template in templates:
        tokens = clip.tokenize([template.format(name) for name in names])
        feats = clip.adapter.encode_tokens(tokens, truncate=clip.truncate_text).float()
        total = feats if total is None else total + feats
    assert total is not None, "at least one teacher template"
    return F.normalize(total / len(templates), dim=-1)
