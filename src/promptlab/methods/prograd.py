"""ProGrad: CoOp whose update never fights the zero-shot prediction (Zhu et al., ICCV 2023, "Prompt-aligned
gradient for prompt tuning").

Each step computes two gradients of the context: g_ce of the cross-entropy and g_kl of the distillation loss
towards zero-shot CLIP's logits, KL(softmax(zs / T) || softmax(student / T)) * T^2 (its gradient; the reference
computes it as a soft-target cross-entropy). Where they conflict (g_ce . g_kl < 0) the step follows
g_ce - lambda * (g_ce . g_kl / |g_kl|^2) g_kl, i.e. g_ce with (a fraction lambda of) its component along g_kl
removed; otherwise g_ce unchanged. The KL gradient itself is never applied. The rule is applied per parameter
tensor, as the reference (Prompt-align, Dassl.ProGrad.pytorch/dassl/engine/trainer.py::
prograd_backward_and_update; trainers/prograd.py::ProGradLoss), with lambda 1.0 and T 1.0 by default.

Initialisation (the reference's PromptLearner with CTX_INIT): n_ctx = 16 slots; the dataset's ProGrad template
without " {}." fills the *last* slots and the leading ones are zeros. The reference counts the phrase by
space-separated words but takes that many BPE tokens, so a phrase with punctuation ("a type of pet, a photo of
a": 8 words, 9 tokens) leaves its last tokens as fixed words after the context: `init_split="words"` keeps
that; "tokens" learns every token of the phrase. The zero-shot teacher uses the same template, in fp32.

Lightning calls backward on what training_step returns; `gradient_surgery` computes both gradients with
torch.autograd.grad and returns a surrogate whose value is the loss and whose gradient is the projected one.
Mixed precision scales the surrogate like any loss. Under DDP each rank projects the gradients of its own batch
and Lightning averages the projected gradients; the reference runs on one GPU (or DataParallel, which projects
the whole batch's gradient), so multi-GPU ProGrad is close to, not identical with, one large batch.

Defaults (ProGradMethodConf): the reference's public configs are ResNet-50 only (batch 32, SGD lr 0.002, one
warm-up epoch at 1e-5 then cosine, 50/100/200 epochs for 1/2-4/8-16 shots; base-to-novel scripts: 4 shots,
100 epochs); promptlab runs the rule with CoOp's ViT-B/16 schedule (same optimiser, batch and lr, epochs by
shots). Quirks kept as options: learner.init_split=words, learner.reference_templates=true (false: the
config's templates and ctx_init). csc=true with an init phrase copies the init into every class (the
reference silently falls back to one shared context).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import torch
import torch.nn.functional as F

from promptlab.config.method import II, PROMPT_DESCRIPTIONS_SHA256, PROMPT_TEMPLATES, MethodConf
from promptlab.errors import ConfigError
from promptlab.methods.base import Loss, TrainingStep
from promptlab.methods.coop import CoOpLearnerConf, CoOpPrompts
from promptlab.methods.prompts import TextPrompts
from promptlab.methods.registry import register_method
from promptlab.models.frozen import FrozenCLIP

#: ProGrad's per-dataset hand-written prompts (Prompt-align, ProGrad.public/trainers/prograd.py::CUSTOM_TEMPLATES),
#: keyed by promptlab's dataset names. They differ from CoOp's and KgCoOp's (e.g. DTD "a texture of {}.").
PROGRAD_TEMPLATES: dict[str, str] = {
    "oxford_pets": "a type of pet, a photo of a {}.",
    "oxford_flowers": "a type of flower, a photo of a {}.",
    "fgvc_aircraft": "a type of aircraft, a photo of a {}.",
    "dtd": "a texture of {}.",
    "eurosat": "a centered satellite photo of {}.",
    "stanford_cars": "a photo of a {}.",
    "food101": "a type of food, a photo of {}.",
    "sun397": "a photo of a {}.",
    "caltech101": "a photo of a {}.",
    "ucf101": "a photo of a person doing {}.",
    "imagenet": "a photo of a {}.",
    "imagenet_sketch": "a photo of a {}.",
    "imagenet_v2": "a photo of a {}.",
    "imagenet_a": "a photo of a {}.",
    "imagenet_r": "a photo of a {}.",
}

INIT_SPLITS = ("words", "tokens")


def project_conflicting(g_ce: torch.Tensor, g_kl: torch.Tensor, lambda_: float = 1.0) -> torch.Tensor:
    """ProGrad's rule for one parameter tensor: g_ce minus lambda times its projection on g_kl when the two
    point against each other (negative dot product), else g_ce itself.

    The reference normalises both gradients and divides by their norms; a zero gradient gives NaN there, which
    compares as "no conflict" and leaves g_ce unchanged. The sign of the plain dot product is the same test and
    a zero g_kl (or g_ce) is likewise left unchanged, without NaNs.
    """
    dot = torch.dot(g_ce.flatten().double(), g_kl.flatten().double())
    if not dot < 0:
        return g_ce
    scale = dot / torch.dot(g_kl.flatten().double(), g_kl.flatten().double())
    return (g_ce.double() - lambda_ * scale * g_kl.double()).to(g_ce.dtype)


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """The reference's KL term: mean over the batch of sum_c -softmax(teacher/T) log_softmax(student/T) * T^2
    (a soft-target cross-entropy: the teacher's entropy, constant, is left out; same gradient as the KL)."""
    target = F.softmax(teacher / temperature, dim=-1)
    return (-(target * F.log_softmax(student / temperature, dim=-1)).sum(dim=-1)).mean() * temperature**2


def zero_padded_context(clip: FrozenCLIP, n_ctx: int, phrase: str, init_split: str = "words"):
    """The reference's init: (context [n_ctx, W] with the phrase's vectors in the last slots and zeros before,
    prompt text "X .. X <phrase>")."""
    if init_split not in INIT_SPLITS:
        raise ConfigError(f"method.learner.init_split={init_split!r}; expected one of {INIT_SPLITS}.")
    text = phrase.replace("_", " ").strip()
    tokens = clip.tokenize([text])
    n_tokens = clip.token_count(text)
    n_init = len(text.split(" ")) if init_split == "words" else n_tokens
    n_init = min(n_init, n_tokens)
    if n_ctx < n_init:
        raise ConfigError(
            f"method.learner.n_ctx={n_ctx} is shorter than the init phrase {text!r} ({n_init} "
            f"{init_split}): ProGrad puts the phrase in the last context slots; raise n_ctx to at least {n_init}."
        )
    vectors = torch.zeros(n_ctx, clip.ctx_dim)
    vectors[n_ctx - n_init :] = clip.embed_tokens(tokens)[0, 1 : 1 + n_init].float()
    prompt = " ".join(["X"] * (n_ctx - n_init) + [text])
    return vectors, prompt


class ProGradInitSplit(str, Enum):
    words = "words"  # the reference: as many BPE tokens as the phrase has space-separated words are learned
    tokens = "tokens"  # every BPE token of the phrase is learned


@dataclass
class ProGradLearnerConf(CoOpLearnerConf):
    """ProGrad (Prompt-align, trainers/prograd.py): 16 slots, the init phrase in the last ones and zeros before;
    with reference_templates the dataset's ProGrad template (PROGRAD_TEMPLATES) is both the zero-shot teacher's
    prompt and the init phrase; datasets it lacks use `templates` and `ctx_init`."""

    _target_: str = "promptlab.methods.ProGradPrompts"
    n_ctx: int = 16
    ctx_init: str | None = "a photo of a"
    reference_templates: bool = True
    dataset: str = II("dataset.name")
    init_split: ProGradInitSplit = ProGradInitSplit.words
    prograd_lambda: float = 1.0  # LOSS.LAMBDA (README: 0.8 for 8/16 shots on Flowers, DTD, EuroSAT)
    temperature: float = 1.0  # LOSS.T
    templates: list[str] = II(PROMPT_TEMPLATES)
    descriptions: str | None = II("prompts.descriptions")
    descriptions_sha256: str | None = II(PROMPT_DESCRIPTIONS_SHA256)
    combine_templates: bool = II("prompts.combine")


@dataclass
class ProGradMethodConf(MethodConf):
    """The reference's configs are RN50 only (batch 32, SGD lr 0.002, warm-up + cosine, epochs by shots): the
    defaults here are CoOp's ViT-B/16 schedule, which is the same optimiser with epochs by shots."""

    name: str = "prograd"
    display_name: str = "ProGrad"
    learner: ProGradLearnerConf = field(default_factory=ProGradLearnerConf)


@register_method(ProGradMethodConf)
class ProGradPrompts(CoOpPrompts):
    text_prompts: TextPrompts  # always set by the constructor
    zeroshot_features: torch.Tensor  # buffer: the teacher of the current class list
    """CoOp context trained with ProGrad's projected gradient (see the module docstring)."""

    def __init__(
        self,
        clip: FrozenCLIP,
        templates: list[str],
        n_ctx: int = ProGradLearnerConf.n_ctx,
        ctx_init: str | None = ProGradLearnerConf.ctx_init,
        reference_templates: bool = ProGradLearnerConf.reference_templates,
        dataset: str | None = None,
        init_split: str = ProGradLearnerConf.init_split,
        prograd_lambda: float = ProGradLearnerConf.prograd_lambda,
        temperature: float = ProGradLearnerConf.temperature,
        descriptions: str | None = None,
        descriptions_sha256: str | None = None,
        combine_templates: bool = False,
        **coop_kwargs: Any,
    ) -> None:
        init_split = str(getattr(init_split, "value", init_split))  # an Enum from configs
        if temperature <= 0:
            raise ConfigError(f"method.learner.temperature={temperature}: the distillation temperature must be > 0.")
        # With the reference's table, the dataset's ProGrad template is both the teacher's prompt and the init
        # phrase (when an init is asked for at all); other datasets (the toy world) use the config's.
        template = PROGRAD_TEMPLATES.get(str(dataset)) if reference_templates else None
        if template is not None:
            templates = [template]
            if ctx_init:
                ctx_init = template.replace(" {}.", "")
        self.template_source = "prograd_reference" if template is not None else "config"
        super().__init__(clip, n_ctx=n_ctx, ctx_init=None, **coop_kwargs)
        if ctx_init:
            vectors, self.ctx_text = zero_padded_context(clip, n_ctx, ctx_init, init_split)
            with torch.no_grad():
                self.ctx.copy_(vectors.expand_as(self.ctx))
        self.text_prompts = TextPrompts(templates, descriptions, descriptions_sha256, combine_templates)
        self.templates = self.text_prompts.templates
        self.prograd_lambda = float(prograd_lambda)
        self.temperature = float(temperature)

    def set_classnames(self, clip: FrozenCLIP, classnames: list[str]) -> None:
        super().set_classnames(clip, classnames)
        # The teacher: zero-shot CLIP's classifier from the hand-written prompt, fixed (the reference's CLIP class).
        self.register_buffer("zeroshot_features", self.text_prompts.class_embeddings(clip, classnames).float(),
                             persistent=False)

    @classmethod
    def config_problems(cls, learner: Any, count_tokens: Callable[[str], int] | None = None) -> list[str]:
        # The phrase goes after zero vectors, so n_ctx only has to hold it (checked with the dataset's template
        # when the learner is built); not CoOp's one-vector-per-token rule.
        found = []
        if learner.n_ctx < 1:
            found.append(f"method.learner.n_ctx={learner.n_ctx}: a context needs at least one vector (n_ctx >= 1).")
        if learner.temperature <= 0:
            found.append(f"method.learner.temperature={learner.temperature}: the distillation temperature must be "
                         "> 0.")
        return found

    def training_loss(self, clip: FrozenCLIP, step: TrainingStep) -> Loss:
        """The cross-entropy, back-propagated through ProGrad's surrogate (its gradient is the projected one)."""
        loss = super().training_loss(clip, step)
        surrogate, logged = self.gradient_surgery(clip, step.image_features, step.logits, step.labels, loss.total)
        return Loss(loss.terms, logged=logged, surrogate=surrogate)

    def teacher_logits(self, clip: FrozenCLIP, image_features: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return clip.logit_scale().float() * image_features.float() @ self.zeroshot_features.t()

    def gradient_surgery(
        self, clip: FrozenCLIP, image_features: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor,
        loss: torch.Tensor,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(surrogate, logs): the surrogate's value is `loss` and its gradient w.r.t. this learner's trainable
        tensors is ProGrad's projection of loss's gradient against the KL gradient."""
        params = [p for p in self.parameters() if p.requires_grad]
        kl = distillation_loss(logits.float(), self.teacher_logits(clip, image_features), self.temperature)
        g_ce = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        g_kl = torch.autograd.grad(kl, params, allow_unused=True)
        surrogate = loss.detach()
        n_conflicts = 0
        for p, a, b in zip(params, g_ce, g_kl, strict=True):
            a = torch.zeros_like(p) if a is None else a
            b = torch.zeros_like(p) if b is None else b
            g = project_conflicting(a, b, self.prograd_lambda)
            n_conflicts += int(g is not a)
            # (g * p).sum() has gradient g; subtracting its value keeps the surrogate's value equal to the loss.
            term = (g.detach() * p).sum()
            surrogate = surrogate + (term - term.detach())
        logs = {"kl": kl.detach(), "conflict": torch.tensor(n_conflicts / max(len(params), 1))}
        return surrogate, logs
