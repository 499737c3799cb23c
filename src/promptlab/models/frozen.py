"""The frozen CLIP model: embeddings, logits, and the text encoder run on injected token embeddings.

An embedding is the encoder's feature after its projection, L2-normalised; logits are
`logit_scale.exp()` times the cosine between image and class-text embeddings (CLIP, Radford et al. 2021).
Prompt learners never touch open_clip internals directly: they build token embeddings and call
`encode_token_embeddings`, which runs the text transformer exactly as open_clip's `encode_text` does.
"""

from __future__ import annotations

from collections.abc import Sequence

import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from promptlab.errors import ConfigError
from promptlab.models.shared_prefix import encode_shared_prefix, supports_shared_prefix


def encode_text_embeddings(
    model: nn.Module, embeddings: torch.Tensor, eot_index: torch.Tensor, truncate: bool = True
) -> torch.Tensor:
    """open_clip's `encode_text` from token embeddings [N, T, W]: projected features at the EOT index [N, D].

    With `truncate`, only the first L = max(EOT) + 1 positions run: the transformer is causal, so the
    feature at EOT depends only on the tokens before it, and slicing the positional embedding and the
    mask to L gives the same features at a fraction of the cost (docs/reference.md, "Text-encoder truncation").
    """
    length = embeddings.shape[1]
    if truncate:
        length = min(length, int(eot_index.max()) + 1)
    cast_dtype = model.transformer.get_cast_dtype()
    x = embeddings[:, :length].to(cast_dtype) + model.positional_embedding[:length].to(cast_dtype)
    # Without the causal mask the attention silently becomes bidirectional (docs/reference.md, "Pitfalls").
    attn_mask = model.attn_mask[:length, :length] if model.attn_mask is not None else None
    x = model.transformer(x, attn_mask=attn_mask)
    x = model.ln_final(x)
    x = x[torch.arange(x.shape[0], device=x.device), eot_index]
    proj = model.text_projection
    return proj(x) if isinstance(proj, nn.Linear) else x @ proj


class FrozenCLIP(nn.Module):
    """An open_clip CLIP model with every weight frozen and the module pinned to eval mode."""

    def __init__(
        self, model: nn.Module, tokenizer, checkpoint_id: str, truncate_text: bool = True, share_prefix: bool = True
    ) -> None:
        super().__init__()
        if not hasattr(model, "token_embedding") or not hasattr(model, "transformer"):
            raise ConfigError(  # the user picked the model (model.name)
                f"{type(model).__name__} has no built-in text transformer (token_embedding/transformer); "
                "promptlab supports open_clip CLIP models with the standard text tower "
                "(ViT-*/RN* configs, not hf-text or CoCa models)."
            )
        self.model = model
        self.tokenizer = tokenizer
        # Identifies the weights for the on-disk feature cache (a sha256 of the file, or name+tag).
        self.checkpoint_id = checkpoint_id
        # The text transformer is causal, so the feature at the EOT position depends only on the tokens
        # before it: running the first L = max(EOT)+1 positions instead of all 77 gives the same
        # features at a fraction of the cost (docs/reference.md, "Text-encoder truncation"). False reproduces
        # the reference.
        self.truncate_text = truncate_text
        # Prompts that start with the same tokens (CoOp's [SOS, context], one image's CoCoOp context) compute
        # those positions once (shared_prefix.py); exact, and False runs every prompt in full.
        self.share_prefix = share_prefix and supports_shared_prefix(model)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.model.eval()

    def train(self, mode: bool = True) -> FrozenCLIP:
        # Frozen means frozen: Lightning calls .train() on every submodule at fit start; dropout or
        # batch-norm statistics of the backbone must never change (the reference keeps CLIP in eval).
        return super().train(False)

    # ----------------------------------------------------------------- properties
    @property
    def dtype(self) -> torch.dtype:
        return self.model.token_embedding.weight.dtype

    @property
    def ctx_dim(self) -> int:
        """Width of the text transformer (the size of one context vector)."""
        return self.model.token_embedding.weight.shape[1]

    @property
    def embed_dim(self) -> int:
        proj = self.model.text_projection
        return proj.out_features if isinstance(proj, nn.Linear) else proj.shape[1]

    @property
    def vis_dim(self) -> int:
        """Size of the image embedding (input of CoCoOp's meta-net)."""
        return self.embed_dim

    @property
    def image_size(self) -> int:
        size = self.model.visual.image_size
        return int(size[0] if isinstance(size, (tuple, list)) else size)

    @property
    def context_length(self) -> int:
        return int(self.model.positional_embedding.shape[0])

    def logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale.exp().float()

    # ----------------------------------------------------------------- image side
    @torch.no_grad()
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised image embeddings, float32, shape [B, embed_dim]."""
        features = self.model.encode_image(images.to(self._visual_dtype()))
        return F.normalize(features.float(), dim=-1)

    def _visual_dtype(self) -> torch.dtype:
        return next(self.model.visual.parameters()).dtype

    # ----------------------------------------------------------------- text side
    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        tokens = self.tokenizer(list(texts))
        return tokens.to(self.model.token_embedding.weight.device)

    @torch.no_grad()
    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token embeddings [N, context_length, ctx_dim] (no positional embedding yet)."""
        return self.model.token_embedding(tokens)

    @staticmethod
    def eot_index(tokens: torch.Tensor) -> torch.Tensor:
        # The EOT token has the largest id in CLIP's vocabulary (49407): the reference and open_clip's
        # default 'argmax' pooling both locate it with argmax.
        return tokens.argmax(dim=-1)

    def encode_token_embeddings(self, embeddings: torch.Tensor, eot_index: torch.Tensor) -> torch.Tensor:
        """Run the text transformer on token embeddings and pool at the EOT index.

        embeddings: [N, T, ctx_dim] with T <= context_length (prompt learners may already have cut the
        sequence to the needed length); eot_index: [N]. Returns normalised embeddings [N, embed_dim].
        """
        feats = encode_text_embeddings(self.model, embeddings, eot_index, truncate=self.truncate_text)
        return F.normalize(feats.float(), dim=-1)

    def encode_prefix_suffix(self, prefix: torch.Tensor, suffix: torch.Tensor, eot_index: torch.Tensor) -> torch.Tensor:
        """Normalised embeddings [G, K, D] of the prompts [prefix_g, suffix_k] (G groups of K prompts).

        prefix: [G, P, W]; suffix: [K, S, W] or [G, K, S, W]; eot_index: [K], in the full prompt.
        """
        groups, p_len = prefix.shape[:2]
        n_cls = suffix.shape[-3]
        if self.share_prefix:
            feats = encode_shared_prefix(self.model, prefix, suffix, eot_index - p_len)
            return F.normalize(feats.float(), dim=-1)
        if suffix.dim() == 3:
            suffix = suffix.unsqueeze(0).expand(groups, -1, -1, -1)
        prompts = torch.cat([prefix.unsqueeze(1).expand(-1, n_cls, -1, -1), suffix.to(prefix.dtype)], dim=2)
        feats = self.encode_token_embeddings(prompts.flatten(0, 1), eot_index.repeat(groups))
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

    def name_length(self, name: str) -> int:
        """Number of BPE tokens of a class name (without SOS/EOT), as the reference computes it."""
        encode = getattr(self.tokenizer, "encode", None) or open_clip.tokenizer._tokenizer.encode
        return len(encode(name))
