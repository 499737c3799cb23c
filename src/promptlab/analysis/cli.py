"""`promptlab-analyze`: prompt-drift diagnostics of finished runs.

    promptlab-analyze outputs/runs/2025-01-01/12-00-00_coop_toyworld_16shot_seed1
    promptlab-analyze outputs/sweeps/study/method=coop,seed=1 outputs/sweeps/study/method=cocoop,seed=1 --examples 8

Each run dir gets an analysis/ folder (analysis.json, summary.md, PNGs); the summary and the paths are
printed. A dir that cannot be analysed (missing, no complete record, a trained method without
prompt_learner.pt, data or weights that are gone) is reported on stderr as one paragraph
`promptlab-analyze: error: ...`, the other dirs are still analysed, and the exit status is 1.
HYDRA_FULL_ERROR=1 shows the traceback instead (and stops at the first error).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from promptlab.cli_errors import exit_on_user_error, full_error_requested, print_user_error
from promptlab.errors import PromptlabError

PROG = "promptlab-analyze"
EXIT_OK, EXIT_FAILED = 0, 1


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Prompt-drift diagnostics (zero-shot vs learned class prototypes, base capture of novel "
                    "images) of finished promptlab runs; written to <run dir>/analysis/.",
    )
    parser.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR",
                        help="output dir of a finished run (the folder that holds metrics.json)")
    parser.add_argument("--examples", type=int, default=6, metavar="N",
                        help="novel test images shown before/after learning (default 6)")
    args = parser.parse_args(argv)
    if args.examples < 0:
        parser.error(f"--examples {args.examples}: expected a count >= 0.")
    return args


@exit_on_user_error(PROG)
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # Imported after parsing: torch and Lightning take seconds to import, --help and usage errors should not.
    from promptlab.analysis.runs import analyze_run_dir

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    status = EXIT_OK
    for run_dir in args.run_dirs:
        try:
            paths = analyze_run_dir(run_dir, n_examples=args.examples)
        except PromptlabError as err:  # a bug (any other exception) stops the script with its traceback
            if full_error_requested():
                raise
            print_user_error(PROG, err)
            status = EXIT_FAILED
            continue
        print(paths["summary"].read_text(encoding="utf-8"))
        for name, path in paths.items():
            print(f"{name}: {path}")
        print()
    return status


if __name__ == "__main__":
    sys.exit(main())
