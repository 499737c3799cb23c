"""`promptlab-interpret`: the vocabulary words nearest to each learned context vector.

    promptlab-interpret outputs/runs/.../<run dir>            # or a prompt file (prompt_learner.pt, an import)
    promptlab-interpret prompt.pt --topk 10 model.weights_file=/models/ViT-B-16.pt

For every learned context vector (CoOp/KgCoOp/ProGrad `ctx` [M, W], class-specific [C, M, W], CoCoOp's base
context), the top-k rows of the frozen token-embedding table by cosine similarity and by Euclidean distance.
The reference's interpreter (CoOp repo, interpret_prompt.py) ranks by Euclidean distance (torch.cdist against
`token_embedding.weight`, every vocabulary entry including start/end tokens) and stops at class-specific
contexts; promptlab reports both rankings and handles class-specific contexts row by row. Context vectors are
not word embeddings after training: nearest words are a reading aid, not what the prompt "says" (CoOp paper,
Sec. 4.4).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from promptlab.cli_errors import exit_on_user_error
from promptlab.errors import ConfigError, MissingPathError

PROG = "promptlab-interpret"
PROMPT_FILE = "prompt_learner.pt"


def token_strings(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    """The vocabulary entries of token ids (open_clip's BPE: "photo</w>"; HF tokenizers: their tokens)."""
    decoder = getattr(tokenizer, "decoder", None)
    if isinstance(decoder, Mapping):
        return [str(decoder.get(int(i), f"<{int(i)}>")) for i in ids]
    convert = getattr(getattr(tokenizer, "tokenizer", None), "convert_ids_to_tokens", None)
    if convert is not None:
        return [str(t) for t in convert([int(i) for i in ids])]
    return [f"<{int(i)}>" for i in ids]


def readable(token: str, tokenizer: Any = None) -> str:
    """A BPE entry as text: open_clip marks a word end with "</w>" and spells bytes as printable characters
    (byte_decoder maps them back; non-UTF-8 fragments are replaced)."""
    token = token.replace("</w>", "")
    byte_decoder = getattr(tokenizer, "byte_decoder", None)
    if isinstance(byte_decoder, Mapping) and all(c in byte_decoder for c in token):
        return bytes(byte_decoder[c] for c in token).decode("utf-8", errors="replace")
    return token


def nearest_tokens(vectors: torch.Tensor, table: torch.Tensor, topk: int = 5) -> dict[str, tuple[torch.Tensor, ...]]:
    """For vectors [N, W] and the embedding table [V, W]: {"cosine": (similarities, ids), "euclidean":
    (distances, ids)}, each [N, topk], best first."""
    vectors, table = vectors.float(), table.float()
    k = min(topk, table.shape[0])
    cosine = F.normalize(vectors, dim=-1) @ F.normalize(table, dim=-1).t()
    sims, sim_ids = cosine.topk(k, dim=-1)
    dists, dist_ids = torch.cdist(vectors, table).topk(k, dim=-1, largest=False)
    return {"cosine": (sims, sim_ids), "euclidean": (dists, dist_ids)}


def context_tensors(state_dict: Mapping[str, torch.Tensor], width: int) -> dict[str, torch.Tensor]:
    """The learned token vectors of a prompt's state dict: tensors [M, W] or [C, M, W] in the token-embedding width
    (layer weights and biases, e.g. CoCoOp's meta-net, are left out)."""
    out = {}
    for key, value in state_dict.items():
        if key.rsplit(".", 1)[-1] in ("weight", "bias") or value.dim() not in (2, 3) or value.shape[-1] != width:
            continue
        out[key] = value.detach().float()
    return out


def interpret_state(state_dict: Mapping[str, torch.Tensor], clip: Any, topk: int = 5) -> dict[str, Any]:
    """JSON-ready nearest words of every learned context vector of `state_dict` against `clip`'s token embedding."""
    table = clip.adapter.text.token_embedding.weight.detach().float().cpu()
    tensors = context_tensors(state_dict, int(table.shape[1]))
    if not tensors:
        raise ConfigError(f"the prompt holds no context vectors of the token-embedding width {table.shape[1]} "
                          f"(keys: {sorted(state_dict)}): nothing to interpret.")
    result: dict[str, Any] = {"topk": topk, "vocabulary_size": int(table.shape[0]), "tensors": {}}
    for key, value in tensors.items():
        rows = value.reshape(-1, value.shape[-1]).cpu()
        found = nearest_tokens(rows, table, topk)
        slots = []
        for r in range(rows.shape[0]):
            entry: dict[str, Any] = {"slot": r % value.shape[-2], "norm": float(rows[r].norm())}
            if value.dim() == 3:
                entry["class_index"] = r // value.shape[-2]
            for metric, (scores, ids) in found.items():
                tokens = token_strings(clip.tokenizer, ids[r].tolist())
                entry[metric] = [{"token": t, "word": readable(t, clip.tokenizer), "id": int(i), "score": float(s)}
                                 for t, i, s in zip(tokens, ids[r].tolist(), scores[r].tolist(), strict=True)]
            slots.append(entry)
        result["tensors"][key] = slots
    return result


def interpret_learner(clip: Any, learner: torch.nn.Module, topk: int = 5) -> dict[str, Any]:
    """Nearest words of a live learner's context vectors."""
    return interpret_state(learner.state_dict(), clip, topk)


def prompt_words(clip: Any, learner: torch.nn.Module, topk: int = 5) -> dict[str, Any] | None:
    """For the analysis output (analysis.json "prompt_words"): as interpret_learner, None for a learner without
    context vectors (zero-shot, linear probe, Tip-Adapter)."""
    width = int(clip.adapter.text.token_embedding.weight.shape[1])
    if not context_tensors(learner.state_dict(), width):
        return None
    return interpret_learner(clip, learner, topk)


def prompt_path(path: Path) -> Path:
    path = Path(path)
    candidate = path / PROMPT_FILE if path.is_dir() else path
    if not candidate.is_file():
        raise MissingPathError(f"{path}: no prompt file (pass a run dir holding {PROMPT_FILE}, or a prompt file).")
    return candidate


def interpret_file(path: Path, topk: int = 5, model_overrides: Mapping[str, Any] | None = None,
                   strict: bool = True) -> dict[str, Any]:
    """Nearest words of a saved prompt, against the backbone it names (checked by its fingerprint)."""
    from omegaconf import OmegaConf

    from promptlab.config.deprecated import rename_mapping
    from promptlab.config.registry import typed
    from promptlab.models import load_clip_from_config

    file = prompt_path(path)
    payload = torch.load(file, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or not {"state_dict", "model"} <= set(payload):
        raise ConfigError(f"{file} is not a promptlab prompt file (prompt_learner.pt or promptlab-import's output).")
    overrides = rename_mapping(dict(model_overrides or {}), root="model", warn=True)  # deprecated names too
    model_cfg = OmegaConf.merge(typed({"model": payload["model"]}).model, overrides)
    clip = load_clip_from_config(model_cfg)
    clip.check_fingerprint(payload.get("backbone"), str(file), strict=strict)
    result = interpret_state(payload["state_dict"], clip, topk)
    return {"prompt": str(file), "backbone": clip.name, "method": (payload.get("method") or {}).get("name")} | result


def print_table(result: Mapping[str, Any], console: Any = None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    for key, slots in result["tensors"].items():
        table = Table(title=f"{result.get('prompt', '')} :: {key} (top {result['topk']})")
        for column in ("class", "slot", "cosine (similarity)", "euclidean (distance)"):
            table.add_column(column)
        for entry in slots:
            cos = ", ".join(f"{m['word']} ({m['score']:.3f})" for m in entry["cosine"])
            euc = ", ".join(f"{m['word']} ({m['score']:.3f})" for m in entry["euclidean"])
            table.add_row(str(entry.get("class_index", "-")), str(entry["slot"] + 1), cos, euc)
        console.print(table)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Nearest vocabulary words of a learned prompt's context.",
        epilog="model.KEY=VALUE arguments change how the backbone is found (model.weights_file=...).")
    parser.add_argument("path", type=Path, help="a run dir or a prompt file")
    parser.add_argument("--topk", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON output (default: prompt_words.json next to the prompt file)")
    parser.add_argument("--no-strict", action="store_true", help="load a prompt whose backbone fingerprint differs")
    args, extra = parser.parse_known_args(argv)
    if any("=" not in a or not a.startswith("model.") for a in extra):
        parser.error(f"unrecognized arguments: {' '.join(extra)} (only model.KEY=VALUE overrides)")
    if args.topk < 1:
        parser.error("--topk must be at least 1")
    overrides = {a.split("=", 1)[0].removeprefix("model."): a.split("=", 1)[1] for a in extra}
    with exit_on_user_error(PROG):
        from promptlab.io import atomic_write_json

        result = interpret_file(args.path, args.topk, overrides, strict=not args.no_strict)
        out = args.out or prompt_path(args.path).with_name("prompt_words.json")
        print_table(result)
        atomic_write_json(out, result, indent=1)
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
