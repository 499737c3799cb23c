"""`promptlab-table`: tabulate finished runs (a sweep dir, run dirs, or any parent of them).

    promptlab-table multirun/2025-01-01/12-00-00            # writes the tables into that sweep dir
    promptlab-table runs/a runs/b --out tables/ --quiet

For each protocol found it writes table_<protocol>.md / .csv / .tex / .png and prints the tables.
Failed and unfinished runs are listed, not tabulated; with no complete run at all it exits with 1.
The work is done by `promptlab.results.aggregate`; this module is the command line only.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

# Re-exported: these lived here before aggregation got its own module, and callers import them from here.
from promptlab.cli_errors import full_error_requested, print_user_error
from promptlab.errors import MissingPathError, PromptlabError
from promptlab.results.aggregate import (  # noqa: F401
    Aggregation,
    NoCompleteRecordsError,
    aggregate,
    aggregate_runs,
    default_out_dir,
)

EXIT_OK, EXIT_NO_RECORDS, EXIT_USAGE = 0, 1, 2


def report(result: Aggregation, console: object = None) -> None:
    """Print the tables, the runs left out and where the files went (`Aggregation.report`)."""
    result.report(console)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="promptlab-table",
        description="Tabulate promptlab runs: one table (md/csv/tex/png) per protocol.",
    )
    parser.add_argument("dirs", nargs="+", type=Path, help="sweep dirs, run dirs or parents of them")
    parser.add_argument(
        "--out", type=Path, default=None,
        help="output dir (default: the single given dir, else ./outputs/tables/<timestamp>)",
    )
    parser.add_argument("--quiet", action="store_true", help="print nothing but errors")
    parser.add_argument(
        "--ignore-key", action="append", default=[], metavar="KEY",
        help="summary key that must not become a column (per-run bookkeeping); repeatable",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        result = aggregate_runs(args.dirs, args.out, args.ignore_key)
    except PromptlabError as exc:  # a bug propagates with its traceback
        if full_error_requested():
            raise
        print_user_error("promptlab-table", exc)
        return EXIT_USAGE if isinstance(exc, MissingPathError) else EXIT_NO_RECORDS  # a wrong path is a usage error
    if not args.quiet:
        report(result)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
