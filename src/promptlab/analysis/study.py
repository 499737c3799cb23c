"""The controlled spurious-background study: one table and one figure from a sweep over
method x toy-world spurious strength x seed (conf/experiment/spurious_study.yaml).

For each (method, spurious strength): base / novel / HM accuracy and the novel classes' prompt drift
(1 - cosine between learned and zero-shot prototypes, from each run's analysis.json), mean ± std over
seeds, plus how CoOp-style methods move against zero-shot on *every* seed (the published pattern: base
up, novel down, growing with the strength of the spurious factor).
The numbers come from the ordinary run records and tables: the rows are the base2novel `ResultTable` of
the sweep (rows split by the spurious strength), with the drift measures as extra columns.
`promptlab-study <sweep dir>`; the experiment config also runs it when its sweep ends.
"""

from __future__ import annotations

import argparse
import io
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from promptlab.cli_errors import full_error_requested, print_user_error
from promptlab.errors import AnalysisError, PromptlabError
from promptlab.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from promptlab.results.metrics import harmonic_mean
from promptlab.results.records import scan_records
from promptlab.results.table import BASE2NOVEL, ResultTable, Row, RunValues, build_table

METHOD_ORDER = ("zeroshot", "coop", "cocoop", "kgcoop")  # the table's method order (results.table) agrees
MEASURES = ("base", "novel", "hm", "novel_drift", "novel_capture")
# Study measures that are not base2novel record metrics: read from each run's analysis.json.
ANALYSIS_MEASURES = ("novel_drift", "novel_capture")


@dataclass
class StudyRow:
    """One (method, spurious strength) row of the study: a base2novel table row seen by the study."""

    method: str
    method_display: str
    spurious: float
    seeds: list[int]
    mean: dict[str, float]
    std: dict[str, float]
    # Per-seed differences against zero-shot at the same strength (learned - zero-shot).
    delta_base: list[float] = field(default_factory=list)
    delta_novel: list[float] = field(default_factory=list)


def analysis_metrics(record: Mapping[str, Any]) -> dict[str, float]:
    """The study's drift measures of one run, from <run_dir>/analysis/analysis.json ({} without one)."""
    path = Path(record["run_dir"]) / "analysis" / "analysis.json"
    if not path.is_file():
        return {}
    analysis = json.loads(path.read_text())
    return {
        "novel_drift": analysis["drift"]["groups"]["novel"]["drift_mean"],
        "novel_capture": 100.0 * analysis["capture"]["learned"]["fraction"],
    }


def study_table(dirs: Iterable[str | os.PathLike[str]]) -> ResultTable:
    """The base2novel table of the toy-world runs under `dirs` (the run records, as `promptlab-table` reads
    them), one row per dataset x method x spurious strength, with the analysis measures as extra columns.

    Raises ValueError when there is no complete base2novel run with a spurious strength.
    """
    dirs = [Path(d) for d in dirs]
    records = []
    for record in scan_records(dirs).complete:
        summary = record["summary"]
        if summary.get("protocol") != BASE2NOVEL or "spurious" not in summary:
            continue
        # A copy whose metrics also hold the analysis measures: the table reads every value from the record.
        records.append({**record, "metrics": {**record["metrics"], **analysis_metrics(record)}})
    if not records:
        where = ", ".join(str(d) for d in dirs)
        raise AnalysisError(f"{where}: no complete base2novel toy-world runs (with a spurious strength) found.")
    # spurious splits rows even when a sweep holds a single strength: the study's rows are per strength.
    return build_table(records, BASE2NOVEL, split_by=("spurious",), extra_metrics=ANALYSIS_MEASURES)


def rows_from_table(table: ResultTable) -> list[StudyRow]:
    """The study rows of a study table (its dataset rows, in the table's order), with the per-seed
    differences of each learned method against zero-shot on the same dataset and strength."""
    rows = [r for r in table.rows if not r.is_average]
    zeroshot: dict[tuple[Any, float, Any], RunValues] = {}
    zeroshot_any: dict[tuple[Any, float], RunValues] = {}  # zero-shot does not depend on the seed
    for row in rows:
        if row.keys["method"] == "zeroshot":
            for run in row.runs:
                zeroshot[(row.keys["dataset"], _spurious(row), run.seed)] = run
                zeroshot_any[(row.keys["dataset"], _spurious(row))] = run
    study_rows = []
    for row in rows:
        runs = sorted(row.runs, key=lambda r: r.seed)
        cells = {m: row.cells.get(m) for m in MEASURES}
        present = {m: c for m, c in cells.items() if c is not None}
        study_row = StudyRow(
            row.keys["method"], row.labels["method"], _spurious(row), [int(r.seed) for r in runs],
            mean={m: c.mean for m, c in present.items()},
            std={m: c.std if c.std is not None else 0.0 for m, c in present.items()},
        )
        if row.keys["method"] != "zeroshot":
            for run in runs:
                ref = (zeroshot.get((row.keys["dataset"], study_row.spurious, run.seed))
                       or zeroshot_any.get((row.keys["dataset"], study_row.spurious)))
                if ref is not None:
                    study_row.delta_base.append(run.values["base"] - ref.values["base"])
                    study_row.delta_novel.append(run.values["novel"] - ref.values["novel"])
        study_rows.append(study_row)
    return study_rows


def study_rows(dirs: Iterable[str | os.PathLike[str]]) -> list[StudyRow]:
    """The study rows of the runs under `dirs` (`rows_from_table(study_table(dirs))`)."""
    return rows_from_table(study_table(dirs))


def _spurious(row: Row) -> float:
    return float(row.keys["spurious"])


def _cell(row: StudyRow, measure: str, scale: float = 1.0, digits: int = 1) -> str:
    if measure not in row.mean:
        return "–"
    return f"{row.mean[measure] * scale:.{digits}f} ± {row.std[measure] * scale:.{digits}f}"


def _range(values: list[float]) -> str:
    return f"{min(values):+.1f} .. {max(values):+.1f}" if values else "–"


def to_markdown(rows: list[StudyRow]) -> str:
    lines = [
        "| Method | Spurious | Base | Novel | HM | Novel drift (1-cos, x100) | Novel captured by base (%) "
        "| Δbase vs ZS (min..max over seeds) | Δnovel vs ZS (min..max) | Seeds |",
        "|:---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row.method_display} | {row.spurious:g} | {_cell(row, 'base')} | {_cell(row, 'novel')} | "
            f"{_cell(row, 'hm')} | {_cell(row, 'novel_drift', 100.0, 2)} | {_cell(row, 'novel_capture')} | "
            f"{_range(row.delta_base)} | {_range(row.delta_novel)} | {len(row.seeds)} |"
        )
    lines.append("")
    lines.append("mean ± population std over seeds (few-shot selections); zero-shot is the same on every seed. "
                 "HM = mean of per-seed HMs. Drift and capture come from each run's analysis.json.")
    return "\n".join(lines) + "\n"


def plot_study(rows: list[StudyRow], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_novel, ax_drift, ax_base) = plt.subplots(1, 3, figsize=(14, 4.2))
    methods = list(dict.fromkeys(r.method for r in rows))
    for method in methods:
        mine = sorted((r for r in rows if r.method == method), key=lambda r: r.spurious)
        xs = [r.spurious for r in mine]
        label = mine[0].method_display
        ax_novel.errorbar(xs, [r.mean["novel"] for r in mine], yerr=[r.std["novel"] for r in mine],
                          marker="o", capsize=3, label=label)
        ax_base.errorbar(xs, [r.mean["base"] for r in mine], yerr=[r.std["base"] for r in mine],
                         marker="o", capsize=3, label=label)
        if all("novel_drift" in r.mean for r in mine):
            ax_drift.errorbar(xs, [100 * r.mean["novel_drift"] for r in mine],
                              yerr=[100 * r.std["novel_drift"] for r in mine], marker="o", capsize=3, label=label)
    ax_novel.set(title="Novel accuracy (among novel classes)", xlabel="spurious strength", ylabel="top-1 %")
    ax_drift.set(title="Drift of novel prototypes", xlabel="spurious strength",
                 ylabel="100 x (1 - cos(learned, zero-shot))")
    ax_base.set(title="Base accuracy", xlabel="spurious strength", ylabel="top-1 %")
    for ax in (ax_novel, ax_drift, ax_base):
        ax.grid(alpha=0.3)
    ax_novel.legend()
    fig.suptitle("Toy world: a spurious background/size rule on the base classes")
    fig.tight_layout()
    buffer = io.BytesIO()  # rendered in memory, then replaced atomically (never half a PNG on disk)
    fig.savefig(buffer, dpi=110, format="png")
    plt.close(fig)
    return atomic_write_bytes(path, buffer.getvalue())


def write_study(sweep_dir: Path, out_dir: Path | None = None, quiet: bool = False) -> dict[str, Path]:
    """Write study.md / study.json / study.png for a sweep dir; print the table and the figure path."""
    out_dir = Path(out_dir or sweep_dir)
    rows = study_rows([Path(sweep_dir)])
    markdown = to_markdown(rows)
    paths = {"markdown": out_dir / "study.md", "json": out_dir / "study.json", "figure": out_dir / "study.png"}
    atomic_write_text(paths["markdown"], markdown)
    atomic_write_json(paths["json"], [row.__dict__ for row in rows], indent=1)
    plot_study(rows, paths["figure"])
    if not quiet:
        print(markdown)
        print(f"study figure: {paths['figure']}")
    return paths


def hm_of_means(row: StudyRow) -> float:
    """HM of the seed-mean base and novel accuracies (how papers summarise a row)."""
    return harmonic_mean(row.mean["base"], row.mean["novel"])


class StudyOnMultirunEnd(Callback):
    """Hydra callback: write the study table and figure when the sweep ends (never raises)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            write_study(Path(str(config.hydra.sweep.dir)))
        except Exception as err:  # noqa: BLE001 - a summary must not turn a finished sweep into a failure
            print(f"promptlab: the study summary failed: {err}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Table and figure of a spurious-strength study sweep.")
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    try:
        write_study(args.sweep_dir, args.out)
    except PromptlabError as err:
        if full_error_requested():
            raise
        print_user_error("promptlab-study", err)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
