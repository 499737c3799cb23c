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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from promptlab.cli_errors import full_error_requested, print_user_error
from promptlab.errors import AnalysisError, PromptlabError
from promptlab.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from promptlab.protocols.base2novel import Base2Novel
from promptlab.results.records import scan_records
from promptlab.results.table import ResultTable, Row, RunValues, build_table

# The study's row order: text-prompt learners, then those with image-tower tokens; other methods follow in the
# table's order (results.table).
METHOD_ORDER = ("zeroshot", "coop", "cocoop", "kgcoop", "prograd", "vpt", "ivlp", "ivlp_language", "maple",
                "promptsrc")
MEASURES = ("base", "novel", "hm", "novel_drift", "novel_capture", "novel_image_drift")
# Study measures that are not base2novel record metrics: read from each run's analysis.json. Image drift exists
# only for learners with image-tower tokens (VPT, IVLP, MaPLe, PromptSRC): 1 - cos(frozen, prompted feature).
ANALYSIS_MEASURES = ("novel_drift", "novel_capture", "novel_image_drift")


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
    # Each seed's own values (seed -> measure -> value): the per-seed table.
    per_seed: dict[int, dict[str, float]] = field(default_factory=dict)


def analysis_metrics(record: Mapping[str, Any]) -> dict[str, float]:
    """The study's drift measures of one run, from <run_dir>/analysis/analysis.json ({} without one)."""
    path = Path(record["run_dir"]) / "analysis" / "analysis.json"
    if not path.is_file():
        return {}
    analysis = json.loads(path.read_text())
    out = {
        "novel_drift": analysis["drift"]["groups"]["novel"]["drift_mean"],
        "novel_capture": 100.0 * analysis["capture"]["learned"]["fraction"],
    }
    image = (analysis.get("image_drift") or {}).get("novel")
    if image and image.get("drift_mean") is not None:
        out["novel_image_drift"] = image["drift_mean"]
    return out


def study_table(dirs: Iterable[str | os.PathLike[str]]) -> ResultTable:
    """The base2novel table of the toy-world runs under `dirs` (the run records, as `promptlab-table` reads
    them), one row per dataset x method x spurious strength, with the analysis measures as extra columns.

    Raises ValueError when there is no complete base2novel run with a spurious strength.
    """
    dirs = [Path(d) for d in dirs]
    records = []
    for record in scan_records(dirs).complete:
        summary = record["summary"]
        if summary.get("protocol") != Base2Novel.name or "spurious" not in summary:
            continue
        # A copy whose metrics also hold the analysis measures: the table reads every value from the record.
        records.append({**record, "metrics": {**record["metrics"], **analysis_metrics(record)}})
    if not records:
        where = ", ".join(str(d) for d in dirs)
        raise AnalysisError(f"{where}: no complete base2novel toy-world runs (with a spurious strength) found.")
    # spurious splits rows even when a sweep holds a single strength: the study's rows are per strength.
    return build_table(records, Base2Novel.name, split_by=("spurious",), extra_metrics=ANALYSIS_MEASURES)


def rows_from_table(table: ResultTable) -> list[StudyRow]:
    """The study rows of a study table (its dataset rows, in the table's order), with the per-seed
    differences of each learned method against zero-shot on the same dataset and strength."""
    rows = [r for r in table.rows if not r.is_average]
    # Stable: the table's order (dataset, strength) within each method of METHOD_ORDER.
    rows.sort(key=lambda r: METHOD_ORDER.index(r.keys["method"]) if r.keys["method"] in METHOD_ORDER
              else len(METHOD_ORDER))
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
            per_seed={int(r.seed): {m: r.values[m] for m in MEASURES if m in r.values} for r in runs},
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
        "| Method | Spurious | Base | Novel | HM | Novel drift (1-cos, x100) | Novel image drift (1-cos, x100) "
        "| Novel captured by base (%) | Δbase vs ZS (min..max over seeds) | Δnovel vs ZS (min..max) | Seeds |",
        "|:---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row.method_display} | {row.spurious:g} | {_cell(row, 'base')} | {_cell(row, 'novel')} | "
            f"{_cell(row, 'hm')} | {_cell(row, 'novel_drift', 100.0, 2)} | "
            f"{_cell(row, 'novel_image_drift', 100.0, 2)} | {_cell(row, 'novel_capture')} | "
            f"{_range(row.delta_base)} | {_range(row.delta_novel)} | {len(row.seeds)} |"
        )
    lines.append("")
    lines.append("mean ± population std over seeds (few-shot selections); zero-shot is the same on every seed. "
                 "HM = mean of per-seed HMs. Drift and capture come from each run's analysis.json: drift compares "
                 "the class-text prototypes with zero-shot ones; image drift (methods with image-tower tokens only) "
                 "compares each novel test image's prompted feature with its frozen one; capture scores novel "
                 "images among all classes with the features the method scores with.")
    return "\n".join(lines) + "\n"


def _value(values: Mapping[str, float], measure: str, scale: float = 1.0, digits: int = 1) -> str:
    return f"{values[measure] * scale:.{digits}f}" if measure in values else "–"


def per_seed_markdown(rows: list[StudyRow]) -> str:
    """Every run of the study: one line per method, strength and seed."""
    lines = ["| Method | Spurious | Seed | Base | Novel | HM | Novel drift (x100) | Novel image drift (x100) "
             "| Novel captured by base (%) |", "|:---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        for seed, values in sorted(row.per_seed.items()):
            lines.append(
                f"| {row.method_display} | {row.spurious:g} | {seed} | {_value(values, 'base')} | "
                f"{_value(values, 'novel')} | {_value(values, 'hm')} | {_value(values, 'novel_drift', 100.0, 2)} | "
                f"{_value(values, 'novel_image_drift', 100.0, 2)} | {_value(values, 'novel_capture')} |")
    return "\n".join(lines) + "\n"


def plot_study(rows: list[StudyRow], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(r.method for r in rows))
    with_image = [m for m in methods if all("novel_image_drift" in r.mean for r in rows if r.method == m)]
    panels = 4 if with_image else 3
    fig, axes = plt.subplots(1, panels, figsize=(4.6 * panels, 4.6))
    ax_novel, ax_drift, ax_base = axes[0], axes[1], axes[-1]
    colours = plt.get_cmap("tab10" if len(methods) <= 10 else "tab20")
    for index, method in enumerate(methods):
        mine = sorted((r for r in rows if r.method == method), key=lambda r: r.spurious)
        xs = [r.spurious for r in mine]
        # One colour per method in every panel (the image-drift panel shows only some methods).
        style = {"marker": "o", "capsize": 3, "label": mine[0].method_display, "color": colours(index)}
        ax_novel.errorbar(xs, [r.mean["novel"] for r in mine], yerr=[r.std["novel"] for r in mine], **style)
        ax_base.errorbar(xs, [r.mean["base"] for r in mine], yerr=[r.std["base"] for r in mine], **style)
        for ax, measure in ((ax_drift, "novel_drift"), (axes[2], "novel_image_drift")):
            if (measure == "novel_drift" or method in with_image) and all(measure in r.mean for r in mine):
                ax.errorbar(xs, [100 * r.mean[measure] for r in mine],
                            yerr=[100 * r.std[measure] for r in mine], **style)
    ax_novel.set(title="Novel accuracy (among novel classes)", xlabel="spurious strength", ylabel="top-1 %")
    ax_drift.set(title="Drift of novel class-text prototypes", xlabel="spurious strength",
                 ylabel="100 x (1 - cos(learned, zero-shot))")
    if with_image:
        axes[2].set(title="Drift of novel image features\n(image-tower prompts only)", xlabel="spurious strength",
                    ylabel="100 x (1 - cos(prompted, frozen))")
    ax_base.set(title="Base accuracy", xlabel="spurious strength", ylabel="top-1 %")
    for ax in axes:
        ax.grid(alpha=0.3)
    handles, labels = ax_novel.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(methods), 5), frameon=False)
    fig.suptitle("Toy world: a spurious background/size rule on the base classes")
    fig.tight_layout(rect=(0, 0.12 if len(methods) > 5 else 0.08, 1, 1))
    buffer = io.BytesIO()  # rendered in memory, then replaced atomically (never half a PNG on disk)
    fig.savefig(buffer, dpi=110, format="png")
    plt.close(fig)
    return atomic_write_bytes(path, buffer.getvalue())


def write_study(sweep_dir: Path | Sequence[Path], out_dir: Path | None = None, quiet: bool = False) -> dict[str, Path]:
    """Write study.md / study.json / study.png for a sweep dir, or several (e.g. `make study` and `make study-all`
    sweeps together; by default into the first); print the table and the figure path."""
    dirs = [Path(sweep_dir)] if isinstance(sweep_dir, (str, os.PathLike)) else [Path(d) for d in sweep_dir]
    out_dir = Path(out_dir or dirs[0])
    rows = study_rows(dirs)
    markdown = to_markdown(rows) + "\n## Per seed\n\n" + per_seed_markdown(rows)
    paths = {"markdown": out_dir / "study.md", "json": out_dir / "study.json", "figure": out_dir / "study.png"}
    atomic_write_text(paths["markdown"], markdown)
    atomic_write_json(paths["json"], [row.__dict__ for row in rows], indent=1)
    plot_study(rows, paths["figure"])
    if not quiet:
        print(markdown)
        print(f"study figure: {paths['figure']}")
    return paths


class StudyOnMultirunEnd(Callback):
    """Hydra callback: write the study table and figure when the sweep ends (never raises)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            write_study(Path(str(config.hydra.sweep.dir)))
        except Exception as err:  # noqa: BLE001 - a summary must not turn a finished sweep into a failure
            print(f"promptlab: the study summary failed: {err}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Table and figure of a spurious-strength study sweep.")
    parser.add_argument("sweep_dirs", type=Path, nargs="+", metavar="sweep_dir",
                        help="one or more sweep dirs; a (method, strength, seed) must not be in two of them")
    parser.add_argument("--out", type=Path, default=None, help="where study.{md,json,png} go (default: the first dir)")
    args = parser.parse_args(argv)
    try:
        write_study(args.sweep_dirs, args.out)
    except PromptlabError as err:
        if full_error_requested():
            raise
        print_user_error("promptlab-study", err)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
