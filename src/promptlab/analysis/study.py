"""The controlled spurious-background study: one table and one figure from a sweep over
method x toy-world spurious strength x seed (conf/experiment/spurious_study.yaml).

For each (method, spurious strength): base / novel / HM accuracy and the novel classes' prompt drift
(1 - cosine between learned and zero-shot prototypes, from each run's analysis.json), mean ± std over
seeds, plus how CoOp-style methods move against zero-shot on *every* seed (the published pattern: base
up, novel down, growing with the strength of the spurious factor).
`promptlab-study <sweep dir>`; the experiment config also runs it when its sweep ends.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from promptlab.results.metrics import harmonic_mean
from promptlab.results.records import scan_records

METHOD_ORDER = ("zeroshot", "coop", "cocoop", "kgcoop")
MEASURES = ("base", "novel", "hm", "novel_drift", "novel_capture")


@dataclass
class StudyRun:
    method: str
    method_display: str
    spurious: float
    seed: int
    values: dict[str, float]


@dataclass
class StudyRow:
    method: str
    method_display: str
    spurious: float
    seeds: list[int]
    mean: dict[str, float]
    std: dict[str, float]
    # Per-seed differences against zero-shot at the same strength (learned - zero-shot).
    delta_base: list[float] = field(default_factory=list)
    delta_novel: list[float] = field(default_factory=list)


def collect_runs(dirs: Sequence[Path]) -> list[StudyRun]:
    runs = []
    for record in scan_records(dirs).complete:
        summary, metrics = record["summary"], record["metrics"]
        if summary.get("protocol") != "base2novel" or "spurious" not in summary:
            continue
        values = {"base": metrics["base_acc"], "novel": metrics["novel_acc"], "hm": metrics["hm"]}
        analysis_path = Path(record["run_dir"]) / "analysis" / "analysis.json"
        if analysis_path.is_file():
            analysis = json.loads(analysis_path.read_text())
            values["novel_drift"] = analysis["drift"]["groups"]["novel"]["drift_mean"]
            values["novel_capture"] = 100.0 * analysis["capture"]["learned"]["fraction"]
        runs.append(StudyRun(summary["method"], summary.get("method_display", summary["method"]),
                             float(summary["spurious"]), int(summary["seed"]), values))
    return runs


def build_rows(runs: list[StudyRun]) -> list[StudyRow]:
    groups: dict[tuple[str, float], list[StudyRun]] = {}
    for run in runs:
        groups.setdefault((run.method, run.spurious), []).append(run)
    zeroshot = {(r.spurious, r.seed): r for r in runs if r.method == "zeroshot"}
    zeroshot_any = {r.spurious: r for r in runs if r.method == "zeroshot"}  # zero-shot does not depend on the seed
    rows = []
    order = {m: i for i, m in enumerate(METHOD_ORDER)}
    for (method, spurious), members in sorted(groups.items(), key=lambda kv: (order.get(kv[0][0], 99), kv[0])):
        members.sort(key=lambda r: r.seed)
        mean, std = {}, {}
        for measure in MEASURES:
            values = [r.values[measure] for r in members if measure in r.values]
            if values:
                mean[measure] = statistics.fmean(values)
                std[measure] = statistics.pstdev(values)
        row = StudyRow(method, members[0].method_display, spurious, [r.seed for r in members], mean, std)
        if method != "zeroshot":
            for r in members:
                ref = zeroshot.get((spurious, r.seed)) or zeroshot_any.get(spurious)
                if ref is not None:
                    row.delta_base.append(r.values["base"] - ref.values["base"])
                    row.delta_novel.append(r.values["novel"] - ref.values["novel"])
        rows.append(row)
    return rows


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
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_study(sweep_dir: Path, out_dir: Path | None = None, quiet: bool = False) -> dict[str, Path]:
    """Write study.md / study.json / study.png for a sweep dir; print the table and the figure path."""
    out_dir = Path(out_dir or sweep_dir)
    rows = build_rows(collect_runs([Path(sweep_dir)]))
    if not rows:
        raise ValueError(f"{sweep_dir}: no complete base2novel toy-world runs (with a spurious strength) found.")
    markdown = to_markdown(rows)
    paths = {"markdown": out_dir / "study.md", "json": out_dir / "study.json", "figure": out_dir / "study.png"}
    paths["markdown"].write_text(markdown)
    paths["json"].write_text(json.dumps([row.__dict__ for row in rows], indent=1) + "\n")
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
    except (ValueError, FileNotFoundError) as err:
        print(f"promptlab-study: {err}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
