"""Prompt-drift diagnostics: the statistics on hand-built prototypes, capture on a learner with a known answer,
zero drift for an untrained CoOp context, and the files of real (tiny) toy-world runs and of promptlab-analyze."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from promptlab.analysis import analyze, analyze_run_dir, drift_statistics, write_analysis
from promptlab.analysis import cli as analyze_cli
from promptlab.analysis import drift as drift_module
from promptlab.data.types import Datum, EvalSet
from promptlab.methods import CoOpPrompts, PromptLearner, ZeroShotPrompts
from promptlab.methods.zeroshot import template_embeddings
from promptlab.results.records import error_record, read_record, write_record
from promptlab.toy.world import toy_classes
from promptlab.train import run
from tests.runs import compose_cfg, tiny_overrides

TEMPLATES = ["a photo of a {}."]
BASE = ["red circle", "green square", "blue triangle", "yellow star"]
NOVEL = ["red square", "green circle", "blue star", "yellow triangle"]
PER_CLASS = 4
PNG_FILES = ("drift_per_class.png", "base_capture.png", "examples.png")


# --------------------------------------------------------------------------- synthetic data
def make_eval_sets(root: Path) -> list[EvalSet]:
    """Base and novel test sets (labels relabelled from 0 in each, as the base/novel rule does)."""
    sets = []
    for subset, names in (("base", BASE), ("novel", NOVEL)):
        items = [Datum(str(root / "images" / name.replace(" ", "_") / f"test_{i:04d}.png"), label, name)
                 for label, name in enumerate(names) for i in range(PER_CLASS)]
        sets.append(EvalSet(name=subset, dataset="toy", subset=subset, classnames=list(names), items=items))
    return sets


def random_features(eval_set: EvalSet, dim: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(len(eval_set.name))
    feats = F.normalize(torch.randn(len(eval_set.items), dim, generator=generator), dim=-1)
    return feats, torch.tensor([item.label for item in eval_set.items])


class PairedPrompts(PromptLearner):
    """A learner with a known answer: base class i's prototype is the zero-shot prototype of novel class i,
    novel prototypes are moved off their zero-shot ones. A novel image whose feature is its class's zero-shot
    prototype then has cosine exactly 1 with its paired base class and below 1 with everything else."""

    def __init__(self, instance_conditional: bool = False) -> None:
        super().__init__()
        self.instance_conditional = instance_conditional
        self.anchor = nn.Parameter(torch.zeros(1))

    def set_classnames(self, clip, classnames: list[str]) -> None:
        self.classnames = list(classnames)
        targets = [NOVEL[BASE.index(n)] if n in BASE else n for n in classnames]
        z = template_embeddings(clip, TEMPLATES, targets)
        pull = F.normalize(template_embeddings(clip, TEMPLATES, ["black hexagon"])[0], dim=-1)
        moved = F.normalize(z - 0.5 * pull, dim=-1)
        is_base = torch.tensor([n in BASE for n in classnames]).unsqueeze(1)
        self.prototypes = torch.where(is_base, z, moved)

    def forward(self, clip, image_features=None) -> torch.Tensor:
        if not self.instance_conditional:
            return self.prototypes
        return self.prototypes.unsqueeze(0).expand(image_features.shape[0], -1, -1)


def zeroshot_image_features(clip):
    """Each test image's feature is its class's zero-shot prototype."""
    def features_fn(eval_set: EvalSet) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.tensor([item.label for item in eval_set.items])
        return template_embeddings(clip, TEMPLATES, eval_set.classnames)[labels], labels
    return features_fn


def write_toy_attributes(root: Path, eval_sets: list[EvalSet]) -> None:
    """attributes.json keyed by path under images/: novel backgrounds alternate dark/light, all small;
    base class b is typically dark (b even) or light (b odd), and small. Novel images get real PNGs."""
    attributes = {}
    for eval_set in eval_sets:
        for index, item in enumerate(eval_set.items):
            relpath = Path(item.impath).relative_to(root / "images").as_posix()
            if eval_set.subset == "base":
                background = "dark" if item.label % 2 == 0 else "light"
            else:
                background = "dark" if index % 2 == 0 else "light"
                Path(item.impath).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.full((8, 8, 3), 40 * item.label, dtype=np.uint8)).save(item.impath)
            attributes[relpath] = {"colour": item.classname.split()[0], "shape": item.classname.split()[1],
                                   "size": "small", "background": background}
    (root / "attributes.json").write_text(json.dumps(attributes))


# --------------------------------------------------------------------------- statistics by hand
def test_a_shift_shared_by_every_class_is_all_along_mu():
    z = torch.eye(6)[:4]
    step = torch.zeros(6)
    step[5] = 0.5
    stats = drift_statistics(z, z + step, ["a", "b", "c", "d"], {"base": [0, 1], "novel": [2, 3]}, "base")
    assert stats["mean_shift_norm"] == pytest.approx(0.5)
    for c in stats["classes"]:
        assert c["cosine"] == pytest.approx(1 / math.sqrt(1.25))
        assert c["shift_along_mean"] == pytest.approx(0.5) and c["shift_alignment"] == pytest.approx(1.0)
    for group in stats["groups"].values():
        assert group["shared_share"] == pytest.approx(1.0)
        assert group["shift_sq_sum"] == pytest.approx(2 * 0.25)


def test_novel_moves_orthogonal_to_the_base_shift_have_no_shared_share():
    z = torch.eye(6)[:4]
    learned = z.clone()
    learned[:2, 4] = 0.3  # base classes move along e4
    learned[2:, 5] = 0.4  # novel classes along e5
    stats = drift_statistics(z, learned, ["a", "b", "c", "d"], {"base": [0, 1], "novel": [2, 3]}, "base")
    assert stats["groups"]["base"]["shared_share"] == pytest.approx(1.0)
    assert stats["groups"]["novel"]["shared_share"] == pytest.approx(0.0, abs=1e-12)
    assert stats["classes"][3]["shift_alignment"] == pytest.approx(0.0, abs=1e-12)
    assert stats["classes"][3]["shift_norm"] == pytest.approx(0.4)


def test_per_image_moves_that_cancel_are_all_instance_specific():
    z = torch.eye(6)[:4]
    step = torch.zeros(6)
    step[5] = 0.5
    per_image = torch.stack([z + step, z - step])  # [2 images, C, D]
    stats = drift_statistics(z, per_image, ["a", "b", "c", "d"], {"base": [0, 1], "novel": [2, 3]}, "base")
    assert stats["per_image"] and stats["n_prototype_samples"] == 2
    assert stats["mean_shift_norm"] == pytest.approx(0.0, abs=1e-12)
    for group in stats["groups"].values():
        assert group["shared_share"] is None  # nothing moved on average: no direction
        assert group["instance_share"] == pytest.approx(1.0)
    cos = 1 / math.sqrt(1.25)
    assert stats["classes"][0]["cosine_min"] == pytest.approx(cos) == stats["classes"][0]["cosine_max"]


# --------------------------------------------------------------------------- analyze on synthetic sets
def test_untrained_coop_context_from_the_template_words_does_not_drift(random_clip, tmp_path):
    eval_sets = make_eval_sets(tmp_path)
    learner = CoOpPrompts(random_clip, n_ctx=4, ctx_init="a photo of a")
    learner.set_classnames(random_clip, BASE)
    result = analyze(random_clip, learner, TEMPLATES, eval_sets, random_features)
    assert result["mode"] == "base2novel" and result["instance_conditional"] is False
    for c in result["drift"]["classes"]:
        assert c["cosine"] == pytest.approx(1.0, abs=1e-5) and abs(c["drift"]) < 1e-5
    assert result["drift"]["mean_shift_norm"] < 1e-5
    assert result["drift"]["groups"]["novel"]["shared_share"] is None
    capture = result["capture"]
    assert capture["learned"]["n_captured"] == capture["zeroshot"]["n_captured"]
    assert capture["learned"]["counts_by_base_class"] == capture["zeroshot"]["counts_by_base_class"]
    assert capture["learned"]["fraction"] == capture["zeroshot"]["fraction"]
    assert result["accuracy"]["learned"] == result["accuracy"]["zeroshot"]
    assert learner.classnames == BASE  # the learner's class list is restored

    with torch.no_grad():  # negative control: a moved context drifts
        learner.ctx.add_(0.5 * torch.randn(learner.ctx.shape, generator=torch.Generator().manual_seed(0)))
    moved = analyze(random_clip, learner, TEMPLATES, eval_sets, random_features)
    assert min(c["cosine"] for c in moved["drift"]["classes"]) < 0.999
    assert moved["drift"]["mean_shift_norm"] > 1e-3
    assert 0.0 <= moved["drift"]["groups"]["novel"]["shared_share"] <= 1.0


@pytest.mark.parametrize("conditional", [False, True], ids=["static", "per_image"])
def test_capture_counts_examples_and_attributes_on_a_known_answer(random_clip, tmp_path, monkeypatch, conditional):
    monkeypatch.setattr(drift_module, "PROMPTS_PER_CHUNK", 3 * len(BASE + NOVEL))  # 3 images per chunk
    eval_sets = make_eval_sets(tmp_path)
    write_toy_attributes(tmp_path, eval_sets)
    learner = PairedPrompts(instance_conditional=conditional)
    result = analyze(random_clip, learner, TEMPLATES, eval_sets, zeroshot_image_features(random_clip),
                     dataset_dir=tmp_path, n_examples=3, seed=0)
    capture = result["capture"]
    n_novel = len(NOVEL) * PER_CLASS
    assert capture["n_novel_images"] == n_novel
    assert capture["zeroshot"]["n_captured"] == 0 and capture["zeroshot"]["novel_acc"] == 100.0
    assert capture["zeroshot"]["all_class_acc"] == 100.0
    assert capture["learned"]["n_captured"] == n_novel and capture["learned"]["fraction"] == 1.0
    assert capture["zeroshot"]["n_confused"] == capture["learned"]["n_confused"] == 0
    assert capture["learned"]["counts_by_base_class"] == {name: PER_CLASS for name in BASE}
    assert sum(t["count"] for t in capture["learned"]["top_capturing"]) == n_novel
    assert result["accuracy"]["zeroshot"]["novel"] == 100.0

    breakdown = capture["by_attribute"]
    assert breakdown["by_value"]["background"] == {
        "dark": {"n_images": n_novel // 2, "zeroshot": 0.0, "learned": 1.0},
        "light": {"n_images": n_novel // 2, "zeroshot": 0.0, "learned": 1.0},
    }
    # Class i's odd images are light; base class i is typically dark for even i: half match.
    assert breakdown["capturer_shares_value"]["background"]["learned"] == {"n_captured": n_novel, "fraction": 0.5}
    assert breakdown["capturer_shares_value"]["size"]["learned"]["fraction"] == 1.0
    assert breakdown["capturer_shares_value"]["size"]["zeroshot"] == {"n_captured": 0, "fraction": None}

    assert len(result["examples"]) == 3
    for example in result["examples"]:
        pair = BASE[NOVEL.index(example["class"])]
        assert example["selected"] == "captured" and example["learned_prediction"] == pair
        assert example["zeroshot_prediction"] == example["class"]
        assert example["own_class"]["zeroshot"] == pytest.approx(1.0, abs=1e-5)
        top = example["top_base_classes"][0]
        assert top["class"] == pair and top["learned"] == pytest.approx(1.0, abs=1e-5)
        assert example["attributes"]["background"] in ("dark", "light")
    drift = result["drift"]
    assert drift["per_image"] is conditional
    if conditional:
        assert drift["groups"]["base"]["instance_share"] == pytest.approx(0.0, abs=1e-6)

    paths = write_analysis(result, tmp_path / "analysis")
    assert {p.name for p in paths.values()} == {"analysis.json", "summary.md", *PNG_FILES}
    summary = paths["summary"].read_text()
    assert "100.0 % (16/16)" in summary and "Interpretation" in summary


def test_static_and_per_image_paths_agree(random_clip, tmp_path):
    eval_sets = make_eval_sets(tmp_path)
    features = zeroshot_image_features(random_clip)
    static = analyze(random_clip, PairedPrompts(False), TEMPLATES, eval_sets, features)
    per_image = analyze(random_clip, PairedPrompts(True), TEMPLATES, eval_sets, features)
    for a, b in zip(static["drift"]["classes"], per_image["drift"]["classes"], strict=True):
        assert a["cosine"] == pytest.approx(b["cosine"], abs=1e-6)
        assert a["shift_along_mean"] == pytest.approx(b["shift_along_mean"], abs=1e-6)
    assert static["capture"]["learned"] == per_image["capture"]["learned"]


def test_other_protocols_get_drift_per_evaluation_only(random_clip, tmp_path):
    names = BASE + NOVEL
    items = [Datum(str(tmp_path / f"{i}.png"), label, name) for label, name in enumerate(names) for i in range(2)]
    eval_sets = [EvalSet(name="all", dataset="toy", subset="all", classnames=names, items=items)]
    learner = ZeroShotPrompts(random_clip, TEMPLATES)
    learner.set_classnames(random_clip, names)
    result = analyze(random_clip, learner, TEMPLATES, eval_sets, random_features)
    assert result["mode"] == "per_evaluation" and "capture" not in result
    (evaluation,) = result["evaluations"]
    assert evaluation["n_images"] == 16 and evaluation["accuracy"]["zeroshot"] == evaluation["accuracy"]["learned"]
    assert all(c["cosine"] == pytest.approx(1.0, abs=1e-6) for c in evaluation["drift"]["classes"])
    paths = write_analysis(result, tmp_path / "analysis")
    assert sorted(p.name for p in paths.values()) == ["analysis.json", "drift_per_class.png", "summary.md"]
    assert "all: mean cosine 1.000, top-1 +0.00 points" in paths["summary"].read_text()


def test_headline_numbers_and_figures_go_to_an_active_wandb_run(random_clip, tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")

    class FakeRun:
        def __init__(self) -> None:
            self.logged: dict = {}
            self.summary: dict = {}

        def log(self, data: dict) -> None:
            self.logged.update(data)

    fake = FakeRun()
    monkeypatch.setattr(wandb, "run", fake)
    eval_sets = make_eval_sets(tmp_path)
    result = analyze(random_clip, PairedPrompts(), TEMPLATES, eval_sets, zeroshot_image_features(random_clip))
    write_analysis(result, tmp_path / "analysis")
    assert fake.summary["analysis/capture_learned"] == 1.0 and fake.summary["analysis/capture_zeroshot"] == 0.0
    assert {f"analysis/{Path(f).stem}" for f in PNG_FILES} <= set(fake.logged)
    assert isinstance(fake.logged["analysis/examples"], wandb.Image)


# --------------------------------------------------------------------------- real runs
@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("analysis_ws")


@pytest.fixture(scope="module")
def overrides(workspace) -> list[str]:
    return tiny_overrides(workspace)


def run_dir_of(cfg) -> Path:
    return Path(cfg.paths.output_dir) / "runs" / str(cfg.run_name)


RUNS = {  # name -> overrides of a tiny toy-world run
    "coop": ["method=coop", "method.optim.epochs=1", "analysis=true"],
    "cocoop": ["method=cocoop", "method.optim.epochs=1", "analysis=true"],
    # the toy world's CoOp starts from the template words "a photo of a" (conf/method_dataset/coop_toyworld.yaml)
    "coop_untrained": ["method=coop", "method.optim.epochs=0", "analysis=true", "run_name=coop_untrained"],
    "zeroshot": ["method=zeroshot"],
}


@pytest.fixture(scope="module")
def finished_runs(overrides):
    """finished_runs(name) -> the dir of a finished run of RUNS[name], run once per module."""
    dirs: dict[str, Path] = {}

    def finished(name: str) -> Path:
        if name not in dirs:
            cfg = compose_cfg([*overrides, *RUNS[name]])
            run(cfg)
            dirs[name] = run_dir_of(cfg)
        return dirs[name]

    return finished


def check_analysis_dir(run_dir: Path) -> dict:
    """Every listed file exists and every number is in range and consistent."""
    out = run_dir / "analysis"
    for name in ("analysis.json", "summary.md", *PNG_FILES):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    result = json.loads((out / "analysis.json").read_text())
    record = read_record(run_dir)
    drift, capture = result["drift"], result["capture"]
    assert [c["name"] for c in drift["classes"]] == [c.name for c in toy_classes("grid6")]
    for c in drift["classes"]:
        assert -1.0 - 1e-6 <= c["cosine"] <= 1.0 + 1e-6
        assert c["drift"] == pytest.approx(1.0 - c["cosine"])
    for group in drift["groups"].values():
        assert group["cosine_min"] <= group["cosine_mean"] <= group["cosine_max"]
        assert group["shared_share"] is None or 0.0 <= group["shared_share"] <= 1.0 + 1e-9
    n_novel = capture["n_novel_images"]
    assert n_novel == {e["name"]: e for e in record["evaluations"]}["novel"]["n_images"]
    for name in ("zeroshot", "learned"):
        part = capture[name]
        assert 0.0 <= part["fraction"] <= 1.0 and part["fraction"] == pytest.approx(part["n_captured"] / n_novel)
        assert sum(part["counts_by_base_class"].values()) == part["n_captured"]
        # every novel image is right, captured by a base class, or confused with another novel class
        assert part["fraction"] + part["confused_fraction"] + part["all_class_acc"] / 100 == pytest.approx(1.0)
        for row in capture["by_attribute"]["by_value"]["background"].values():
            assert 0.0 <= row[name] <= 1.0
    assert sum(r["n_images"] for r in capture["by_attribute"]["by_value"]["size"].values()) == n_novel
    # The analysis scores exactly what the run evaluated: its accuracies are the record's.
    assert result["accuracy"]["learned"]["base"] == pytest.approx(record["metrics"]["base_acc"], abs=1e-6)
    assert result["accuracy"]["learned"]["novel"] == pytest.approx(record["metrics"]["novel_acc"], abs=1e-6)
    assert capture["learned"]["novel_acc"] == pytest.approx(record["metrics"]["novel_acc"], abs=1e-6)
    assert len(result["examples"]) == 6
    for example in result["examples"]:
        assert set(example["attributes"]) >= {"colour", "shape", "size", "background"}
        assert example["class"] == f"{example['attributes']['colour']} {example['attributes']['shape']}"
    return result


@pytest.mark.parametrize("method", ["coop", "cocoop"])
def test_a_run_with_analysis_and_promptlab_analyze_give_the_same_diagnostics(finished_runs, method, capsys):
    run_dir = finished_runs(method)
    in_run = check_analysis_dir(run_dir)
    assert in_run["instance_conditional"] is (method == "cocoop")
    assert in_run["run"]["method"] == method
    shutil.rmtree(run_dir / "analysis")
    assert analyze_cli.main([str(run_dir)]) == 0
    printed = capsys.readouterr().out
    assert "# Prompt drift" in printed and str(run_dir / "analysis" / "examples.png") in printed
    rebuilt = check_analysis_dir(run_dir)
    for a, b in zip(in_run["drift"]["classes"], rebuilt["drift"]["classes"], strict=True):
        assert a["cosine"] == pytest.approx(b["cosine"], abs=1e-6)
    assert rebuilt["capture"]["learned"]["counts_by_base_class"] == in_run["capture"]["learned"]["counts_by_base_class"]
    assert [e["image"] for e in rebuilt["examples"]] == [e["image"] for e in in_run["examples"]]


def test_an_untrained_coop_run_from_the_template_words_has_no_drift(finished_runs):
    result = check_analysis_dir(finished_runs("coop_untrained"))
    assert all(c["cosine"] == pytest.approx(1.0, abs=1e-5) for c in result["drift"]["classes"])
    assert result["capture"]["learned"]["counts_by_base_class"] == result["capture"]["zeroshot"]["counts_by_base_class"]
    assert result["capture"]["learned"]["fraction"] == result["capture"]["zeroshot"]["fraction"]


def test_a_zero_shot_run_dir_has_no_drift(finished_runs):
    paths = analyze_run_dir(finished_runs("zeroshot"), n_examples=2)
    result = json.loads(paths["json"].read_text())
    assert all(c["cosine"] == pytest.approx(1.0, abs=1e-6) for c in result["drift"]["classes"])
    assert result["capture"]["learned"] == result["capture"]["zeroshot"]
    assert len(result["examples"]) == 2 and "nothing changed" in paths["summary"].read_text()


def test_promptlab_analyze_reports_unusable_dirs(finished_runs, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    no_prompt = tmp_path / "coop_copy"
    shutil.copytree(finished_runs("coop"), no_prompt)
    (no_prompt / "prompt_learner.pt").unlink()
    failed = tmp_path / "failed"
    write_record(failed, error_record(failed, RuntimeError("boom"), config={"seed": 1}))
    assert analyze_cli.main([str(empty), str(no_prompt), str(failed)]) == 1
    err = capsys.readouterr().err
    assert f"{empty}: no metrics.json" in err
    assert "prompt_learner.pt is missing" in err and "'coop'" in err
    assert "status 'failed'" in err


def test_the_console_script_module_runs(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "promptlab.analysis.cli", str(tmp_path), "--examples", "-1"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--examples -1" in proc.stderr
