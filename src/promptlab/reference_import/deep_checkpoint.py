"""The reference's MaPLe, IVLP (and deep-language), PromptSRC and VPT checkpoints to promptlab's learner tensors.

Read in muzairkhattak/multimodal-prompt-learning (commit 69bce21: trainers/maple.py, trainers/independentVL.py,
trainers/vpt.py, clip/model.py) and muzairkhattak/PromptSRC (commit bb95c77: trainers/promptsrc.py,
clip/model.py). These trainers register the WHOLE CustomCLIP with Dassl (`register_model(name, self.model, ...)`),
so `model.pth.tar-N` (under `MultiModalPromptLearner/`, `VLPromptLearner/` or `prompt_learner/`) holds the frozen
CLIP too, under the CustomCLIP's attribute names:

- `prompt_learner.ctx` [n_ctx, W_t]; `prompt_learner.token_prefix` / `token_suffix` (fixed, fp16 under PREC=fp16);
- MaPLe: `prompt_learner.proj.{weight,bias}` (block-0 image tokens = proj(ctx)),
  `prompt_learner.compound_prompts_text.{j}` (text tokens of block j+1) and
  `prompt_learner.compound_prompt_projections.{j}.{weight,bias}` (their image tokens);
- IVLP / PromptSRC / VPT: the tokens live inside the encoders (ResidualAttentionBlock_IVLP, VisionTransformer):
  `image_encoder.VPT` [n, W_v] (block-0 image tokens, before ln_pre), and
  `{text,image}_encoder.transformer.resblocks.{i}.VPT_shallow` for blocks i = 1..depth-1;
- PromptSRC: also `prompt_learner.ZS_image_encoder.*`, a second frozen image tower (the teacher);
- the frozen weights: `text_encoder.{transformer,positional_embedding,ln_final,text_projection}*`,
  `image_encoder.*` (the image tower, OpenAI names) and `logit_scale`.

The frozen weights are not imported (promptlab takes them from the named model config); they are compared with
that model's, a stronger backbone check than the start token alone.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from promptlab.errors import ConfigError

DEEP_METHODS = ("vpt", "ivlp", "ivlp_language", "maple", "promptsrc")

_TEXT_DEEP = re.compile(r"^text_encoder\.transformer\.resblocks\.(\d+)\.VPT_shallow$")
_IMAGE_DEEP = re.compile(r"^image_encoder\.transformer\.resblocks\.(\d+)\.VPT_shallow$")
_MAPLE_TEXT = re.compile(r"^compound_prompts_text\.(\d+)$")
_MAPLE_PROJ = re.compile(r"^compound_prompt_projections\.(\d+)\.(weight|bias)$")
_IMAGE_CTX = "image_encoder.VPT"
_FIXED = ("token_prefix", "token_suffix")
# Frozen CLIP weights under the CustomCLIP's names -> the open_clip (OpenAI-layout) model's names.
_FROZEN_PREFIXES = {"text_encoder.": "", "image_encoder.": "visual.", "ZS_image_encoder.": "visual."}


def guess_deep_method(keys: set[str]) -> str | None:
    """The reference trainer behind a deep-prompt checkpoint, or None for CoOp-family checkpoints."""
    if any(k.startswith("ZS_image_encoder.") for k in keys):
        return "promptsrc"
    if "proj.weight" in keys or any(_MAPLE_TEXT.match(k) for k in keys):
        return "maple"
    if _IMAGE_CTX in keys and "ctx" not in keys:
        return "vpt"
    if any(k.startswith(("text_encoder.", "image_encoder.")) for k in keys):
        return "ivlp" if _IMAGE_CTX in keys else "ivlp_language"
    return None


def _block_tokens(state: Mapping[str, torch.Tensor], pattern: re.Pattern, first: int, what: str) -> list[str]:
    """Keys of per-block tokens in block order; the blocks must be first, first+1, ... (no gaps)."""
    found = sorted((int(m.group(1)), k) for k in state if (m := pattern.match(k)))
    blocks = [i for i, _ in found]
    if blocks != list(range(first, first + len(blocks))):
        raise ConfigError(f"the checkpoint's {what} are for blocks {blocks}, expected {first}, {first + 1}, ... "
                          "without gaps (the reference gives fresh tokens to every block below the depth).")
    return [k for _, k in found]


class _Taken:
    """What the mapping has taken from a checkpoint so far: promptlab's tensors, the checkpoint keys they came
    from, and the learner-shape overrides they imply."""

    def __init__(self, state: Mapping[str, torch.Tensor], method: str) -> None:
        self.state, self.method = state, method
        self.kept: dict[str, torch.Tensor] = {}
        self.used: set[str] = set()
        self.shape = [f"method={method}"]

    def take(self, src: str, dst: str) -> torch.Tensor:
        self.used.add(src)
        self.kept[dst] = self.state[src].detach().float()  # PREC=fp16 stores some of them as fp16
        return self.kept[dst]


def _take_maple_tokens(taken: _Taken) -> None:
    """MaPLe: text tokens per block with the projections that make their image tokens."""
    state = taken.state
    text = _block_tokens(state, _MAPLE_TEXT, 0, "compound_prompts_text")
    for j, key in enumerate(text):
        taken.take(key, f"text_deep.{j}")
        for part in ("weight", "bias"):
            taken.take(f"compound_prompt_projections.{j}.{part}", f"vision_deep_proj.{j}.{part}")
    for part in ("weight", "bias"):
        taken.take(f"proj.{part}", f"vision_proj.{part}")
    taken.shape.append(f"method.learner.depth={1 + len(text)}")
    extra = [k for k in state if _MAPLE_PROJ.match(k) and k not in taken.used]
    if extra:
        raise ConfigError(f"compound_prompt_projections without text tokens of the same depth: {extra}.")


def _take_encoder_tokens(taken: _Taken) -> None:
    """IVLP, deep language prompts, PromptSRC, VPT: the tokens that live inside the text and image encoders."""
    state, method = taken.state, taken.method
    if method != "vpt":
        text = _block_tokens(state, _TEXT_DEEP, 1, "text-encoder VPT_shallow tokens")
        for j, key in enumerate(text):
            taken.take(key, f"text_deep.{j}")
        taken.shape.append(f"method.learner.text_depth={1 + len(text)}")
    image = _block_tokens(state, _IMAGE_DEEP, 1, "image-encoder VPT_shallow tokens")
    if method == "ivlp_language":
        if _IMAGE_CTX in state or image:
            raise ConfigError("the checkpoint has image-tower tokens (image_encoder.VPT): pass --method ivlp.")
        return
    if _IMAGE_CTX not in state:
        raise ConfigError(f"a {method} checkpoint has image_encoder.VPT (the block-0 image tokens); this "
                          "one has none: pass --method ivlp_language for a text-only checkpoint.")
    taken.shape.append(f"method.learner.n_ctx_vision={int(taken.take(_IMAGE_CTX, 'vision_ctx').shape[0])}")
    for j, key in enumerate(image):
        taken.take(key, f"vision_deep.{j}")
    taken.shape.append(f"method.learner.vision_depth={1 + len(image)}")


def _left_out(taken: _Taken) -> list[str]:
    """The keys not taken, with the reason; a key the mapping does not know is kept for the strict load."""
    dropped, frozen = [], 0
    for key, value in taken.state.items():
        if key in taken.used:
            continue
        if key in _FIXED:
            dropped.append(f"{key} (fixed token embeddings, rebuilt from the class names as the reference does)")
        elif key == "logit_scale" or key.startswith(tuple(_FROZEN_PREFIXES)):
            frozen += 1
        else:
            taken.kept[key] = value.detach().float()  # unknown to the mapping: the learner's strict load names it
    if frozen:
        dropped.append(f"{frozen} frozen CLIP tensors (text_encoder.*, image_encoder.*, logit_scale"
                       f"{', ZS_image_encoder.*' if taken.method == 'promptsrc' else ''}): the backbone comes from "
                       "the model config, compared with them")
    return dropped


def deep_learner_state(
    state: Mapping[str, torch.Tensor], method: str,
) -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
    """(promptlab's learner tensors, float32; the keys left out with the reason; the learner-shape overrides)."""
    if method not in DEEP_METHODS:
        raise ConfigError(f"--method {method!r}: the deep-prompt methods are {DEEP_METHODS}.")
    taken = _Taken(state, method)
    if method != "vpt":
        if "ctx" not in state:
            raise ConfigError(f"a {method} checkpoint has prompt_learner.ctx; this one has none (keys: "
                              f"{sorted(state)[:8]} ...). Pass the trainer's model.pth.tar-N, or --method.")
        taken.shape.append(f"method.learner.n_ctx={int(taken.take('ctx', 'ctx').shape[0])}")
    if method == "maple":
        _take_maple_tokens(taken)
    else:
        _take_encoder_tokens(taken)
    dropped = _left_out(taken)
    return taken.kept, dropped, taken.shape


def check_deep_backbone(state: Mapping[str, torch.Tensor], clip: Any, model_name: str, path: Any) -> str:
    """Token widths against the backbone's, and the checkpoint's frozen CLIP weights against its weights (fp16
    round-off allowed: the reference keeps CLIP in fp16 under PREC=fp16). Raises BackboneCheckError."""
    from promptlab.reference_import.checkpoint import BackboneCheckError

    hint = "Name the model config it was trained with (e.g. model=vit_b16 model.weights_file=/models/ViT-B-16.pt)."
    widths = {"ctx": ("text context", clip.ctx_dim), _IMAGE_CTX: ("image tokens", clip.vision_width)}
    for key, (what, width) in widths.items():
        if key in state and state[key].shape[-1] != width:
            raise BackboneCheckError(f"{path}: the {what} ({key}) are {state[key].shape[-1]}-wide, model "
                                     f"{model_name}'s are {width}-wide: another backbone. {hint}")
    ours = clip.model.state_dict()
    compared = 0
    for key, value in state.items():
        if "VPT" in key:
            continue
        name = "logit_scale" if key == "logit_scale" else next(
            (new + key[len(old):] for old, new in _FROZEN_PREFIXES.items() if key.startswith(old)), None)
        if name is None or name not in ours or ours[name].shape != value.shape:
            continue
        if not torch.allclose(value.float().cpu(), ours[name].float().cpu(), rtol=1e-2, atol=1e-3):
            diff = float((value.float().cpu() - ours[name].float().cpu()).abs().max())
            raise BackboneCheckError(f"{path}: its frozen CLIP weight {key} differs from model {model_name}'s "
                                     f"{name} by up to {diff:.3g}: trained on other weights. {hint}")
        compared += 1
    if compared:
        return f"token widths and {compared} frozen CLIP tensors equal this backbone's"
    return "token widths only (the checkpoint has no frozen CLIP tensors under names this backbone has)"


def check_fixed_words(state: Mapping[str, torch.Tensor], learner: Any, clip: Any, path: Any) -> str:
    """The init phrase's tokens after the learned context (kept as fixed words by the reference) must open every
    row of the checkpoint's token_suffix. Raises LayoutCheckError. Without --classnames only these words are
    compared; with them check_layout compares the whole suffix."""
    from promptlab.reference_import.checkpoint import LayoutCheckError

    suffix, n_ctx = state.get("token_suffix"), int(learner.n_ctx or 0)
    if suffix is None or not n_ctx:
        return "fixed words not checked (no token_suffix)"
    text = learner.ctx_text
    tokens = clip.tokenize([text])
    tail = clip.embed_tokens(tokens)[0, 1 + n_ctx : int(clip.eot_index(tokens)[0])].detach().float().cpu()
    if tail.shape[0] == 0:
        return f"no fixed words after the {n_ctx} context vectors (the whole phrase {text!r} is learned)"
    theirs = suffix[:, : tail.shape[0]].float().cpu()
    if theirs.shape[1] != tail.shape[0] or not torch.allclose(theirs, tail.expand_as(theirs), rtol=1e-2, atol=1e-3):
        raise LayoutCheckError(
            f"{path}: the tokens after the context are not the rest of the init phrase {text!r} ({tail.shape[0]} "
            f"fixed token(s) after n_ctx={n_ctx}): the reference run used another phrase or random context. Pass "
            "method.learner.ctx_init=<its phrase>, or method.learner.ctx_init=null for a random-initialised one.")
    return f"the {tail.shape[0]} fixed token(s) of {text!r} after the context equal the checkpoint's token_suffix"
