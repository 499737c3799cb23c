"""Text encoding of many prompts that share their first tokens, computing those tokens once.

Every prompt of CoOp (unified context, class token at the end) starts with the same [SOS, v1..vM]; every
prompt of one image in CoCoOp starts with the same [SOS, v1+pi(x) .. vM+pi(x)]. The text transformer is
causal, so the hidden states of those shared positions do not depend on what follows: they can be
computed once per group and reused, as keys and values, by the class-specific positions of every prompt
in the group (the key/value caching of autoregressive decoders). The result equals running each full
prompt (up to float rounding) while the shared positions cost one pass per group instead of one per
class. The blocks are open_clip's `ResidualAttentionBlock` (pre-LN, nn.MultiheadAttention, MLP); other
block types are not supported here: the adapter (adapter.py) switches this path off for them and for
every tower where it would not be exact (no causal mask, pooling not at the end token).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from open_clip.transformer import ResidualAttentionBlock

from promptlab.models.adapter import TextTower, splice_text


def _heads(x: torch.Tensor, n_head: int) -> torch.Tensor:
    n, length, width = x.shape
    return x.view(n, length, n_head, width // n_head).transpose(1, 2)  # [N, H, L, d]


def _qkv(block: ResidualAttentionBlock, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    attn = block.attn
    q, k, v = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    return tuple(_heads(t, attn.num_heads) for t in (q, k, v))


def _finish(block: ResidualAttentionBlock, x: torch.Tensor, heads: torch.Tensor) -> torch.Tensor:
    n, _, length, _ = heads.shape
    merged = heads.transpose(1, 2).reshape(n, length, -1)
    x = x + block.ls_1(block.attn.out_proj(merged))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def encode_shared_prefix(
    text: TextTower, prefix: torch.Tensor, suffix: torch.Tensor, eot_in_suffix: torch.Tensor,
    deep: Sequence[torch.Tensor] = (), prompt_start: int = 1,
) -> torch.Tensor:
    """Text features of G x K prompts [prefix_g, suffix_k] without repeating the prefix per prompt.

    prefix: [G, P, W] token embeddings shared by the K prompts of group g; suffix: [K, S, W] or
    [G, K, S, W]; eot_in_suffix: [K], EOT positions counted from the start of the suffix.
    deep: deep text prompts (MaPLe, IVLP) for blocks 1..len(deep); their slots (prompt_start..) lie inside the
    prefix, so replacing them there before each block is the same as replacing them in every full prompt.
    Returns unnormalised projected features [G, K, D] (what open_clip's encode_text pools and projects).
    """
    groups, p_len, width = prefix.shape
    if suffix.dim() == 3:
        suffix = suffix.unsqueeze(0).expand(groups, -1, -1, -1)
    n_cls, s_len = suffix.shape[1], suffix.shape[2]
    cast = text.cast_dtype()
    pos = text.positional_embedding.to(cast)
    h_pre = prefix.to(cast) + pos[:p_len]
    h_suf = (suffix.to(cast) + pos[p_len : p_len + s_len]).reshape(groups * n_cls, s_len, width)
    # Suffix position i sees the whole prefix and suffix positions <= i (causal, as CLIP's mask).
    visible = torch.ones(s_len, p_len + s_len, dtype=torch.bool, device=prefix.device)
    visible[:, p_len:] = torch.tril(visible[:, p_len:])
    if len(deep) >= len(text.transformer.resblocks):
        raise ValueError(f"{len(deep)} deep text prompts for {len(text.transformer.resblocks)} blocks.")
    for i, block in enumerate(text.transformer.resblocks):
        if 1 <= i <= len(deep):
            h_pre = splice_text(h_pre, deep[i - 1], prompt_start)
        q_p, k_p, v_p = _qkv(block, h_pre)
        q_s, k_s, v_s = _qkv(block, h_suf)
        attn_pre = F.scaled_dot_product_attention(q_p, k_p, v_p, is_causal=True)

        def per_prompt(t: torch.Tensor) -> torch.Tensor:  # [G, H, P, d] -> [G*K, H, P, d] (a view)
            return t.unsqueeze(1).expand(-1, n_cls, -1, -1, -1).reshape(groups * n_cls, *t.shape[1:])

        keys = torch.cat([per_prompt(k_p), k_s], dim=2)
        values = torch.cat([per_prompt(v_p), v_s], dim=2)
        attn_suf = F.scaled_dot_product_attention(q_s, keys, values, attn_mask=visible)
        h_pre = _finish(block, h_pre, attn_pre)
        h_suf = _finish(block, h_suf, attn_suf)
    h_suf = text.ln_final(h_suf)
    pooled = h_suf[torch.arange(groups * n_cls, device=h_suf.device), eot_in_suffix.repeat(groups)]
    return text.project(pooled).view(groups, n_cls, -1)
