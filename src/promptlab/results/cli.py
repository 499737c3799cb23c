"""`promptlab-table`: tabulate finished runs (a sweep dir, run dirs, or any parent of them).

    promptlab-table multirun/2025-01-01/12-00-00            # writes the tables into that sweep dir
    promptlab-table runs/a runs/b --out tables/ --quiet
    promptlab-table outputs/sweeps/base2novel_paper --published   # each run next to the paper's number

For each protocol found it writes table_<protocol>.md / .csv / .tex / .png and prints the tables; with
--published also table_<protocol>_published.md / .csv: the runs beside the published numbers, the difference
and the 95 % confidence interval over seeds (promptlab.results.published).
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
from promptlab.results.records import TUNING_SOURCES

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
    parser.add_argument("--all-metrics", action="store_true",
                        help="also top-5 and mean-per-class accuracy columns (default: micro top-1, as the papers)")
    parser.add_argument(
        "--published", action="store_true",
        help="also put each run next to the published number (paper and table cited) with the difference",
    )
    parser.add_argument(
        "--tuned-on", action="append", default=[], choices=TUNING_SOURCES, metavar="SOURCE",
        help="only runs whose tuned values saw this data (the record's tuned_on: " + ", ".join(TUNING_SOURCES)
        + "); repeatable",
    )
    parser.add_argument(
        "--ignore-key", action="append", default=[], metavar="KEY",
        help="summary key that must not become a column (per-run bookkeeping); repeatable",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        result = aggregate_runs(args.dirs, args.out, args.ignore_key, all_metrics=args.all_metrics,
                                tuned_on=args.tuned_on)
    except PromptlabError as exc:  # a bug propagates with its traceback
        if full_error_requested():
            raise
        print_user_error("promptlab-table", exc)
        return EXIT_USAGE if isinstance(exc, MissingPathError) else EXIT_NO_RECORDS  # a wrong path is a usage error
    if not args.quiet:
        report(result)
    if args.published:
        write_published(args.dirs, result.out_dir, args.ignore_key, quiet=args.quiet)
    return EXIT_OK


def write_published(
    dirs: Sequence[Path], out_dir: Path, ignore_keys: Sequence[str] = (), quiet: bool = False
) -> list[Path]:
    """The comparison with the published numbers of each table: printed, and written as
    table_<protocol>_published.md / .csv in `out_dir`."""
    from promptlab.io import atomic_write_text
    from promptlab.results.aggregate import read_sweep, table_stem
    from promptlab.results.published import compare_with_published
    from promptlab.results.table import print_table

    sweep = read_sweep(dirs, ignore_keys)
    paths = []
    for table in sweep:
        compared = compare_with_published(table, sweep.records)
        stem = f"{table_stem(table.protocol)}_published"
        paths.append(atomic_write_text(out_dir / f"{stem}.md", compared.to_markdown()))
        paths.append(atomic_write_text(out_dir / f"{stem}.csv", compared.to_csv()))
        if not quiet:
            print_table(compared)
    if not quiet:
        print("published comparison written to " + ", ".join(str(p) for p in paths))
    return paths


if __name__ == "__main__":
    sys.exit(main())
