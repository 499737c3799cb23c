"""Writing a drift analysis: analysis.json, a short markdown summary, the PNGs, and the W&B run if one is active."""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from promptlab.analysis.drift import BREAKDOWN_ATTRIBUTES
from promptlab.io import atomic_write_json, atomic_write_text


def headline_numbers(analysis: Mapping[str, Any]) -> dict[str, float]:
    """The few numbers worth a dashboard: drift per group, |mu|, capture and novel accuracy."""
    out: dict[str, float] = {}
    if analysis["mode"] == "base2novel":
        drift, capture = analysis["drift"], analysis["capture"]
        for group, stats in drift["groups"].items():
            out[f"analysis/{group}_cosine_mean"] = stats["cosine_mean"]
            if stats["shared_share"] is not None:
                out[f"analysis/{group}_shared_share"] = stats["shared_share"]
        out["analysis/mean_shift_norm"] = drift["mean_shift_norm"]
        for name in ("zeroshot", "learned"):
            out[f"analysis/capture_{name}"] = capture[name]["fraction"]
            out[f"analysis/confused_{name}"] = capture[name]["confused_fraction"]
            out[f"analysis/novel_acc_{name}"] = capture[name]["novel_acc"]
        for group, stats in (analysis.get("image_drift") or {}).items():
            if stats and stats["cosine_mean"] is not None:
                out[f"analysis/{group}_image_cosine_mean"] = stats["cosine_mean"]
        return out
    for evaluation in analysis["evaluations"]:
        stats = evaluation["drift"]["groups"][evaluation["name"]]
        out[f"analysis/{evaluation['name']}/cosine_mean"] = stats["cosine_mean"]
        out[f"analysis/{evaluation['name']}/mean_shift_norm"] = evaluation["drift"]["mean_shift_norm"]
    return out


def _pct(value: float | None) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100.0 * value:.1f} %"


def _interpretation(analysis: Mapping[str, Any]) -> str:
    """One sentence: where the change in novel-image errors (all classes scored) comes from."""
    drift, capture = analysis["drift"], analysis["capture"]
    if max(abs(c["drift"]) for c in drift["classes"]) < 1e-4:
        return ("The learned prompt gives the zero-shot prototypes (no class moved), so nothing changed for "
                "novel classes.")
    zs, learned = capture["zeroshot"], capture["learned"]
    d_capture = 100.0 * (learned["fraction"] - zs["fraction"])
    d_confused = 100.0 * (learned["confused_fraction"] - zs["confused_fraction"])
    if max(d_capture, d_confused) < 1.0:
        verdict = "the move does not cost the novel classes"
    elif d_capture > d_confused:
        verdict = "the rule learned on the base classes mostly pulls novel images onto base classes"
    else:
        verdict = ("the loss is mostly confusion among the novel classes (the rule learned on the base classes "
                   "applied to novel names), not capture by base classes")
    novel = drift["groups"]["novel"]
    return (f"The learned prompt moved the novel prototypes to mean cosine {novel['cosine_mean']:.3f} with their "
            f"zero-shot ones ({_pct(novel['shared_share'])} of the squared shift along the mean base shift); "
            f"novel images scored among all classes changed by {d_capture:+.1f} points in base capture and "
            f"{d_confused:+.1f} points in confusion with other novel classes, so {verdict}.")


def summary_markdown(analysis: Mapping[str, Any]) -> str:
    """A short human-readable summary of an analysis."""
    run = analysis.get("run") or {}
    title = " ".join(str(run[k]) for k in ("method", "dataset", "protocol") if run.get(k)) or analysis["learner"]
    lines = [f"# Prompt drift: {title}", ""]
    if run.get("run_dir"):
        lines += [f"Run: `{run['run_dir']}`", ""]
    per_image = " (per-image prototypes, averaged over test images)" if analysis["instance_conditional"] else ""
    lines += [f"Learner {analysis['learner']}{per_image}; zero-shot template(s): "
              + ", ".join(f"`{t}`" for t in analysis["templates"]), ""]
    if analysis["mode"] != "base2novel":
        lines += ["| evaluation | classes | cos mean | cos min | cos max | mean shift | zero-shot acc | learned acc |",
                  "|---|---|---|---|---|---|---|---|"]
        for e in analysis["evaluations"]:
            s = e["drift"]["groups"][e["name"]]
            lines.append(f"| {e['name']} | {s['n_classes']} | {s['cosine_mean']:.4f} | {s['cosine_min']:.4f} | "
                         f"{s['cosine_max']:.4f} | {e['drift']['mean_shift_norm']:.4f} | "
                         f"{e['accuracy']['zeroshot']:.2f} | {e['accuracy']['learned']:.2f} |")
        changes = "; ".join(
            f"{e['name']}: mean cosine {e['drift']['groups'][e['name']]['cosine_mean']:.3f}, top-1 "
            f"{e['accuracy']['learned'] - e['accuracy']['zeroshot']:+.2f} points" for e in analysis["evaluations"])
        lines += ["", "## Interpretation", "",
                  f"Against the zero-shot prompt the learned one changes each evaluation as follows ({changes}); "
                  "lower cosines mean the prompt moved further from the hand-written one there."]
        return "\n".join(lines) + "\n"

    drift, capture, accuracy = analysis["drift"], analysis["capture"], analysis["accuracy"]
    lines += ["## Drift (cosine between zero-shot and learned prototypes)", "",
              "| group | classes | cos mean | cos min | cos max | share of squared shift along mu |",
              "|---|---|---|---|---|---|"]
    for group, s in drift["groups"].items():
        lines.append(f"| {group} | {s['n_classes']} | {s['cosine_mean']:.4f} | {s['cosine_min']:.4f} | "
                     f"{s['cosine_max']:.4f} | {_pct(s['shared_share'])} |")
    lines += ["", f"Mean base shift |mu| = {drift['mean_shift_norm']:.4f}."]
    if drift["per_image"]:
        lines.append("Part of the squared move that varies from image to image: "
                     + ", ".join(f"{g} {_pct(s.get('instance_share'))}" for g, s in drift["groups"].items()) + ".")
    if analysis.get("image_drift"):
        # Image-tower tokens (VPT, IVLP, MaPLe, PromptSRC): the learned scores use the prompted image features.
        lines += ["", "## Image drift (cosine between frozen and prompted image features; learned scores use the "
                  "prompted ones)", "", "| test images | images | cos mean | cos min | cos max |",
                  "|---|---|---|---|---|"]
        for group, s in analysis["image_drift"].items():
            if s and s["n_images"]:
                lines.append(f"| {group} | {s['n_images']} | {s['cosine_mean']:.4f} | {s['cosine_min']:.4f} | "
                             f"{s['cosine_max']:.4f} |")
    zs, learned, n_novel = capture["zeroshot"], capture["learned"], capture["n_novel_images"]
    lines += ["", "## Base capture (novel test images scored among all classes)", "",
              "| | zero-shot | learned |", "|---|---|---|",
              f"| novel images on a base class | {_pct(zs['fraction'])} ({zs['n_captured']}/{n_novel}) "
              f"| {_pct(learned['fraction'])} ({learned['n_captured']}/{n_novel}) |",
              f"| novel images on another novel class | {_pct(zs['confused_fraction'])} | "
              f"{_pct(learned['confused_fraction'])} |",
              f"| novel accuracy among novel classes | {zs['novel_acc']:.2f} | {learned['novel_acc']:.2f} |",
              f"| base accuracy among base classes | {accuracy['zeroshot']['base']:.2f} | "
              f"{accuracy['learned']['base']:.2f} |", "",
              "Top capturing base classes (learned): "
              + (", ".join(f"{t['class']} ({t['count']})" for t in learned["top_capturing"]) or "none") + "."]
    breakdown = capture.get("by_attribute")
    if breakdown:
        lines += ["", "| novel image | value | images | zero-shot capture | learned capture |", "|---|---|---|---|---|"]
        for key, rows in breakdown["by_value"].items():
            for value, row in rows.items():
                lines.append(f"| {key} | {value} | {row['n_images']} | {_pct(row['zeroshot'])} | "
                             f"{_pct(row['learned'])} |")
        for key, match in breakdown["capturer_shares_value"].items():
            lines.append(f"\nCaptured images whose capturing base class typically has the same {key}: zero-shot "
                         f"{_pct(match['zeroshot']['fraction'])}, learned {_pct(match['learned']['fraction'])}.")
    if analysis["examples"]:
        lines += ["", "## Examples (cosine zero-shot -> learned)", ""]
        for ex in analysis["examples"]:
            attrs = ex.get("attributes") or {}
            extra = ", ".join(f"{k} {attrs[k]}" for k in BREAKDOWN_ATTRIBUTES if k in attrs)
            bases = "; ".join(f"{b['class']} {b['zeroshot']:.3f} -> {b['learned']:.3f}" for b in ex["top_base_classes"])
            lines.append(f"- `{ex['image']}` ({ex['class']}{', ' + extra if extra else ''}; {ex['selected']}): "
                         f"predicted {ex['zeroshot_prediction']} -> {ex['learned_prediction']}; own class "
                         f"{ex['own_class']['zeroshot']:.3f} -> {ex['own_class']['learned']:.3f}; base: {bases}")
    lines += ["", "## Interpretation", "", _interpretation(analysis)]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- files and W&B
def _json_ready(value: Any) -> Any:
    """NaN is not JSON: write it as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    return value


def write_analysis(result: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """Write analysis.json, summary.md and the PNGs into `out_dir`; log them to an active W&B run."""
    from promptlab.analysis.plots import write_plots

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "analysis.json", "summary": out_dir / "summary.md"}
    atomic_write_json(paths["json"], _json_ready(result), indent=1, allow_nan=False)
    atomic_write_text(paths["summary"], summary_markdown(result))
    paths |= write_plots(result, out_dir)
    log_to_wandb(result, paths)
    return paths


def log_to_wandb(result: Mapping[str, Any], paths: Mapping[str, Path]) -> bool:
    """Headline numbers (log + run summary) and the PNGs to the active W&B run; False when none is active."""
    wandb = sys.modules.get("wandb")  # not imported means no run can be active: skip the slow import
    if wandb is None or getattr(wandb, "run", None) is None:
        return False
    numbers = {k: v for k, v in headline_numbers(result).items() if math.isfinite(v)}
    images = {f"analysis/{p.stem}": wandb.Image(str(p)) for p in paths.values() if p.suffix == ".png"}
    wandb.run.log({**numbers, **images})
    wandb.run.summary.update(numbers)
    return True


