"""Which open_clip models promptlab can drive, from the adapter's own checks (no weights needed).

    python -m promptlab.models.support --markdown            # print the table
    python -m promptlab.models.support --write docs/backbones.md

For every name in `open_clip.list_models()` this builds a *tiny* random instance of the model's own config
(text widths/depths shrunk, pooling, mask, projection and norms kept; the vision tower replaced by a tiny
open_clip ViT/ResNet of the same kind) and runs `adapter.describe`-level checks on it; timm vision towers
are classified by building the named timm model on the meta device (no memory, no weights). The tiny
builders are shared with the contract tests (tests/models/test_adapter_contract.py), which compare the adapter's
features with `encode_text` / `encode_image` on the same instances.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch
from torch import nn

from promptlab.models.adapter import (
    HF_TEXT_REASON,
    UnsupportedBackboneError,
    exact_speedups,
    text_tower,
    timm_trunk_blocks,
    vision_tower,
)

TINY_TEXT = {"width": 32, "heads": 2, "layers": 1, "vocab_size": 49408}  # OpenAI BPE ids fit
TINY_VIT = {"layers": 1, "width": 32, "head_width": 16, "patch_size": 8, "image_size": 32}
TINY_RN = {"layers": [1, 1, 1, 1], "width": 8, "head_width": 16, "image_size": 32}
VIT_KEEP = ("pool_type", "final_ln_after_pool", "no_ln_pre", "attentional_pool", "attn_pooler_queries",
            "attn_pooler_heads", "ls_init_value", "pos_embed_type", "act_kwargs", "norm_kwargs", "mlp_ratio")


def vision_kind(cfg: dict[str, Any]) -> str:
    vision = cfg["vision_cfg"]
    if vision.get("timm_model_name"):
        return "timm"
    return "rn" if isinstance(vision.get("layers"), (list, tuple)) else "vit"


def model_class(cfg: dict[str, Any]) -> type[nn.Module]:
    """The class open_clip's factory builds for a config (factory.create_model's rule)."""
    if "multimodal_cfg" in cfg:
        return open_clip.CoCa
    if cfg.get("custom_text") or "hf_model_name" in cfg.get("text_cfg", {}):
        return open_clip.CustomTextCLIP
    return open_clip.CLIP


def tiny_config(name: str) -> dict[str, Any]:
    """`name`'s open_clip config with small widths and depths; everything that decides the text path kept."""
    cfg = copy.deepcopy(open_clip.get_model_config(name))
    cfg["embed_dim"] = 16
    text = cfg["text_cfg"]
    if "hf_model_name" not in text:
        text.update(TINY_TEXT)
    vision = cfg["vision_cfg"]
    if vision_kind(cfg) == "rn":
        cfg["vision_cfg"] = dict(TINY_RN)
    else:  # open_clip ViT keeps its pooling/norm options; a timm tower is stood in for by a tiny open_clip ViT
        keep = {k: vision[k] for k in VIT_KEEP if k in vision} if vision_kind(cfg) == "vit" else {}
        if keep.get("attentional_pool"):
            keep.update(attn_pooler_queries=4, attn_pooler_heads=2)
        cfg["vision_cfg"] = {**TINY_VIT, **keep}
    if "multimodal_cfg" in cfg:
        cfg["multimodal_cfg"].update(TINY_TEXT)
    return cfg


def build_tiny(name: str, seed: int = 0) -> nn.Module:
    """A random tiny instance of `name` (float32, eval mode)."""
    cfg = tiny_config(name)
    cls = model_class(cfg)
    cfg.pop("custom_text", None)
    quick_gelu = bool(cfg.pop("quick_gelu", False))
    torch.manual_seed(seed)
    return cls(**cfg, quick_gelu=quick_gelu).eval()


def refuse_early(name: str) -> None:
    """Raise UnsupportedBackboneError for a model whose text tower the adapter would refuse, from its config and a
    tiny instance: before weights are downloaded or built."""
    if "hf_model_name" in open_clip.get_model_config(name)["text_cfg"]:
        raise UnsupportedBackboneError(f"open_clip model {name!r} is not supported for text-side methods: "
                                       f"{HF_TEXT_REASON}.")
    text_tower(build_tiny(name), name)


@functools.cache
def timm_vision(timm_name: str) -> tuple[bool, str, str]:
    """(exposes blocks, reason, class) of a timm model, built on the meta device (no memory, no weights)."""
    import timm

    with torch.device("meta"):
        trunk = timm.create_model(timm_name, pretrained=False)
    blocks, reason = timm_trunk_blocks(trunk)
    return blocks is not None, reason, type(trunk).__name__


@dataclass(frozen=True)
class Support:
    name: str
    family: str
    text_ok: bool
    text_reason: str
    vision_ok: bool
    vision_reason: str
    speedups: str


def check(name: str) -> Support:
    """The adapter's verdict on one open_clip model name."""
    cfg = open_clip.get_model_config(name)
    text_cfg = cfg["text_cfg"]
    cls = model_class(cfg)
    tokenizer = "HF tokenizer" if text_cfg.get("hf_tokenizer_name") else "OpenAI BPE"
    kind = vision_kind(cfg)
    if kind == "timm":
        vision_ok, vision_reason, vision_cls = timm_vision(cfg["vision_cfg"]["timm_model_name"])
        vision = f"timm {vision_cls}"
    else:  # the adapter's own check on a tiny tower of the same kind
        holder = nn.Module()
        holder.visual = open_clip.model._build_vision_tower(16, tiny_config(name)["vision_cfg"])
        tower = vision_tower(holder)
        vision_ok, vision_reason, vision = tower.blocks is not None, tower.reason, tower.kind
    if "hf_model_name" in text_cfg:
        text_ok, text_reason, text_desc, speed = False, HF_TEXT_REASON, "HF text", "-"
    else:
        try:
            text = text_tower(build_tiny(name), name)
        except UnsupportedBackboneError as err:
            text_ok, text_reason, text_desc, speed = False, str(err).split(": ", 1)[-1], "open_clip text", "-"
        else:
            text_ok, text_reason = True, ""
            text_desc = f"text pool {text.pool}{'' if text.causal else ', bidirectional'}"
            flags = exact_speedups(text)
            reason_off = flags["reason_off"].split(": ", 1)[-1]
            speed = "on" if flags["truncate_text"] and flags["share_prefix"] else f"off: {reason_off}"
    family = f"{cls.__name__}; {text_desc}; {tokenizer}; {vision}"
    return Support(name, family, text_ok, text_reason, vision_ok, vision_reason, speed)


def support_table(names: Sequence[str] | None = None) -> list[tuple[Support, list[str]]]:
    """Verdicts grouped by family (identical verdicts and description), in open_clip's name order."""
    groups: dict[str, tuple[Support, list[str]]] = {}
    for name in names if names is not None else open_clip.list_models():
        verdict = check(name)
        key = json.dumps([verdict.family, verdict.text_ok, verdict.text_reason, verdict.vision_ok,
                          verdict.vision_reason, verdict.speedups])
        groups.setdefault(key, (verdict, []))[1].append(name)
    return list(groups.values())


def markdown(names: Sequence[str] | None = None) -> str:
    rows = support_table(names)
    n_models = sum(len(members) for _, members in rows)
    n_text = sum(len(members) for verdict, members in rows if verdict.text_ok)
    n_vision = sum(len(members) for verdict, members in rows if verdict.vision_ok)
    lines = [
        "# Backbones",
        "",
        "Generated by `python -m promptlab.models.support --write docs/backbones.md` from the adapter's own checks",
        f"(src/promptlab/models/adapter.py) over open_clip {open_clip.__version__}'s {n_models} model configs; "
        "tests/models/test_adapter_contract.py fails when this file is stale. Do not edit by hand.",
        "",
        f"- text-side methods (zero-shot, CoOp, CoCoOp, KgCoOp): {n_text} of {n_models} models",
        f"- blocks exposed for deep vision prompts: {n_vision} of {n_models} models",
        "- exact speed-ups: truncation after the end token and shared-prefix encoding, on only where exact",
        "  (causal text mask, pooling at the end token); off otherwise, which is slower, never different.",
        "- Hugging Face tokenizers are fetched by open_clip at load; whether the tower's pooling",
        "  position is the tokenizer's end of text is checked then (the model is refused by name if not).",
        "",
        "| family (model class; text tower; tokenizer; vision tower) | models | text-side methods | "
        "deep vision prompts | exact speed-ups |",
        "|---|---|---|---|---|",
    ]
    for verdict, members in rows:
        text = "yes" if verdict.text_ok else f"no: {verdict.text_reason}"
        vision = "yes" if verdict.vision_ok else f"no: {verdict.vision_reason}"
        lines.append(f"| {verdict.family} | {', '.join(members)} | {text} | {vision} | {verdict.speedups} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--markdown", action="store_true", help="print the markdown table")
    parser.add_argument("--write", type=Path, help="write the markdown table to this file")
    args = parser.parse_args(argv)
    text = markdown()
    if args.write:
        args.write.write_text(text)
    if args.markdown or not args.write:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
