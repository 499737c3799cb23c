"""`promptlab-table`: tabulate finished runs (a sweep dir, run dirs, or any parent of them).

    promptlab-table multirun/2025-01-01/12-00-00            # writes the tables into that sweep dir
    promptlab-table runs/a runs/b --out tables/ --quiet

For each protocol found it writes table_<protocol>.md / .csv / .tex / .png and prints the tables.
Failed and unfinished runs are listed, not tabulated; with no complete run at all it exits with 1.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from promptlab.results.records import SkippedRun, scan_records
from promptlab.results.table import ResultTable, build_tables, print_table, to_csv, to_latex, to_markdown

EXIT_OK, EXIT_NO_RECORDS, EXIT_USAGE = 0, 1, 2


class NoCompleteRecordsError(RuntimeError):
    """Nothing to tabulate: no metrics.json with status "complete" under the given directories."""

    def __init__(self, dirs: Sequence[Path], skipped: Sequence[SkippedRun]) -> None:
        where = ", ".join(str(d) for d in dirs)
        lines = [f"no complete run record (metrics.json with status 'complete') under {where}."]
        if skipped:
            lines.append(f"Found {len(skipped)} failed or incomplete run(s):")
            lines += [f"  {s}" for s in skipped]
            lines.append("Fix and rerun them (a resumed sweep skips the runs that completed).")
        else:
            lines.append("Pass the sweep directory (hydra.sweep.dir) or a run directory of promptlab-train.")
        super().__init__("\n".join(lines))
        self.skipped = list(skipped)


@dataclass
class Aggregation:
    """What `aggregate_runs` produced: the tables, the files written and the runs it left out."""

    tables: list[ResultTable]
    paths: dict[str, Path]
    skipped: list[SkippedRun]
    out_dir: Path

    @property
    def figure_paths(self) -> list[Path]:
        return [p for p in self.paths.values() if p.suffix == ".png"]


def default_out_dir(dirs: Sequence[Path]) -> Path:
    """The single given directory, else ./outputs/tables/<timestamp>."""
    if len(dirs) == 1 and dirs[0].is_dir():
        return dirs[0]
    return Path("outputs") / "tables" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")


def aggregate_runs(
    dirs: Iterable[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str] | None = None,
    ignore_keys: Iterable[str] = (),
) -> Aggregation:
    """Find the records under `dirs`, build one table per protocol and write its files into `out_dir`.

    Raises NoCompleteRecordsError when no record is complete, FileNotFoundError for a missing dir.
    """
    dirs = [Path(d) for d in dirs]
    scan = scan_records(dirs)
    if not scan.complete:
        raise NoCompleteRecordsError(dirs, scan.skipped)
    out = Path(out_dir) if out_dir is not None else default_out_dir(dirs)
    out.mkdir(parents=True, exist_ok=True)
    tables = build_tables(scan.complete, ignore_keys)
    paths: dict[str, Path] = {}
    for table in tables:
        # Imported here: matplotlib costs a second, and only this step needs it.
        from promptlab.results.plots import plot_table

        stem = "table_" + re.sub(r"[^\w.-]", "_", table.protocol)
        for ext, text in (("md", to_markdown(table)), ("csv", to_csv(table)), ("tex", to_latex(table))):
            path = out / f"{stem}.{ext}"
            path.write_text(text, encoding="utf-8")
            paths[f"{table.protocol}.{ext}"] = path
        paths[f"{table.protocol}.png"] = plot_table(table, out / f"{stem}.png")
    if scan.skipped:
        path = out / "skipped_runs.txt"
        path.write_text("".join(f"{s}\n" for s in scan.skipped), encoding="utf-8")
        paths["skipped_runs"] = path
    return Aggregation(tables, paths, scan.skipped, out)


def aggregate(
    dirs: Iterable[str | os.PathLike[str]], out_dir: str | os.PathLike[str] | None
) -> dict[str, Path]:
    """Tabulate the runs under `dirs` into `out_dir` (None: `default_out_dir`).

    Returns the written files keyed "<protocol>.<ext>" ("base2novel.md", "base2novel.png", ...), plus
    "skipped_runs" when some runs were left out.
    """
    return aggregate_runs(dirs, out_dir).paths


def report(result: Aggregation, console: object = None) -> None:
    """Print the tables, the runs left out and where the files went."""
    from rich.console import Console

    console = console or Console(width=None if sys.stdout.isatty() else 200)
    for table in result.tables:
        print_table(table, console)
        console.print()
    if result.skipped:
        console.print(f"{len(result.skipped)} run(s) left out:", style="yellow")
        for skipped in result.skipped:
            console.print(f"  {skipped}", style="yellow", markup=False, highlight=False)
    console.print(f"tables written to {result.out_dir}", markup=False, highlight=False)
    for path in result.figure_paths:
        console.print(f"figure: {path}", markup=False, highlight=False)


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
    except FileNotFoundError as exc:
        print(f"promptlab-table: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (NoCompleteRecordsError, ValueError) as exc:  # ValueError: records without the table's metrics
        print(f"promptlab-table: {exc}", file=sys.stderr)
        return EXIT_NO_RECORDS
    if not args.quiet:
        report(result)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
