"""The frozen CLIP model: embeddings, logits, and the text encoder run on injected token embeddings.

An embedding is the encoder's feature after its projection, L2-normalised; logits are
`logit_scale.exp()` times the cosine between image and class-text embeddings (CLIP, Radford et al. 2021).
Prompt learners never touch open_clip internals: they build token embeddings and call
`encode_token_embeddings`, which runs the text tower through its validated description (adapter.py) exactly
as open_clip's `encode_text` does.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from promptlab.errors import ConfigError
from promptlab.models.adapter import (
    ClipAdapter,
    describe,
    encode_image_tower,
    encode_text_tower,
    preprocess_config,
    text_tower,
)
from promptlab.models.shared_prefix import encode_shared_prefix
from promptlab.models.tokens import phrase_token_count

log = logging.getLogger(__name__)


def encode_text_embeddings(
    model: nn.Module, embeddings: torch.Tensor, eot_index: torch.Tensor, truncate: bool = True
) -> torch.Tensor:
    """open_clip's `encode_text` from token embeddings [N, T, W]: projected features at the EOT index [N, D].

    With `truncate`, only the first L = max(EOT) + 1 positions run: the transformer is causal, so the
    feature at EOT depends only on the tokens before it, and slicing the positional embedding and the
    mask to L gives the same features at a fraction of the cost (docs/reference.md, "Text-encoder truncation").
    Truncation is applied only where the adapter finds it exact (causal mask, pooling at the end token).
    """
    text = text_tower(model, type(model).__name__)
    exact = text.causal and text.pool in ("argmax", "eos")
    return encode_text_tower(text, embeddings, eot_index, truncate and exact, type(model).__name__)


class BackboneMismatchError(ConfigError):
    """A saved prompt was learned on another backbone (architecture or weights) than the run's model."""


class FrozenCLIP(nn.Module):
    """An open_clip CLIP model with every weight frozen and the module pinned to eval mode."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        weights_id: str,
        truncate_text: bool = True,
        share_prefix: bool = True,
        name: str | None = None,
        architecture: str | None = None,
    ) -> None:
        super().__init__()
        self.name = name or type(model).__name__
        # Validates the towers (UnsupportedBackboneError, a ConfigError, names the model and the reason).
        self.adapter: ClipAdapter = describe(model, tokenizer, self.name, truncate_text, share_prefix)
        self.model = model
        self.tokenizer = tokenizer
        # Identifies the weights for the on-disk feature cache (a sha256 of the file, or name+tag).
        self.weights_id = weights_id
        # What a saved prompt was trained on: architecture + weights (engine/build.py compares them).
        self.architecture = architecture or self.name
        # The exact speed-ups run only where they are exact (adapter.exact_speedups): the text transformer
        # is causal and pools at the end token, so running the first L = max(EOT)+1 positions instead of all
        # of them gives the same features (docs/reference.md, "Text-encoder truncation"), and prompts that
        # start with the same tokens (CoOp's [SOS, context], one image's CoCoOp context) compute those
        # positions once (shared_prefix.py). False reproduces the reference.
        self.truncate_text = self.adapter.speedups["truncate_text"]
        self.share_prefix = self.adapter.speedups["share_prefix"]
        self._preprocess_cfg = preprocess_config(model)
        if self.adapter.speedups["reason_off"]:
            log.info("%s: %s.", self.name, self.adapter.speedups["reason_off"])
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.model.eval()

    @property
    def speedups(self) -> dict[str, Any]:
        """Exact text speed-ups on/off and why (for the run record)."""
        return dict(self.adapter.speedups)

    @property
    def fingerprint(self) -> dict[str, str]:
        """The backbone a prompt is tied to: a prompt learned on one is meaningless on another of the same width."""
        return {"architecture": self.architecture, "weights": self.weights_id}

    def record(self) -> dict[str, Any]:
        """What a run record says about the backbone: name, fingerprint, exact speed-ups, image preprocessing."""
        return {"name": self.name, "fingerprint": self.fingerprint, "speedups": self.speedups,
                "preprocess": self.preprocess_cfg}

    def check_fingerprint(self, saved: dict[str, str] | None, source: str, strict: bool = True) -> list[str]:
        """Compare the fingerprint stored with a prompt (`source`, e.g. its path) with this backbone.

        Returns the differences (empty when equal). With `strict`, a difference raises BackboneMismatchError: a
        prompt learned on one backbone loads silently into another of the same width and means nothing there
        (HM 6 %). A prompt saved before fingerprints existed (`saved` None) is refused the same way.
        """
        if saved is None:
            diffs = ["the prompt file stores no backbone fingerprint (saved before promptlab recorded it)"]
        else:
            diffs = [f"{key}: prompt {saved.get(key)!r}, this run {value!r}"
                     for key, value in self.fingerprint.items() if saved.get(key) != value]
        if diffs and strict:
            raise BackboneMismatchError(
                f"{source} was learned on another backbone than this run's {self.name}: {'; '.join(diffs)}. Load it "
                "with the model config it was trained with, or set load_prompt_strict=false to load it anyway."
            )
        return diffs

    @property
    def preprocess_cfg(self) -> dict[str, Any]:
        """open_clip's image preprocessing of the loaded model: size, mode, mean, std, interpolation, resize_mode."""
        return dict(self._preprocess_cfg)

    def train(self, mode: bool = True) -> FrozenCLIP:
        # Frozen means frozen: Lightning calls .train() on every submodule at fit start; dropout or
        # batch-norm statistics of the backbone must never change (the reference keeps CLIP in eval).
        return super().train(False)

    # ----------------------------------------------------------------- properties
    @property
    def dtype(self) -> torch.dtype:
        """The text transformer's compute dtype (float16 for model.weights_dtype=fp16, whose token embedding stays
        float32 as in the reference; feature-cache keys depend on it)."""
        return self.adapter.text.cast_dtype()

    @property
    def ctx_dim(self) -> int:
        """Width of the text transformer (the size of one context vector)."""
        return self.adapter.text.width

    @property
    def embed_dim(self) -> int:
        return self.adapter.text.embed_dim

    @property
    def vis_dim(self) -> int:
        """Size of the image embedding (input of CoCoOp's meta-net)."""
        return self.embed_dim

    @property
    def image_size(self) -> int:
        size = self.preprocess_cfg["size"]
        return int(size[0] if isinstance(size, (tuple, list)) else size)

    @property
    def context_length(self) -> int:
        """Positions of prompt sequences (`tokenize`'s layout: the text tower's, plus a virtual start slot)."""
        return self.adapter.text.context_length + self.adapter.start_slot

    def logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale.exp().float()

    # ----------------------------------------------------------------- image side
    @torch.no_grad()
    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Image embeddings, float32, shape [B, embed_dim]; L2-normalised unless `normalize=False` (the
        linear-probe reference fits un-normalised features)."""
        encode = getattr(self, "_compiled_encode_image", None) or self.model.encode_image
        features = encode(images.to(self._visual_dtype())).float()
        return F.normalize(features, dim=-1) if normalize else features

    def compile_image_tower(self, **options: Any) -> None:
        """`torch.compile` the frozen image tower's forward used by `encode_image` (model.compile_image): the
        same numbers up to kernel fusion, faster once compiled; the first batches of each shape pay the
        compilation. Kept outside the module's parameters and state (a compiled function, not a submodule)."""
        self._compiled_encode_image = torch.compile(self.model.encode_image, **options)

    def encode_image_prompted(
        self, images: torch.Tensor, prompts: torch.Tensor | None = None, deep: Sequence[torch.Tensor] = (),
        normalize: bool = True, recompute_blocks: bool = False,
    ) -> torch.Tensor:
        """Image embeddings [B, embed_dim] (float32) with learned tokens in the image tower (VPT, IVLP, MaPLe):
        `prompts` [n, W] appended before ln_pre, `deep` replacing them before blocks 1..len(deep)
        (adapter.encode_image_tower). Gradients flow through the frozen tower to the prompts."""
        features = encode_image_tower(self.adapter.vision, images, prompts, deep, recompute_blocks).float()
        return F.normalize(features, dim=-1) if normalize else features

    @property
    def vision_width(self) -> int:
        """Width of the image tower's token sequence (the size of one vision prompt; 768 for ViT-B/16)."""
        return self.adapter.vision.width

    @property
    def vision_layers(self) -> int:
        return self.adapter.vision.layers

    @property
    def text_layers(self) -> int:
        return len(self.adapter.text.transformer.resblocks)

    def check_vision_prompts(self, method: str) -> None:
        """Refuse a backbone whose image tower cannot take learned tokens, naming the model and the reason."""
        reason = self.adapter.vision.prompt_reason
        if reason:
            raise ConfigError(f"method {method} inserts learned tokens into the image tower, but {self.name}: "
                              f"{reason}. Use a ViT backbone (model=vit_b16, model=toyclip).")

    def _visual_dtype(self) -> torch.dtype:
        # The first convolution's dtype (as the reference's `image.type(self.dtype)`): with fp16 weights the
        # class/positional embeddings stay float32, so the first parameter would be the wrong guess.
        return self.adapter.vision.input_dtype

    # ----------------------------------------------------------------- text side
    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """Token ids [N, context_length] laid out as [start, text, end, padding] (adapter.py, "Prompt layout")."""
        tokens = self.adapter.tokenize(texts)
        return tokens.to(self.adapter.text.token_embedding.weight.device)

    @torch.no_grad()
    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token embeddings [N, context_length, ctx_dim] (no positional embedding yet)."""
        return self.adapter.embed_tokens(tokens)

    def eot_index(self, tokens: torch.Tensor) -> torch.Tensor:
        """Index of the end of each text (OpenAI CLIP: the EOT token, the largest id, found with argmax as in
        the reference); the pooled position for towers that pool at the end token."""
        return self.adapter.eot_index(tokens)

    def encode_token_embeddings(self, embeddings: torch.Tensor, eot_index: torch.Tensor,
                                deep: Sequence[torch.Tensor | None] = ()) -> torch.Tensor:
        """Run the text transformer on token embeddings and pool at the EOT index.

        embeddings: [N, T, ctx_dim] with T <= context_length (prompt learners may already have cut the
        sequence to the needed length); eot_index: [N]; deep: deep text prompts [n, ctx_dim] (or [N, n, ctx_dim],
        one set per prompt: TCP's class-aware tokens) for blocks 1..len(deep), replacing the n slots after the
        start token (MaPLe, IVLP); a None entry leaves that block's slots as they are. Returns normalised
        embeddings [N, embed_dim].
        """
        feats = self.adapter.encode_embeddings(embeddings, eot_index, truncate=self.truncate_text, deep=deep)
        return F.normalize(feats.float(), dim=-1)

    def encode_prefix_suffix(self, prefix: torch.Tensor, suffix: torch.Tensor, eot_index: torch.Tensor,
                             deep: Sequence[torch.Tensor] = ()) -> torch.Tensor:
        """Normalised embeddings [G, K, D] of the prompts [prefix_g, suffix_k] (G groups of K prompts).

        prefix: [G, P, W]; suffix: [K, S, W] or [G, K, S, W]; eot_index: [K], in the full prompt; deep: deep
        text prompts (see encode_token_embeddings), whose slots must lie inside the prefix.
        """
        groups, p_len = prefix.shape[:2]
        n_cls = suffix.shape[-3]
        if deep and 1 + deep[0].shape[-2] > p_len:
            raise ValueError(f"deep text prompts of {deep[0].shape[-2]} tokens do not fit a prefix of {p_len}.")
        if self.share_prefix:
            slot = self.adapter.start_slot  # a virtual start slot is not part of the tower's sequence
            feats = encode_shared_prefix(self.adapter.text, prefix[:, slot:], suffix, eot_index - p_len,
                                         deep=deep, prompt_start=self.adapter.prompt_start)
            return F.normalize(feats.float(), dim=-1)
        if suffix.dim() == 3:
            suffix = suffix.unsqueeze(0).expand(groups, -1, -1, -1)
        prompts = torch.cat([prefix.unsqueeze(1).expand(-1, n_cls, -1, -1), suffix.to(prefix.dtype)], dim=2)
        feats = self.encode_token_embeddings(prompts.flatten(0, 1), eot_index.repeat(groups), deep=deep)
        return feats.view(groups, n_cls, -1)

    def encode_text(self, texts: Sequence[str], batch_size: int = 1024) -> torch.Tensor:
        """Normalised text embeddings of plain strings, [N, embed_dim], without gradient."""
        tokens = self.tokenize(texts)
        out = []
        with torch.no_grad():
            for start in range(0, tokens.shape[0], batch_size):
                chunk = tokens[start : start + batch_size]
                out.append(self.encode_token_embeddings(self.embed_tokens(chunk), self.eot_index(chunk)))
        return torch.cat(out)

    def token_count(self, text: str) -> int:
        """Tokens of a text (a class name, an init phrase) without start/end under this model's own tokenizer,
        as the reference counts a class name; compose-time validation counts init phrases the same way
        (models/tokens.py)."""
        count = phrase_token_count(self.tokenizer, text)
        if count is not None:
            return count
        # Tokenizers without a bare `encode` (HF ones): the tokens between start and end.
        tokens = self.tokenize([text])
        return int(self.eot_index(tokens)[0]) - 1

    name_length = token_count  # the name callers used before init phrases were counted the same way
