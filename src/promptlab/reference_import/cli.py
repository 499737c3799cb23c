"""`promptlab-import`: the reference's artefacts to promptlab's formats (docs/reference_artefacts.md).

    promptlab-import checkpoint output/.../prompt_learner/model.pth.tar-50 --out coop_pets.pt \\
        model=vit_b16 model.weights_file=/models/ViT-B-16.pt dataset=oxford_pets
    promptlab-import shots /data/oxford_pets/split_fewshot          # -> shot_K-seed_S.json next to the .pkl files
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from promptlab.cli_errors import exit_on_user_error

PROG = "promptlab-import"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Import the reference's (CoOp/Dassl) artefacts.")
    sub = parser.add_subparsers(dest="what", required=True)
    ckpt = sub.add_parser("checkpoint", help="a Dassl prompt-learner checkpoint (model.pth.tar-N) to a prompt file")
    ckpt.add_argument("path", type=Path)
    ckpt.add_argument("--method", default=None,
                      choices=("coop", "cocoop", "kgcoop", "prograd", "vpt", "ivlp", "ivlp_language", "maple",
                               "promptsrc"),
                      help="the reference trainer (default: read from the keys: MaPLe, PromptSRC, IVLP, VPT; else "
                           "cocoop if the file has a meta-net, else coop)")
    ckpt.add_argument("--out", type=Path, required=True, help="the promptlab prompt file to write")
    ckpt.add_argument("--classnames", type=Path, default=None,
                      help="a text file with the training class names, one a line, in label order")
    # Overrides (KEY=VALUE, anywhere on the line) name the backbone: parsed as the arguments argparse leaves over.
    ckpt.epilog = ("Further KEY=VALUE arguments are promptlab-train overrides naming the backbone it was trained on "
                   "(model=vit_b16 model.weights_file=...) and optionally dataset=... and method.learner.*.")
    shots = sub.add_parser("shots", help="Dassl few-shot selections (split_fewshot/shot_K-seed_S.pkl) to JSON")
    shots.add_argument("source", type=Path, help="a split_fewshot folder or one shot_K-seed_S.pkl")
    shots.add_argument("--out", type=Path, default=None, help="output folder (default: the source folder)")
    shots.add_argument("--dataset-dir", type=Path, default=None,
                       help="your copy of the dataset folder (default: the parent of the split_fewshot folder)")
    shots.add_argument("--reference-root", default=None,
                       help="the dataset folder as it was where the selection was drawn (default: cut the image "
                            "paths after the dataset folder's name)")
    shots.add_argument("--force", action="store_true", help="replace existing JSON selections")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    stray = [a for a in extra if "=" not in a or a.startswith("-")]
    if stray or (extra and args.what != "checkpoint"):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    args.overrides = extra
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    with exit_on_user_error(PROG):
        if args.what == "checkpoint":
            from promptlab.reference_import.checkpoint import (
                DEEP_METHODS,
                deep_evaluate_command,
                evaluate_command,
                import_checkpoint,
            )

            names = None
            if args.classnames is not None:
                names = [line.strip() for line in args.classnames.read_text(encoding="utf-8").splitlines()
                         if line.strip()]
            info = import_checkpoint(args.path, args.out, args.overrides, args.method, names)
            print(f"wrote {args.out} ({info['method']}, epoch {info['epoch']})\n  backbone: {info['backbone_check']}"
                  f"\n  layout: {info['layout_check']}")
            for key in info["dropped_keys"]:
                print(f"  left out: {key}")
            if info["method"] in DEEP_METHODS:
                print("evaluate it with:\n  " + deep_evaluate_command(args.out, info["learner_overrides"],
                                                                      args.overrides))
                return 0
            import torch

            state = torch.load(args.out, map_location="cpu", weights_only=True)["state_dict"]
            ctx = state["ctx"]
            csc = ctx.dim() == 3 and info["method"] != "cocoop"
            print("evaluate it with:\n  " + evaluate_command(args.out, info["method"], int(ctx.shape[-2]), csc,
                                                             args.overrides))
        else:
            from promptlab.reference_import.shots import import_shots

            for path in import_shots(args.source, args.out, args.dataset_dir, args.reference_root, args.force):
                print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
