"""Prompt-drift diagnostics for learners that encode images themselves (VPT, IVLP, MaPLe, PromptSRC): the learned
scores use the prompted image features, the zero-shot ones the frozen features; the text drift stays defined;
direct-logits learners (linear probe, Tip-Adapter) are refused or skipped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from promptlab.analysis import analyze, analyze_run_dir
from promptlab.data.types import Datum, EvalSet
from promptlab.errors import AnalysisError
from promptlab.methods import PromptLearner
from promptlab.methods.zeroshot import template_embeddings
from promptlab.results.records import read_record
from promptlab.train import run
from tests.runs import TINY_WORLD, compose_cfg, workspace_overrides

TEMPLATES = ["a photo of a {}."]
BASE = ["red circle", "green square", "blue triangle"]
NOVEL = ["red square", "green circle", "blue star"]
PER_CLASS = 3


def eval_sets(root: Path) -> list[EvalSet]:
    """Base and novel test sets, labels from 0 in each (as the base/novel rule relabels them)."""
    sets = []
    for subset, names in (("base", BASE), ("novel", NOVEL)):
        items = [Datum(str(root / subset / f"{label}_{i}.png"), label, name)
                 for label, name in enumerate(names) for i in range(PER_CLASS)]
        sets.append(EvalSet(name=subset, dataset="toy", subset=subset, classnames=list(names), items=items))
    return sets


class ImageSidePrompts(PromptLearner):
    """An image-side learner whose text is the zero-shot prompt (no text drift, like VPT)."""

    encodes_images = True

    def __init__(self) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def set_classnames(self, clip, classnames: list[str]) -> None:
        self.classnames = list(classnames)
        self.prototypes = template_embeddings(clip, TEMPLATES, classnames)

    def forward(self, clip, image_features=None) -> torch.Tensor:
        return self.prototypes


class ScoresItself(ImageSidePrompts):
    encodes_images = False
    direct_logits = True


def frozen_features(clip):
    """Frozen feature of every test image = its own class's zero-shot prototype: zero-shot is always right."""
    def features(eval_set: EvalSet) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.tensor([item.label for item in eval_set.items])
        return template_embeddings(clip, TEMPLATES, eval_set.classnames)[labels], labels
    return features


def prompted_features(clip):
    """Prompted features: base images unchanged, a novel image of novel class i lands on base class i's prototype."""
    frozen = frozen_features(clip)

    def features(eval_set: EvalSet) -> tuple[torch.Tensor, torch.Tensor]:
        if eval_set.subset == "base":
            return frozen(eval_set)
        labels = torch.tensor([item.label for item in eval_set.items])
        return template_embeddings(clip, TEMPLATES, BASE)[labels], labels
    return features


def test_learned_scores_use_the_prompted_image_features(random_clip, tmp_path):
    result = analyze(random_clip, ImageSidePrompts(), TEMPLATES, eval_sets(tmp_path), frozen_features(random_clip),
                     n_examples=2, learned_features_fn=prompted_features(random_clip))
    assert result["encodes_images"] is True
    # The text side did not move: the class-text drift is zero.
    assert all(c["cosine"] == pytest.approx(1.0, abs=1e-5) for c in result["drift"]["classes"])
    capture = result["capture"]
    assert capture["zeroshot"]["fraction"] == 0.0 and capture["zeroshot"]["novel_acc"] == 100.0
    # Every novel image is scored with its prompted feature, which is base class i's prototype.
    assert capture["learned"]["fraction"] == 1.0
    assert capture["learned"]["counts_by_base_class"] == {name: PER_CLASS for name in BASE}
    assert result["accuracy"]["learned"]["base"] == 100.0
    assert all(e["learned_prediction"] in BASE for e in result["examples"])
    # Image drift: cos(frozen, prompted) per test image, by hand.
    image = result["image_drift"]
    assert image["base"]["n_images"] == len(BASE) * PER_CLASS
    assert image["base"]["cosine_mean"] == pytest.approx(1.0, abs=1e-6)
    z_base = template_embeddings(random_clip, TEMPLATES, BASE)
    z_novel = template_embeddings(random_clip, TEMPLATES, NOVEL)
    expected = F.cosine_similarity(z_novel, z_base, dim=-1).double()
    assert image["novel"]["cosine_mean"] == pytest.approx(float(expected.mean()), abs=1e-5)
    assert image["novel"]["cosine_min"] == pytest.approx(float(expected.min()), abs=1e-5)
    assert image["novel"]["drift_mean"] == pytest.approx(1.0 - float(expected.mean()), abs=1e-5)


def test_other_protocols_score_with_the_prompted_features_too(random_clip, tmp_path):
    novel = eval_sets(tmp_path)[1]
    other = EvalSet(name="other", dataset="toy2", subset="all", classnames=novel.classnames, items=novel.items)
    prompted = prompted_features(random_clip)
    result = analyze(random_clip, ImageSidePrompts(), TEMPLATES, [other], frozen_features(random_clip),
                     learned_features_fn=lambda e: prompted(novel))
    evaluation = result["evaluations"][0]
    assert evaluation["accuracy"]["zeroshot"] == 100.0
    z_base = template_embeddings(random_clip, TEMPLATES, BASE)
    z_novel = template_embeddings(random_clip, TEMPLATES, NOVEL)
    expected = (z_base @ z_novel.t()).argmax(1) == torch.arange(len(NOVEL))
    assert evaluation["accuracy"]["learned"] == pytest.approx(100.0 * float(expected.double().mean()))
    assert evaluation["image_drift"]["n_images"] == len(novel.items)


def test_image_side_learners_need_their_features_and_the_same_images(random_clip, tmp_path):
    sets = eval_sets(tmp_path)
    with pytest.raises(AnalysisError, match="learned_features_fn"):
        analyze(random_clip, ImageSidePrompts(), TEMPLATES, sets, frozen_features(random_clip))
    prompted = prompted_features(random_clip)

    def reversed_order(eval_set):
        feats, labels = prompted(eval_set)
        return feats.flip(0), labels.flip(0)

    with pytest.raises(AnalysisError, match="same evaluation set"):
        analyze(random_clip, ImageSidePrompts(), TEMPLATES, sets, frozen_features(random_clip),
                learned_features_fn=reversed_order)


def test_direct_logits_learners_are_refused(random_clip, tmp_path):
    with pytest.raises(AnalysisError, match="direct_logits"):
        analyze(random_clip, ScoresItself(), TEMPLATES, eval_sets(tmp_path), frozen_features(random_clip))


# --------------------------------------------------------------------------- real (tiny) toy-world runs
@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("analysis_deep_ws")


def tiny_run(workspace: Path, name: str, *overrides: str) -> Path:
    cfg = compose_cfg([*workspace_overrides(workspace), *TINY_WORLD, "shots=2", f"run_name={name}", *overrides])
    run(cfg)
    return Path(cfg.paths.output_dir) / "runs" / name


@pytest.mark.slow  # a VPT run with analysis, then rebuilt from its dir: ~7 s alone, far more on busy cores
def test_a_vpt_run_analyses_what_it_evaluated(workspace):
    """VPT (image tokens at every block of the toy CLIP, fixed text): the analysis's learned accuracies are the
    run's recorded ones, and promptlab-analyze rebuilds the same diagnostics from the run dir."""
    run_dir = tiny_run(workspace, "vpt", "method=vpt", "method.optim.epochs=1", "analysis=true")
    record = read_record(run_dir)
    in_run = json.loads((run_dir / "analysis" / "analysis.json").read_text())
    assert in_run["encodes_images"] is True
    for subset in ("base", "novel"):
        assert in_run["accuracy"]["learned"][subset] == pytest.approx(record["metrics"][f"{subset}_acc"], abs=1e-6)
        assert 0.0 <= in_run["image_drift"][subset]["cosine_min"] <= in_run["image_drift"][subset]["cosine_mean"] < 1.0
    # VPT's text is the toy world's own template: the class-text drift is defined and zero.
    assert all(c["cosine"] == pytest.approx(1.0, abs=1e-5) for c in in_run["drift"]["classes"])
    assert "## Image drift" in (run_dir / "analysis" / "summary.md").read_text()
    rebuilt = json.loads(analyze_run_dir(run_dir, n_examples=6)["json"].read_text())
    assert rebuilt["accuracy"] == in_run["accuracy"]
    assert rebuilt["image_drift"]["novel"]["cosine_mean"] == pytest.approx(
        in_run["image_drift"]["novel"]["cosine_mean"], abs=1e-6)
    assert rebuilt["capture"]["learned"]["counts_by_base_class"] == in_run["capture"]["learned"]["counts_by_base_class"]


def test_a_linear_probe_run_skips_the_analysis_and_promptlab_analyze_refuses_it(workspace):
    run_dir = tiny_run(workspace, "probe", "method=linear_probe", "analysis=true")
    assert read_record(run_dir)["status"] == "complete"
    assert not (run_dir / "analysis").exists()
    with pytest.raises(AnalysisError, match="direct_logits"):
        analyze_run_dir(run_dir)


# --------------------------------------------------------------------------- the study table
def _study_job(root: Path, method: str, seed: int, base: float, novel: float, image_drift: float | None) -> None:
    from promptlab.results.records import make_record, write_record

    run_dir = root / f"{method}-{seed}"
    summary = {"protocol": "base2novel", "method": method, "dataset": "toyworld", "seed": seed, "spurious": 1.0}
    metrics = {"base_acc": base, "novel_acc": novel, "hm": 2 * base * novel / (base + novel)}
    write_record(run_dir, make_record(run_dir, status="complete", summary=summary, metrics=metrics))
    (run_dir / "analysis").mkdir()
    analysis = {"drift": {"groups": {"novel": {"drift_mean": 0.0}}}, "capture": {"learned": {"fraction": 0.5}}}
    if image_drift is not None:
        analysis["image_drift"] = {"base": {"drift_mean": 0.0}, "novel": {"drift_mean": image_drift}}
    (run_dir / "analysis" / "analysis.json").write_text(json.dumps(analysis))


def test_the_study_reports_image_drift_for_image_side_methods_only(tmp_path):
    from promptlab.analysis.study import main, study_rows

    # Two sweeps (as `make study` and `make study-all` with the new methods only), read together.
    first, second = tmp_path / "study", tmp_path / "study_all"
    for seed in (1, 2):
        _study_job(first, "zeroshot", seed, 90.0, 90.0, None)
        _study_job(second, "maple", seed, 95.0, 85.0, 0.1 * seed)
        _study_job(second, "vpt", seed, 92.0, 91.0, 0.02)
        _study_job(second, "prograd", seed, 94.0, 89.0, None)
    rows = study_rows([first, second])
    # The study's order: text-prompt learners before image-side ones, whatever the table's order.
    assert [r.method for r in rows] == ["zeroshot", "prograd", "vpt", "maple"]
    by_method = {r.method: r for r in rows}
    assert by_method["maple"].mean["novel_image_drift"] == pytest.approx(0.15)
    assert by_method["maple"].std["novel_image_drift"] == pytest.approx(0.05)
    assert "novel_image_drift" not in by_method["prograd"].mean
    assert by_method["prograd"].delta_novel == pytest.approx([-1.0, -1.0])  # against the other sweep's zero-shot
    assert main([str(first), str(second), "--out", str(tmp_path / "out")]) == 0
    paths = {"markdown": tmp_path / "out" / "study.md", "figure": tmp_path / "out" / "study.png"}
    lines = paths["markdown"].read_text().splitlines()
    prograd = next(line for line in lines if line.startswith("| prograd |")).split(" | ")
    maple = next(line for line in lines if line.startswith("| maple |")).split(" | ")
    header = lines[0].split(" | ")
    column = header.index("Novel image drift (1-cos, x100)")
    assert prograd[column] == "–" and maple[column] == "15.00 ± 5.00"
    # The per-seed table: each run's own values.
    assert "| maple | 1 | 2 | 95.0 | 85.0 | 89.7 | 0.00 | 20.00 | 50.0 |" in lines
    assert "| prograd | 1 | 1 | 94.0 | 89.0 | 91.4 | 0.00 | – | 50.0 |" in lines
    assert paths["figure"].stat().st_size > 5000
