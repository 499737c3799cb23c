"""The one place that reads open_clip's internals: a validated description of a loaded CLIP's towers.

`describe(model, tokenizer, name)` inspects an open_clip model once, at load, and returns a `ClipAdapter`:
where the text tower keeps its token embedding, positional embedding, blocks, final norm and projection,
how it pools (argmax / eos id / last / first token), whether its attention mask is causal, what the tokenizer
puts around a text (start token or not, end token or not) and whether the vision tower exposes ViT blocks.
Anything it cannot drive exactly is refused here, by model name and with the reason
(`UnsupportedBackboneError`), instead of failing later or, worse, computing something else than
`model.encode_text`. Every other promptlab module (FrozenCLIP, shared-prefix encoding, the prompt learners)
goes through this description; the contract tests (tests/models/test_adapter_contract.py) pin it against
`encode_text` / `encode_image` of tiny instances of every open_clip family, so a change of open_clip's
internals fails there loudly.

Prompt layout. Prompt learners build token sequences as [start slot, context, class tokens, end, padding]
and cut them at `eot_index`. Tokenizers without a start token (SentencePiece ones: SigLIP, mT5) get a
*virtual* start slot: `tokenize` prepends a placeholder column that `encode` drops again, so the learners
see one layout for every tokenizer and the text tower sees exactly the tokenizer's sequence.

Exact speed-ups. With a causal mask and pooling at the end token, the pooled feature depends only on the
positions up to the end token: running only those (truncation) and computing a shared prefix once
(shared_prefix.py) give the same features. Without a causal mask (CLIPA, SigLIP, MobileCLIP-S*) or with
pooling at the last position, every position matters: both are switched off (`speedups`, logged once).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from promptlab.errors import ConfigError

log = logging.getLogger(__name__)

# Pooling rules of open_clip's text_global_pool that read one position known from the token ids.
END_POOLS = ("argmax", "eos")
POOLS = ("argmax", "eos", "last", "first")

HF_TEXT_REASON = (
    "its text tower is a Hugging Face transformer (HFTextEncoder), which adds its own position embeddings and "
    "padding mask inside the HF model, so injected context vectors cannot be run through it the way open_clip's "
    "TextTransformer runs them"
)
COCA_REASON = (
    "CoCa appends a learned CLS token to every text and pools it after a padding mask; its contrastive text "
    "path is not an end-token pooled TextTransformer"
)


class UnsupportedBackboneError(ConfigError):
    """The chosen open_clip model cannot be driven by promptlab; the message names it and says why."""


@dataclass(frozen=True)
class TokenizerLayout:
    """What the tokenizer writes around a text: learned from its output, not from its class."""

    has_start: bool  # every sequence starts with the same start token (OpenAI SOT, BERT [CLS], <s>)
    has_end: bool  # an end token follows the text (OpenAI EOT, </s>); CLIPA's BERT tokenizer strips [SEP]
    pad_id: int
    end_id: int | None
    context_length: int


@dataclass
class TextTower:
    """open_clip's text transformer, wherever the model keeps it (CLIP itself or CustomTextCLIP.text)."""

    owner: nn.Module  # holds token_embedding / positional_embedding / ln_final / text_projection / attn_mask
    token_embedding: nn.Embedding
    transformer: nn.Module  # open_clip.transformer.Transformer (batch-first)
    ln_final: nn.Module
    pool: str  # one of POOLS
    eos_id: int | None
    causal: bool
    kv_blocks: bool  # every block is open_clip's plain ResidualAttentionBlock (shared_prefix.py re-runs them)

    @property
    def positional_embedding(self) -> torch.Tensor:
        return self.owner.positional_embedding

    @property
    def projection(self) -> nn.Module | torch.Tensor | None:
        return self.owner.text_projection

    @property
    def attn_mask(self) -> torch.Tensor | None:
        return self.owner.attn_mask

    @property
    def width(self) -> int:
        return int(self.token_embedding.weight.shape[1])

    @property
    def context_length(self) -> int:
        return int(self.positional_embedding.shape[0])

    @property
    def embed_dim(self) -> int:
        proj = self.projection
        if proj is None:
            return self.width
        return int(proj.out_features) if isinstance(proj, nn.Linear) else int(proj.shape[1])

    def cast_dtype(self) -> torch.dtype:
        return self.transformer.get_cast_dtype()

    def project(self, pooled: torch.Tensor) -> torch.Tensor:
        proj = self.projection
        if proj is None:
            return pooled
        return proj(pooled) if isinstance(proj, nn.Linear) else pooled @ proj


@dataclass
class VisionTower:
    """The image tower: whether it is a ViT with blocks a deep vision prompt could be inserted between."""

    kind: str  # "open_clip ViT", "timm <Class>", "open_clip ModifiedResNet", ...
    blocks: nn.ModuleList | nn.Sequential | None  # the transformer blocks, or None
    reason: str  # why `blocks` is None ("" when exposed)
    input_dtype: torch.dtype
    module: nn.Module | None = None  # the tower itself (open_clip's VisionTransformer when prompts can enter it)
    prompt_reason: str = "not inspected"  # why learned image tokens cannot be inserted ("" when they can)

    @property
    def width(self) -> int:
        """Width of the token sequence between blocks (the size of one vision prompt)."""
        if self.module is None or self.prompt_reason:
            raise UnsupportedBackboneError(f"no vision prompts on this image tower: {self.prompt_reason}.")
        return int(self.module.class_embedding.shape[-1])

    @property
    def layers(self) -> int:
        return len(self.blocks) if self.blocks is not None else 0


@dataclass
class ClipAdapter:
    """The validated description of one loaded CLIP (see the module docstring)."""

    name: str
    model: nn.Module
    text: TextTower
    vision: VisionTower
    layout: TokenizerLayout
    tokenizer: Callable[..., torch.Tensor]
    speedups: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------ tokens (virtual start slot, see docstring)
    @property
    def start_slot(self) -> int:
        """Placeholder columns prepended to the tokenizer's output (1 when it writes no start token)."""
        return 0 if self.layout.has_start else 1

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        tokens = self.tokenizer(list(texts))
        if self.start_slot:
            tokens = torch.cat([torch.full_like(tokens[:, :1], self.layout.pad_id), tokens], dim=1)
        return tokens

    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        emb = self.text.token_embedding(tokens)
        if self.start_slot:
            emb = torch.cat([torch.zeros_like(emb[:, :1]), emb[:, 1:]], dim=1)  # the slot carries nothing
        return emb

    def eot_index(self, tokens: torch.Tensor) -> torch.Tensor:
        """Index of the end token (or, without one, of the first padding slot) in `tokenize`'s layout.

        Everything before it is [start slot, text]: prompt learners count context tokens and cut sequences
        with it; with END_POOLS it is also the pooled position (checked at load: `_check_pooling`).
        """
        real = tokens[:, self.start_slot :]
        if self.text.pool == "argmax":
            end = real.argmax(dim=-1)
        elif self.text.pool == "eos" or (self.layout.has_end and self.layout.end_id is not None):
            end_id = self.text.eos_id if self.text.pool == "eos" else self.layout.end_id
            end = (real == end_id).int().argmax(dim=-1)
        else:
            end = (real != self.layout.pad_id).sum(dim=-1)  # first padding slot after the text
        return end + self.start_slot

    # ------------------------------------------------------------ text encoding
    def encode_embeddings(self, embeddings: torch.Tensor, eot_index: torch.Tensor, truncate: bool,
                          deep: Sequence[torch.Tensor | None] = ()) -> torch.Tensor:
        """open_clip's text path on token embeddings in `tokenize`'s layout: projected, unnormalised [N, D].

        `truncate` runs only the first max(eot_index)+1 positions; callers pass it only where exact
        (`speedups["truncate_text"]`). `deep`: deep text prompts for the slots right after the start slot.
        """
        embeddings = embeddings[:, self.start_slot :]
        return encode_text_tower(self.text, embeddings, eot_index - self.start_slot, truncate, self.name,
                                 deep=deep, prompt_start=self.prompt_start)

    @property
    def prompt_start(self) -> int:
        """Tower position of the first context slot (after the start token; 0 with a virtual start slot)."""
        return 1 - self.start_slot

    def encode_tokens(self, tokens: torch.Tensor, truncate: bool) -> torch.Tensor:
        return self.encode_embeddings(self.embed_tokens(tokens), self.eot_index(tokens), truncate)


def encode_text_tower(
    text: TextTower, embeddings: torch.Tensor, index: torch.Tensor, truncate: bool, name: str = "model",
    deep: Sequence[torch.Tensor | None] = (), prompt_start: int = 1,
) -> torch.Tensor:
    """The text tower's forward from token embeddings [N, T, W] (the tokenizer's own layout), pooled at `index`
    for END_POOLS; projected, unnormalised [N, D]. Same operations, in the same order, as open_clip's
    `CLIP.encode_text` / `TextTransformer.forward`.

    `deep`: deep text prompts, one entry per block 1..len(deep): before block i runs, positions
    prompt_start .. prompt_start+n-1 of the residual stream are replaced by deep[i-1] (MaPLe / IVLP; see
    `run_prompted_blocks`), a [n, W] tensor shared by every sequence or [N, n, W] with one set per sequence
    (TCP's class-aware tokens); None leaves block i's slots as the previous block wrote them. The block-0
    prompts are part of `embeddings` (they get the positional embedding)."""
    length = embeddings.shape[1]
    if truncate:
        length = min(length, int(index.max()) + 1)
    elif not (text.causal and text.pool in END_POOLS) and length != text.context_length:
        # Bidirectional attention sees the padding, and "last"/"first" pooling reads a fixed position of the full
        # sequence: a shortened sequence would silently give other features.
        raise ValueError(f"{name}: the text tower needs all {text.context_length} positions, got {length}.")
    cast = text.cast_dtype()
    x = embeddings[:, :length].to(cast) + text.positional_embedding[:length].to(cast)
    mask = text.attn_mask
    mask = mask[:length, :length] if mask is not None else None
    if deep:
        x = run_prompted_blocks(text.transformer.resblocks, x, deep, lambda h, p: splice_text(h, p, prompt_start),
                                attn_mask=mask)
    else:
        x = text.transformer(x, attn_mask=mask)
    x = text.ln_final(x)
    if text.pool in END_POOLS:
        pooled = x[torch.arange(x.shape[0], device=x.device), index]
    elif text.pool == "last":
        pooled = x[:, -1]
    else:
        pooled = x[:, 0]
    return text.project(pooled)


# --------------------------------------------------------------------------- deep prompts (VPT, IVLP, MaPLe)
# Layout of the multimodal-prompt-learning reference (muzairkhattak/multimodal-prompt-learning, clip/model.py:
# ResidualAttentionBlock_IVLP / _MaPLe, VisionTransformer(_MaPLe).forward), read at commit 69bce21:
# - depth J: block 0 sees the input-level prompts; before each block i = 1..J-1 runs, the prompt slots of the
#   residual stream are *replaced* by fresh tokens; blocks J.. carry whatever the previous block wrote there;
# - text: the slots are positions 1..n (right after SOS), the sequence length does not change;
# - vision: the input prompts are appended after [CLS, patches] + positional embedding and before ln_pre; the
#   slots are the last n tokens; deep prompts get no positional embedding, no ln_pre;
# - pooling is unchanged (CLS token, EOT token), so the prompt tokens' outputs are discarded.
def splice_text(x: torch.Tensor, prompts: torch.Tensor, start: int = 1) -> torch.Tensor:
    """x [N, L, W] with positions start..start+n-1 replaced by `prompts`: [n, W] (the same for every sequence) or
    [N, n, W] (one set per sequence)."""
    n = prompts.shape[-2]
    fresh = prompts.to(x.dtype).expand(x.shape[0], -1, -1)
    return torch.cat([x[:, :start], fresh, x[:, start + n :]], dim=1)


def splice_vision(x: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
    """x [B, L, W] with its last n tokens replaced by `prompts` [n, W]."""
    n = prompts.shape[-2]
    return torch.cat([x[:, : x.shape[1] - n], prompts.to(x.dtype).expand(x.shape[0], -1, -1)], dim=1)


def run_prompted_blocks(
    blocks: Sequence[nn.Module], x: torch.Tensor, deep: Sequence[torch.Tensor | None],
    splice: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], attn_mask: torch.Tensor | None = None,
    recompute_blocks: bool = False,
) -> torch.Tensor:
    """Run batch-first open_clip blocks; before block i (1 <= i <= len(deep)) `splice(x, deep[i-1])` replaces the
    prompt slots, unless deep[i-1] is None (tokens inserted at one deeper block only, as TCP's). `recompute_blocks`
    recomputes each block's activations in backward (memory for compute)."""
    if len(deep) >= len(blocks):
        raise ConfigError(f"{len(deep) + 1} prompt depths asked for a tower of {len(blocks)} blocks: the depth counts "
                          f"the blocks that get fresh prompts, at most {len(blocks)}.")
    for i, block in enumerate(blocks):
        fresh = deep[i - 1] if 1 <= i <= len(deep) else None
        if fresh is not None:
            x = splice(x, fresh)
        if recompute_blocks and torch.is_grad_enabled():
            x = checkpoint(block, x, None, None, attn_mask, use_reentrant=False)
        else:
            x = block(x, attn_mask=attn_mask)
    return x


def vision_prompt_reason(visual: nn.Module) -> str:
    """Why learned tokens cannot be appended to this open_clip VisionTransformer ("" when they can).

    The prompts must not change what is pooled: only class-token pooling, without an attentional pooler, reads
    exactly the reference's `ln_post(x[:, 0]) @ proj`."""
    if getattr(visual, "attn_pool", None) is not None:
        return "its image tower pools with an attentional pooler, which would attend to the prompt tokens"
    if getattr(visual, "pool_type", "tok") != "tok":
        return f"its image tower pools with {visual.pool_type!r} (prompt tokens would enter the pooled feature)"
    if not getattr(visual.transformer, "batch_first", False):
        return "its image transformer is sequence-first (open_clip < 2.26)"
    return ""


def encode_image_tower(
    vision: VisionTower, images: torch.Tensor, prompts: torch.Tensor | None = None,
    deep: Sequence[torch.Tensor] = (), recompute_blocks: bool = False,
) -> torch.Tensor:
    """open_clip's VisionTransformer forward with learned tokens: projected, unnormalised features [B, D].

    prompts: [n, W] appended after [CLS, patches] + positional embedding, before ln_pre (block 0's prompts);
    deep: one [n, W] tensor per block 1..len(deep), replacing the last n tokens before that block. Without
    prompts it computes exactly `visual(images)`. The frozen weights get no gradient; the prompts do.
    """
    visual = vision.module
    if vision.prompt_reason or visual is None:
        raise UnsupportedBackboneError(
            f"learned image tokens need open_clip's ViT image tower: {vision.prompt_reason}; use a ViT backbone "
            "(model=vit_b16) for methods with vision prompts.")
    if deep and prompts is None:
        raise ValueError("deep vision prompts need the input-level prompts that open the slots (prompts=None).")
    x = visual.conv1(images.to(vision.input_dtype))
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)  # [B, grid**2, W]
    cls = visual.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
    x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)
    x = visual.patch_dropout(x)
    if prompts is not None:
        x = torch.cat([x, prompts.to(x.dtype).expand(x.shape[0], -1, -1)], dim=1)
    x = visual.ln_pre(x)
    x = run_prompted_blocks(visual.transformer.resblocks, x, deep, splice_vision,
                            recompute_blocks=recompute_blocks)
    pooled, _ = visual._pool(x)  # class token (vision_prompt_reason refuses other pooling)
    return pooled @ visual.proj if visual.proj is not None else pooled


# --------------------------------------------------------------------------- inspection
def text_tower(model: nn.Module, name: str) -> TextTower:
    """The validated text tower of `model`, or UnsupportedBackboneError naming `name` and the reason."""
    return _text_tower(model, name)


def _text_tower(model: nn.Module, name: str) -> TextTower:
    from open_clip.transformer import ResidualAttentionBlock, TextTransformer

    cls = type(model).__name__
    refused = f"open_clip model {name!r} is not supported for text-side methods"
    if cls == "CoCa" or hasattr(model, "text_decoder"):
        raise UnsupportedBackboneError(f"{refused}: {COCA_REASON}.")
    if hasattr(model, "token_embedding") and hasattr(model, "transformer"):  # open_clip CLIP: tower inlined
        owner: nn.Module = model
        pool = getattr(model, "text_pool_type", "argmax")
        eos_id = getattr(model, "text_eos_id", None)
    else:
        tower = getattr(model, "text", None)
        if tower is None:
            raise UnsupportedBackboneError(f"open_clip model {name!r} ({cls}) has no text tower promptlab recognises.")
        if not isinstance(tower, TextTransformer):
            kind = type(tower).__name__
            reason = HF_TEXT_REASON if kind == "HFTextEncoder" else f"its text tower is a {kind}, not a TextTransformer"
            raise UnsupportedBackboneError(f"{refused}: {reason}.")
        if tower.cls_emb is not None:
            raise UnsupportedBackboneError(f"{refused}: {COCA_REASON}.")
        if getattr(tower, "use_pad_mask", False):
            raise UnsupportedBackboneError(
                f"open_clip model {name!r} is not supported for text-side methods: its text tower masks padding "
                "tokens by id, which injected context vectors do not have."
            )
        owner, pool, eos_id = tower, tower.pool_type, getattr(tower, "eos_id", None)
    if pool not in POOLS:
        raise UnsupportedBackboneError(
            f"open_clip model {name!r} is not supported for text-side methods: its text tower pools with {pool!r} "
            f"(promptlab drives {', '.join(POOLS)})."
        )
    transformer = owner.transformer
    if not getattr(transformer, "batch_first", False):
        raise UnsupportedBackboneError(
            f"open_clip model {name!r}: its text transformer is sequence-first (open_clip < 2.26); promptlab needs "
            "open_clip_torch>=2.26 (pip install -U 'open_clip_torch>=2.26')."
        )
    mask = owner.attn_mask
    causal = False
    if mask is not None:
        n = mask.shape[-1]
        expected = torch.full((n, n), float("-inf"), device=mask.device).triu_(1)
        if mask.shape != (n, n) or (mask.device.type != "meta" and not torch.equal(mask.float(), expected)):
            raise UnsupportedBackboneError(
                f"open_clip model {name!r} is not supported for text-side methods: its text attention mask is "
                "neither causal nor absent."
            )
        causal = True
    blocks = list(getattr(transformer, "resblocks", []))
    kv_blocks = bool(blocks) and all(
        type(b) is ResidualAttentionBlock and isinstance(b.attn, nn.MultiheadAttention) and not hasattr(b, "ln_1_kv")
        for b in blocks
    )
    return TextTower(owner=owner, token_embedding=owner.token_embedding, transformer=transformer,
                     ln_final=owner.ln_final, pool=pool, eos_id=eos_id, causal=causal, kv_blocks=kv_blocks)


def vision_tower(model: nn.Module) -> VisionTower:
    """The image tower's description: ViT blocks exposed (open_clip ViT, timm ViT/Eva) or not, and why."""
    from open_clip.transformer import VisionTransformer

    visual = model.visual
    conv = next((m for m in visual.modules() if isinstance(m, nn.Conv2d)), None)
    input_dtype = conv.weight.dtype if conv is not None else next(visual.parameters()).dtype
    if isinstance(visual, VisionTransformer):
        return VisionTower("open_clip ViT", visual.transformer.resblocks, "", input_dtype, visual,
                           vision_prompt_reason(visual))
    trunk = getattr(visual, "trunk", None)
    if trunk is not None:  # open_clip's TimmModel
        blocks, reason = timm_trunk_blocks(trunk)
        kind = f"timm {type(trunk).__name__}"
        return VisionTower(kind, blocks, reason, input_dtype, visual,
                           f"{kind}: learned image tokens are inserted into open_clip's own VisionTransformer only")
    kind = f"open_clip {type(visual).__name__}"
    reason = f"{kind} is convolutional (no token sequence between blocks)"
    return VisionTower(kind, None, reason, input_dtype, visual, reason)


def timm_trunk_blocks(trunk: nn.Module) -> tuple[nn.Module | None, str]:
    """A timm trunk's ViT blocks (timm VisionTransformer and its subclasses, Eva), or None and why not."""
    from timm.models.eva import Eva
    from timm.models.vision_transformer import VisionTransformer as TimmViT

    blocks = getattr(trunk, "blocks", None)
    if isinstance(trunk, (TimmViT, Eva)) and isinstance(blocks, (nn.Sequential, nn.ModuleList)):
        return blocks, ""
    return None, f"timm {type(trunk).__name__} is not a plain ViT (no token sequence between blocks)"


def tokenizer_layout(tokenizer: Callable[..., torch.Tensor]) -> TokenizerLayout:
    """Learn the layout from the tokenizer's output on probe texts (works for open_clip's BPE and HF ones)."""
    a, b = (tokenizer([t])[0] for t in ("a", "b"))
    has_start = bool(a[0] == b[0])  # a start token is the same for every text; the first word is not
    pad_id = int(a[-1])
    n_a, n_b = int((a != pad_id).sum()), int((b != pad_id).sum())
    # An end token is the same for every text, like a start token, but sits after the text.
    has_end = n_a == n_b and n_a >= 1 + int(has_start) + 1 and bool(a[n_a - 1] == b[n_b - 1])
    return TokenizerLayout(has_start=has_start, has_end=has_end, pad_id=pad_id,
                           end_id=int(a[n_a - 1]) if has_end else None, context_length=int(a.shape[0]))


def _check_pooling(adapter: ClipAdapter, name: str) -> None:
    """The pooled position must be where prompt learners put the end of a text (see `eot_index`)."""
    text, layout = adapter.text, adapter.layout
    if layout.context_length != text.context_length:
        raise UnsupportedBackboneError(
            f"open_clip model {name!r}: its tokenizer writes {layout.context_length} tokens but the text tower has "
            f"{text.context_length} positions."
        )
    if text.pool not in END_POOLS:
        return
    probes = ["a photo of a dog.", "x", "a b c d e f"]
    tokens = adapter.tokenizer(probes)
    if text.pool == "argmax":
        pooled = tokens.argmax(dim=-1)
    else:
        pooled = (tokens == text.eos_id).int().argmax(dim=-1)
    if layout.has_end:
        end = (tokens == layout.end_id).int().argmax(dim=-1)
    else:
        end = (tokens != layout.pad_id).sum(dim=-1)
    if not torch.equal(pooled, end):
        rule = "the largest token id" if text.pool == "argmax" else f"token id {text.eos_id}"
        raise UnsupportedBackboneError(
            f"open_clip model {name!r} is not supported for text-side methods: its text tower pools at {rule}, "
            "which is not the end of the text for its tokenizer, so a learned context would move the pooled position."
        )


def describe(model: nn.Module, tokenizer: Callable[..., torch.Tensor], name: str,
             truncate_text: bool = True, share_prefix: bool = True) -> ClipAdapter:
    """Inspect a loaded open_clip model; raise UnsupportedBackboneError for what promptlab cannot drive."""
    text = _text_tower(model, name)
    layout = tokenizer_layout(tokenizer)
    adapter = ClipAdapter(name=name, model=model, text=text, vision=vision_tower(model), layout=layout,
                          tokenizer=tokenizer)
    _check_pooling(adapter, name)
    adapter.speedups = exact_speedups(text, truncate_text, share_prefix)
    return adapter


def exact_speedups(text: TextTower, truncate_text: bool = True, share_prefix: bool = True) -> dict[str, Any]:
    """Which exact speed-ups run, and why one that was asked for does not (for the log and the run record)."""
    exact = text.causal and text.pool in END_POOLS
    why = "" if exact else (
        "the text attention is bidirectional (no causal mask)" if not text.causal
        else f"the text tower pools at the {text.pool} position, not at the end token"
    )
    out: dict[str, Any] = {
        "truncate_text": bool(truncate_text and exact),
        "share_prefix": bool(share_prefix and exact and text.kv_blocks),
        "text_pool": text.pool,
        "causal_mask": text.causal,
        "reason_off": "",
    }
    if (truncate_text or share_prefix) and not exact:
        out["reason_off"] = f"exact text speed-ups off: {why}"
    elif share_prefix and not text.kv_blocks:
        out["reason_off"] = "shared-prefix encoding off: the text blocks are not open_clip's ResidualAttentionBlock"
    return out


# --------------------------------------------------------------------------- weights dtype (reference rule)
def convert_weights_reference(model: nn.Module, dtype: torch.dtype = torch.float16) -> list[str]:
    """Cast what OpenAI CLIP's `convert_weights` casts, nothing else; return the converted parameter names.

    Conv1d/Conv2d/Linear weights and biases, nn.MultiheadAttention's in/q/k/v projection weights, in_proj_bias,
    bias_k/bias_v, and the `text_projection` / `proj` parameters. Layer norms, embeddings, positional
    embeddings, class embedding and logit_scale stay float32; open_clip's LayerNorm modules are switched to
    its LayerNormFp32 (same parameters, computes in float32 like the reference's LayerNorm) so they accept
    half-precision activations.
    """
    from open_clip.transformer import LayerNorm, LayerNormFp32

    converted: set[int] = set()

    def cast(t: torch.Tensor | None) -> None:
        if isinstance(t, torch.Tensor):
            t.data = t.data.to(dtype)
            converted.add(id(t))

    for module in model.modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            cast(module.weight)
            cast(module.bias)
        if isinstance(module, nn.MultiheadAttention):
            for attr in ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight", "in_proj_bias",
                         "bias_k", "bias_v"):
                cast(getattr(module, attr, None))
        for attr in ("text_projection", "proj"):
            value = getattr(module, attr, None)
            if isinstance(value, nn.Parameter):
                cast(value)
        if type(module) is LayerNorm:
            module.__class__ = LayerNormFp32
    return sorted(n for n, p in model.named_parameters() if id(p) in converted)


# --------------------------------------------------------------------------- preprocessing
def preprocess_config(model: nn.Module) -> dict[str, Any]:
    """open_clip's image preprocessing of this model (defaults: OpenAI's), as plain JSON-able values."""
    import open_clip
    from open_clip.transform import PreprocessCfg

    base = PreprocessCfg()
    cfg: dict[str, Any] = {"size": base.size, "mode": base.mode, "mean": base.mean, "std": base.std,
                           "interpolation": base.interpolation, "resize_mode": base.resize_mode,
                           "fill_color": base.fill_color}
    cfg.update(dict(open_clip.get_model_preprocess_cfg(model)))
    size = cfg["size"]
    if isinstance(size, (tuple, list)):
        size = int(size[0]) if len(set(size)) == 1 else [int(s) for s in size]
    cfg["size"] = size
    cfg["mean"] = [float(v) for v in cfg["mean"]]
    cfg["std"] = [float(v) for v in cfg["std"]]
    return cfg
