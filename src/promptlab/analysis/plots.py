"""Figures of a prompt-drift analysis (PNG, matplotlib's Agg canvas: no display, no pyplot state).

- drift_per_class.png: cosine(zero-shot, learned) per class, base and novel coloured apart (per-image
  min..max ranges for instance-conditional prompts); other protocols: one panel per evaluation.
- base_capture.png: share of novel images scored onto a base class, zero-shot against learned, overall
  and by image attribute (toy world), and the base classes that capture them most.
- examples.png: a few novel images with their cosine to their own class and to the top base classes,
  before (zero-shot) and after learning.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from promptlab.io import atomic_write_bytes

_DPI = 120
_ZEROSHOT_COLOUR = "0.6"
_LEARNED_COLOUR = "C3"
_GROUP_COLOURS = {"base": "C0", "novel": "C1"}
_MAX_TICK_LABELS = 80  # beyond this many classes the names are unreadable: leave them out


def _figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)  # attaches the Agg canvas used by savefig
    return figure


def _save(figure: Figure, path: str | os.PathLike[str], bottom: float = 0.0) -> Path:
    """`bottom`: fraction of the height kept free for a figure-level legend."""
    path = Path(path)
    figure.tight_layout(rect=(0.0, bottom, 1.0, 1.0))
    # Rendered in memory, then replaced atomically (W&B uploads or a reader never get half a PNG).
    buffer = io.BytesIO()
    figure.savefig(buffer, dpi=_DPI, format=path.suffix.lstrip(".") or "png")
    return atomic_write_bytes(path, buffer.getvalue())


def _cosine_limits(values: Sequence[float]) -> tuple[float, float]:
    """y range that shows small drifts: from a bit below the lowest cosine to just above 1."""
    low = min(values) if values else 0.0
    span = max(1.0 - low, 1e-3)
    return max(-1.0, low - 0.15 * span), 1.0 + 0.05 * span


def _class_panel(ax: Axes, classes: Sequence[Mapping[str, Any]], colours: Sequence[str], title: str) -> None:
    x = np.arange(len(classes))
    cos = np.array([c["cosine"] for c in classes])
    lows = [c.get("cosine_min", c["cosine"]) for c in classes]
    ax.bar(x, cos, color=colours, width=0.8)
    if any("cosine_min" in c for c in classes):
        # clip: the mean can exceed the max by rounding when every image gives the same prototype
        below = np.clip(cos - np.array(lows), 0.0, None)
        above = np.clip(np.array([c.get("cosine_max", c["cosine"]) for c in classes]) - cos, 0.0, None)
        ax.errorbar(x, cos, yerr=[below, above], fmt="none", ecolor="k", elinewidth=0.8, capsize=1.5)
    ax.set_ylim(*_cosine_limits([*lows, *cos.tolist()]))
    ax.axhline(1.0, color="k", linewidth=0.6, linestyle=":")
    ax.set_ylabel("cos(zero-shot, learned)")
    ax.set_title(title)
    ax.set_xlim(-0.6, len(classes) - 0.4)
    if len(classes) <= _MAX_TICK_LABELS:
        ax.set_xticks(x)
        ax.set_xticklabels([c["name"] for c in classes], rotation=90, fontsize=7 if len(classes) > 30 else 8)
    else:
        ax.set_xticks([])
        ax.set_xlabel(f"{len(classes)} classes")


def plot_drift_per_class(analysis: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Cosine per class; base2novel colours base and novel, other protocols get one panel per evaluation."""
    if analysis["mode"] == "base2novel":
        drift = analysis["drift"]
        classes = drift["classes"]
        figure = _figure(min(max(6.0, 0.22 * len(classes) + 2.0), 30.0), 4.5)
        ax = figure.add_subplot()
        colours = [_GROUP_COLOURS.get(c["group"], "C2") for c in classes]
        suffix = " (mean over test images, bars: min..max)" if drift["per_image"] else ""
        _class_panel(ax, classes, colours, f"Prototype drift per class{suffix}")
        handles = []
        for group, stats in drift["groups"].items():
            colour = _GROUP_COLOURS.get(group, "C2")
            ax.axhline(stats["cosine_mean"], color=colour, linewidth=1.0, linestyle="--")
            handles.append(Patch(color=colour, label=f"{group} (mean {stats['cosine_mean']:.4f})"))
        ax.legend(handles=handles, loc="lower left", fontsize=8)
        return _save(figure, path)
    evaluations = analysis["evaluations"]
    widest = max((len(e["drift"]["classes"]) for e in evaluations), default=1)
    figure = _figure(min(max(6.0, 0.22 * widest + 2.0), 30.0), 3.8 * max(len(evaluations), 1))
    for i, evaluation in enumerate(evaluations):
        ax = figure.add_subplot(len(evaluations), 1, i + 1)
        classes = evaluation["drift"]["classes"]
        stats = evaluation["drift"]["groups"][evaluation["name"]]
        _class_panel(ax, classes, [f"C{i % 10}"] * len(classes),
                     f"{evaluation['name']}: mean cosine {stats['cosine_mean']:.4f}")
    return _save(figure, path)


def _capture_rows(capture: Mapping[str, Any]) -> list[tuple[str, float, float]]:
    rows = [("all novel images", capture["zeroshot"]["fraction"], capture["learned"]["fraction"])]
    breakdown = capture.get("by_attribute") or {}
    for key, values in (breakdown.get("by_value") or {}).items():
        for value, row in values.items():
            rows.append((f"{key}={value} ({row['n_images']})", row["zeroshot"], row["learned"]))
    return rows


def _paired_bars(ax: Axes, labels: Sequence[str], zeroshot: Sequence[float], learned: Sequence[float]) -> None:
    y = np.arange(len(labels))
    ax.barh(y - 0.2, zeroshot, height=0.4, color=_ZEROSHOT_COLOUR, label="zero-shot")
    ax.barh(y + 0.2, learned, height=0.4, color=_LEARNED_COLOUR, label="learned")
    ax.set_yticks(y)
    ax.set_yticklabels(labels, fontsize=8)
    ax.invert_yaxis()


def plot_base_capture(analysis: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Capture of novel images by base classes, zero-shot vs learned, the top capturing classes and (toy
    world) how often the capturing class's typical background/size is the image's own."""
    capture = analysis["capture"]
    rows = _capture_rows(capture)
    matches = (capture.get("by_attribute") or {}).get("capturer_shares_value") or {}
    n_panels = 3 if matches else 2
    height = max(3.5, 0.35 * len(rows) + 1.5)
    figure = _figure(5.0 * n_panels, height)
    left, middle = figure.add_subplot(1, n_panels, 1), figure.add_subplot(1, n_panels, 2)
    _paired_bars(left, [r[0] for r in rows], [100.0 * (r[1] or 0.0) for r in rows],
                 [100.0 * (r[2] or 0.0) for r in rows])
    left.set_xlabel("novel images predicted as a base class (%)")
    left.set_title(f"Base capture ({capture['n_novel_images']} novel images, all classes scored)", fontsize=10)

    counts_zs = capture["zeroshot"]["counts_by_base_class"]
    counts_learned = capture["learned"]["counts_by_base_class"]
    names = list(dict.fromkeys([t["class"] for t in capture["learned"]["top_capturing"]]
                               + [t["class"] for t in capture["zeroshot"]["top_capturing"]]))
    if names:
        _paired_bars(middle, names, [counts_zs[n] for n in names], [counts_learned[n] for n in names])
    else:
        middle.text(0.5, 0.5, "no novel image lands on a base class", ha="center", va="center",
                    transform=middle.transAxes)
        middle.set_yticks([])
    middle.set_xlabel("novel images captured")
    middle.set_title("Top capturing base classes", fontsize=10)

    if matches:
        right = figure.add_subplot(1, n_panels, 3)
        keys = list(matches)
        _paired_bars(right, [f"same {k}" for k in keys],
                     [100.0 * (matches[k]["zeroshot"]["fraction"] or 0.0) for k in keys],
                     [100.0 * (matches[k]["learned"]["fraction"] or 0.0) for k in keys])
        right.set_xlim(0, 100)
        right.set_xlabel("captured images (%)")
        right.set_title("Capturing class typically has the image's ...", fontsize=10)
    handles = [Patch(color=_ZEROSHOT_COLOUR, label="zero-shot"), Patch(color=_LEARNED_COLOUR, label="learned")]
    figure.legend(handles=handles, loc="lower center", ncol=2, fontsize=9)
    return _save(figure, path, bottom=0.4 / height)


def _load_thumbnail(impath: str) -> np.ndarray | None:
    from PIL import Image

    try:
        with Image.open(impath) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, ValueError):
        return None


def _before_after(ax: Axes, labels: Sequence[str], before: Sequence[float], after: Sequence[float]) -> None:
    """One row per label: zero-shot dot, arrow to the learned dot (cosines differ by little on real CLIP, so
    the axis is fitted to the values rather than starting at 0)."""
    y = np.arange(len(labels))
    for row, (start, end) in enumerate(zip(before, after, strict=True)):
        ax.annotate("", xy=(end, row), xytext=(start, row),
                    arrowprops={"arrowstyle": "->", "color": "0.3", "linewidth": 0.8})
    ax.scatter(before, y, color=_ZEROSHOT_COLOUR, zorder=3, label="zero-shot")
    ax.scatter(after, y, color=_LEARNED_COLOUR, zorder=3, label="learned")
    low, high = min([*before, *after]), max([*before, *after])
    pad = max(high - low, 0.02) * 0.1
    ax.set_xlim(low - pad, high + pad)
    ax.set_ylim(len(labels) - 0.5, -0.5)
    ax.set_yticks(y)
    ax.set_yticklabels(labels, fontsize=8)
    ax.grid(axis="x", linewidth=0.3)


def plot_examples(analysis: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Per example image: cosine to its own class and to the top base classes, zero-shot vs learned."""
    examples = analysis["examples"]
    figure = _figure(9.0, max(2.0, 1.9 * len(examples)))
    if not examples:
        figure.add_subplot().text(0.5, 0.5, "no novel test images", ha="center", va="center")
        return _save(figure, path)
    grid = figure.add_gridspec(len(examples), 2, width_ratios=[1, 4])
    for row, example in enumerate(examples):
        image_ax, cos_ax = figure.add_subplot(grid[row, 0]), figure.add_subplot(grid[row, 1])
        thumbnail = _load_thumbnail(example["impath"])
        if thumbnail is not None:
            image_ax.imshow(thumbnail, interpolation="nearest")
        image_ax.set_axis_off()
        attrs = example.get("attributes") or {}
        detail = ", ".join(f"{k} {attrs[k]}" for k in ("background", "size") if k in attrs)
        image_ax.set_title(f"{example['class']}" + (f"\n{detail}" if detail else ""), fontsize=7)
        entries = [(f"own: {example['class']}", example["own_class"])] + [
            (f"base: {b['class']}", b) for b in example["top_base_classes"]
        ]
        _before_after(cos_ax, [e[0] for e in entries], [e[1]["zeroshot"] for e in entries],
                      [e[1]["learned"] for e in entries])
        cos_ax.set_title(f"predicted {example['zeroshot_prediction']} -> {example['learned_prediction']} "
                          f"({example['selected']})", fontsize=8)
        if row == 0:
            cos_ax.legend(fontsize=7, loc="best")
    figure.axes[-1].set_xlabel("cosine(image, class prototype)")
    return _save(figure, path)


def write_plots(analysis: Mapping[str, Any], out_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Every figure that applies to the analysis' mode; keys are the file stems."""
    out_dir = Path(out_dir)
    paths = {"drift_per_class": plot_drift_per_class(analysis, out_dir / "drift_per_class.png")}
    if analysis["mode"] == "base2novel":
        paths["base_capture"] = plot_base_capture(analysis, out_dir / "base_capture.png")
        paths["examples"] = plot_examples(analysis, out_dir / "examples.png")
    return paths
