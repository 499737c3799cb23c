"""From finished runs to tables: find the run records, build one table per protocol, write the files.

    sweep = read_sweep("multirun/2025-01-01/12-00-00")      # reads only; nothing is written
    print(sweep["base2novel"].to_markdown())
    for table in sweep: ...
    result = aggregate_runs([sweep_dir], sweep_dir)          # also writes table_<protocol>.md/.csv/.tex/.png

The `promptlab-table` console script (`promptlab.results.cli`) and the Hydra multirun callback
(`promptlab.results.callback`) are thin layers over this module.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from promptlab.errors import NoCompleteRecordsError, RecordError
from promptlab.io import atomic_write_text
from promptlab.results.planned import missing_jobs
from promptlab.results.records import SkippedRun, scan_records
from promptlab.results.table import ResultTable, build_tables, print_table

__all__ = [
    "SKIPPED_RUNS_FILENAME",
    "Aggregation",
    "NoCompleteRecordsError",
    "SweepTables",
    "aggregate",
    "aggregate_runs",
    "default_out_dir",
    "read_sweep",
    "write_tables",
]

SKIPPED_RUNS_FILENAME = "skipped_runs.txt"

PathArg = str | os.PathLike[str]


# --------------------------------------------------------------------------- reading


@dataclass
class SweepTables:
    """The tables of some runs, by protocol, and the runs left out (failed, unfinished, unreadable, missing).

    ``sweep["base2novel"]`` is one table, ``for table in sweep`` goes through the tables in the papers'
    protocol order, ``"fewshot" in sweep`` asks whether there is one. `records` are the complete run
    records the tables were built from.
    """

    tables: dict[str, ResultTable]
    skipped: list[SkippedRun] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)

    @property
    def protocols(self) -> list[str]:
        return list(self.tables)

    def __getitem__(self, protocol: str) -> ResultTable:
        try:
            return self.tables[protocol]
        except KeyError:
            raise KeyError(
                f"no {protocol!r} table in this sweep; it has {self.protocols or 'no tables'}."
            ) from None

    def __contains__(self, protocol: object) -> bool:
        return protocol in self.tables

    def __iter__(self) -> Iterator[ResultTable]:
        return iter(self.tables.values())

    def __len__(self) -> int:
        return len(self.tables)


def _as_paths(paths: PathArg | Iterable[PathArg]) -> list[Path]:
    # One path is the common call (read_sweep(sweep_dir)); a str must not be iterated char by char.
    if isinstance(paths, (str, os.PathLike)):
        return [Path(paths)]
    return [Path(p) for p in paths]


def read_sweep(path: PathArg | Iterable[PathArg], ignore_keys: Iterable[str] = (),
               all_metrics: bool = False, tuned_on: Iterable[str] = ()) -> SweepTables:
    """The tables of the runs under `path`: a sweep dir, a run dir, a parent of them, or several of these.

    Writes nothing. `ignore_keys`: summary keys that must not become columns (per-run bookkeeping);
    `all_metrics`: top-5 and mean-per-class accuracy columns too; `tuned_on`: keep only the runs whose tuned
    values saw these data (the record's `summary.tuned_on`: "none", "few-shot val", "full val", "test").
    Raises NoCompleteRecordsError when no record is complete (its message lists the runs left out),
    MissingPathError (a FileNotFoundError) for a path that does not exist, and ValueError when no record
    has the metrics its protocol's table needs.
    """
    dirs = _as_paths(path)
    scan = scan_records(dirs)
    # Jobs of a sweep that left no record at all (never started, killed while loading) are listed too.
    skipped = list(scan.skipped) + missing_jobs(dirs)
    if not scan.complete:
        raise NoCompleteRecordsError(dirs, skipped)
    complete = _tuned_on(list(scan.complete), set(tuned_on)) if tuned_on else list(scan.complete)
    tables = build_tables(complete, ignore_keys, all_metrics)
    return SweepTables({t.protocol: t for t in tables}, skipped, complete)


def _tuned_on(records: list[dict[str, Any]], sources: set[str]) -> list[dict[str, Any]]:
    kept = [r for r in records if (r.get("summary") or {}).get("tuned_on") in sources]
    if not kept:
        found = sorted({str((r.get("summary") or {}).get("tuned_on", "not recorded")) for r in records})
        raise RecordError(f"no complete run was tuned on {', '.join(sorted(sources))}: the runs here were tuned on "
                          f"{', '.join(found)} (records written before promptlab recorded it say 'not recorded').")
    return kept


# --------------------------------------------------------------------------- writing


def table_stem(protocol: str) -> str:
    """File name stem of a protocol's table files: table_<protocol>, with unsafe characters replaced."""
    return "table_" + re.sub(r"[^\w.-]", "_", protocol)


def write_tables(sweep: SweepTables, out_dir: PathArg) -> dict[str, Path]:
    """Write each table's md / csv / tex / png into `out_dir`, and skipped_runs.txt when runs were left out.

    Returns the files keyed "<protocol>.<ext>" (plus "skipped_runs"). Every file is replaced atomically,
    so a reader never sees half a table. A skipped_runs.txt from an earlier aggregation of the same dir
    is removed when nothing was skipped this time: it would list runs that have since completed.
    """
    # Imported here: matplotlib costs a second, and only this step needs it.
    from promptlab.results.plots import plot_table

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for table in sweep:
        stem = table_stem(table.protocol)
        for ext, text in (("md", table.to_markdown()), ("csv", table.to_csv()), ("tex", table.to_latex())):
            paths[f"{table.protocol}.{ext}"] = atomic_write_text(out / f"{stem}.{ext}", text)
        paths[f"{table.protocol}.png"] = plot_table(table, out / f"{stem}.png")
    skipped_path = out / SKIPPED_RUNS_FILENAME
    if sweep.skipped:
        paths["skipped_runs"] = atomic_write_text(skipped_path, "".join(f"{s}\n" for s in sweep.skipped))
    else:
        skipped_path.unlink(missing_ok=True)
    return paths


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

    def report(self, console: Any = None) -> None:
        """Print the tables, the runs left out and where the files went (rich; the CLI and the callback)."""
        from rich.console import Console

        console = console or Console(width=None if sys.stdout.isatty() else 200)
        for table in self.tables:
            print_table(table, console)
            console.print()
        if self.skipped:
            console.print(f"{len(self.skipped)} run(s) left out:", style="yellow")
            for skipped in self.skipped:
                console.print(f"  {skipped}", style="yellow", markup=False, highlight=False)
        console.print(f"tables written to {self.out_dir}", markup=False, highlight=False)
        for path in self.figure_paths:
            console.print(f"figure: {path}", markup=False, highlight=False)


def default_out_dir(dirs: Sequence[Path]) -> Path:
    """The single given directory, else ./outputs/tables/<timestamp>."""
    if len(dirs) == 1 and dirs[0].is_dir():
        return dirs[0]
    return Path("outputs") / "tables" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")


def aggregate_runs(
    dirs: PathArg | Iterable[PathArg],
    out_dir: PathArg | None = None,
    ignore_keys: Iterable[str] = (),
    all_metrics: bool = False,
    tuned_on: Iterable[str] = (),
) -> Aggregation:
    """`read_sweep(dirs)`, then write its tables into `out_dir` (None: `default_out_dir`).

    Raises what read_sweep raises; nothing is written then.
    """
    paths = _as_paths(dirs)
    sweep = read_sweep(paths, ignore_keys, all_metrics, tuned_on)
    out = Path(out_dir) if out_dir is not None else default_out_dir(paths)
    written = write_tables(sweep, out)
    return Aggregation(list(sweep), written, sweep.skipped, out)


def aggregate(dirs: PathArg | Iterable[PathArg], out_dir: PathArg | None) -> dict[str, Path]:
    """Tabulate the runs under `dirs` into `out_dir` (None: `default_out_dir`).

    Returns the written files keyed "<protocol>.<ext>" ("base2novel.md", "base2novel.png", ...), plus
    "skipped_runs" when some runs were left out.
    """
    return aggregate_runs(dirs, out_dir).paths
