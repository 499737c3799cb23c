"""Figures of result tables (PNG, matplotlib's Agg canvas: no display and no pyplot global state).

Which figure a table gets is declared by its protocol (`Protocol.figure`, `Protocol.plots_shots`):

- base2novel: per dataset (Average last) and method, a solid base bar and a hatched novel bar in the
  method's colour, with a black line + dot at the HM; error bars are the std over seeds.
- other protocols: grouped bars, one group per dataset (single-column tables such as fewshot) or per
  column (source, each target, target average), one bar per method/row.
- fewshot sweeps over several shot counts: accuracy versus shots (log2 axis), one panel per dataset and the
  Average, one line per method with the std over seeds as a band, as the CoOp paper's Figure 3; a method run
  at a single shot count (zero-shot CLIP) is drawn as a horizontal dashed line.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from promptlab.io import atomic_write_bytes
from promptlab.protocols import table_protocol
from promptlab.results.table import Cell, ResultTable

_DPI = 150


def _colour(index: int) -> str:
    return f"C{index % 10}"


def _new_figure(n_groups: int, n_bars_per_group: int) -> tuple[Figure, Axes]:
    width = max(6.0, 1.5 + n_groups * (0.4 + 0.3 * n_bars_per_group))
    figure = Figure(figsize=(min(width, 40.0), 4.5))
    FigureCanvasAgg(figure)  # attaches the Agg canvas used by savefig
    return figure, figure.add_subplot()


def _save(figure: Figure, path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    figure.tight_layout()
    # Rendered in memory, then replaced atomically: a W&B upload or a reader never gets half a PNG.
    buffer = io.BytesIO()
    figure.savefig(buffer, dpi=_DPI, format=path.suffix.lstrip(".") or "png")
    return atomic_write_bytes(path, buffer.getvalue())


def _tick_style(labels: list[str]) -> dict[str, object]:
    crowded = len(labels) > 4 or sum(len(label) for label in labels) > 60
    return {"rotation": 30, "ha": "right"} if crowded else {"rotation": 0, "ha": "center"}


def _upper_limit(cells: list[Cell]) -> float:
    top = max((c.mean + (c.std or 0.0) for c in cells), default=100.0)
    return min(105.0, max(10.0, top * 1.1))


def plot_base2novel(table: ResultTable, path: str | os.PathLike[str]) -> Path:
    """Grouped base/novel bars with the HM marked; returns the PNG path."""
    if table_protocol(table.protocol).figure != "base_novel":
        raise ValueError(f"plot_base2novel needs a base2novel table (a protocol with figure='base_novel'), got "
                         f"protocol {table.protocol!r}.")
    groups = list(dict.fromkeys(row.labels["dataset"] for row in table.rows))
    series = list(dict.fromkeys(table.series_label(row) for row in table.rows))
    figure, ax = _new_figure(len(groups), 2 * len(series))
    slot = 0.8 / len(series)
    cells: list[Cell] = []
    for row in table.rows:
        g, s = groups.index(row.labels["dataset"]), series.index(table.series_label(row))
        left = g - 0.4 + s * slot
        base, novel, hm = row.cells.get("base"), row.cells.get("novel"), row.cells.get("hm")
        colour = _colour(s)
        for offset, cell, style in ((0.0, base, {}), (0.5, novel, {"hatch": "//", "alpha": 0.55})):
            if cell is None:
                continue
            cells.append(cell)
            ax.bar(left + (offset + 0.25) * slot, cell.mean, width=slot / 2, color=colour,
                   edgecolor="black", linewidth=0.4, yerr=cell.std, capsize=2, **style)
        if hm is not None:
            ax.hlines(hm.mean, left + 0.05 * slot, left + 0.95 * slot, colors="black", linewidth=1.2)
            ax.plot(left + 0.5 * slot, hm.mean, "o", color="black", markersize=3)
    ax.set_xticks(range(len(groups)), groups, **_tick_style(groups))
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, _upper_limit(cells))
    ax.set_title("base-to-novel: base (solid), novel (hatched), HM (black line)")
    handles = [Patch(facecolor=_colour(i), edgecolor="black", label=label) for i, label in enumerate(series)]
    handles += [Patch(facecolor="white", edgecolor="black", hatch="//", label="novel")]
    ax.legend(handles=handles, fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="y", alpha=0.3)
    return _save(figure, path)


def plot_grouped(table: ResultTable, path: str | os.PathLike[str]) -> Path:
    """Grouped bars for fewshot, cross_dataset, domain_generalization (and unknown) tables."""
    if len(table.value_columns) == 1:
        column = table.value_columns[0]
        groups = list(dict.fromkeys(row.labels["dataset"] for row in table.rows))
        series = list(dict.fromkeys(table.series_label(row) for row in table.rows))
        bars = [(groups.index(r.labels["dataset"]), series.index(table.series_label(r)), r.cells.get(column))
                for r in table.rows]
    else:
        groups = [table.title_of(c) for c in table.value_columns]
        several_datasets = len({r.labels["dataset"] for r in table.rows}) > 1
        prefix = [f"{r.labels['dataset']}: " if several_datasets else "" for r in table.rows]
        series = [p + table.series_label(r) for p, r in zip(prefix, table.rows, strict=True)]
        bars = [(g, s, row.cells.get(c)) for s, row in enumerate(table.rows)
                for g, c in enumerate(table.value_columns)]
    figure, ax = _new_figure(len(groups), len(series))
    slot = 0.8 / len(series)
    cells = [cell for _, _, cell in bars if cell is not None]
    for g, s, cell in bars:
        if cell is not None:
            ax.bar(g - 0.4 + (s + 0.5) * slot, cell.mean, width=slot, color=_colour(s), edgecolor="black",
                   linewidth=0.4, yerr=cell.std, capsize=2)
    ax.set_xticks(range(len(groups)), groups, **_tick_style(groups))
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, _upper_limit(cells))
    ax.set_title(table.protocol)
    handles = [Patch(facecolor=_colour(i), edgecolor="black", label=label) for i, label in enumerate(series)]
    ax.legend(handles=handles, fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="y", alpha=0.3)
    return _save(figure, path)


def is_shot_sweep(table: ResultTable) -> bool:
    """A table of a protocol drawn by shots (fewshot) whose rows are split by several shot counts."""
    if not table_protocol(table.protocol).plots_shots or "shots" not in table.split_columns:
        return False
    return len({row.keys.get("shots") for row in table.rows}) > 1


def series_axes(table: ResultTable) -> list[str]:
    """The split columns besides shots that separate curves: those taking several values at one (dataset, method,
    shots). A key that only follows the shot count (epochs by shots, the reference's schedule) stays one curve."""
    axes = []
    for column in table.split_columns:
        if column == "shots":
            continue
        values: dict[tuple[str, str, Any], set[str]] = {}
        for row in table.rows:
            point = (row.labels["dataset"], row.labels["method"], row.keys.get("shots"))
            values.setdefault(point, set()).add(str(row.keys.get(column)))
        if any(len(found) > 1 for found in values.values()):
            axes.append(column)
    return axes


def plot_accuracy_vs_shots(table: ResultTable, path: str | os.PathLike[str], column: str = "acc") -> Path:
    """Accuracy versus shots for a fewshot sweep (see the module docstring); returns the PNG path."""
    if not is_shot_sweep(table):
        raise ValueError("plot_accuracy_vs_shots needs a fewshot table with several shot counts "
                         f"(protocol {table.protocol!r}, split by {table.split_columns}).")
    panels = list(dict.fromkeys(row.labels["dataset"] for row in table.rows))
    others = series_axes(table)  # further axes (n_ctx, ...) make more series
    methods = list(dict.fromkeys(
        ", ".join([row.labels["method"], *(f"{table.title_of(c)}={row.labels.get(c, '')}" for c in others)])
        for row in table.rows))
    n_cols = min(4, len(panels))
    n_rows = -(-len(panels) // n_cols)
    figure = Figure(figsize=(3.6 * n_cols + 1.8, 3.0 * n_rows))
    FigureCanvasAgg(figure)
    all_shots = sorted({int(row.keys["shots"]) for row in table.rows if row.keys.get("shots") is not None})
    for p, panel in enumerate(panels):
        ax = figure.add_subplot(n_rows, n_cols, p + 1)
        for m, method in enumerate(methods):
            points = sorted(
                (int(row.keys["shots"]), row.cells[column]) for row in table.rows
                if row.labels["dataset"] == panel and row.cells.get(column) is not None
                and row.keys.get("shots") is not None
                and ", ".join([row.labels["method"], *(f"{table.title_of(c)}={row.labels.get(c, '')}"
                                                       for c in others)]) == method)
            if not points:
                continue
            shots = [k for k, _ in points]
            means = [c.mean for _, c in points]  # type: ignore[union-attr]
            stds = [c.std or 0.0 for _, c in points]  # type: ignore[union-attr]
            if len(points) == 1:  # shot-independent (zero-shot): a reference line across the panel
                ax.axhline(means[0], color=_colour(m), linestyle="--", linewidth=1.2, label=method)
                continue
            ax.plot(shots, means, "o-", color=_colour(m), markersize=3, linewidth=1.2, label=method)
            ax.fill_between(shots, [a - s for a, s in zip(means, stds, strict=True)],
                            [a + s for a, s in zip(means, stds, strict=True)], color=_colour(m), alpha=0.15)
        ax.set_xscale("log", base=2)
        ax.set_xticks(all_shots, [str(k) for k in all_shots])
        ax.set_title(panel, fontsize="medium")
        ax.set_xlabel("shots per class")
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
    legend: dict[str, object] = {}  # every method once, whichever panel drew it
    for ax in figure.axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            legend.setdefault(label, handle)
    figure.axes[-1].legend(list(legend.values()), list(legend), fontsize="x-small", loc="lower right")
    return _save(figure, path)


def plot_table(table: ResultTable, path: str | os.PathLike[str]) -> Path:
    """The figure suited to the table's protocol."""
    if table_protocol(table.protocol).figure == "base_novel":
        return plot_base2novel(table, path)
    if is_shot_sweep(table):
        return plot_accuracy_vs_shots(table, path)
    return plot_grouped(table, path)
