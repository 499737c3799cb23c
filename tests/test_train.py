"""The entry point end to end: run records, bad overrides, saved prompts, protocols."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from promptlab.data.errors import DatasetError
from promptlab.models import ClipLoadError
from promptlab.results.metrics import harmonic_mean
from promptlab.train import run
from tests.runs import TINY_WORLD, compose_cfg, run_cli, tiny_overrides, top1_metrics, workspace_overrides


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ws")


@pytest.fixture(scope="module")
def base_overrides(workspace) -> list[str]:
    return tiny_overrides(workspace)


def without_toy(overrides: list[str]) -> list[str]:
    return [o for o in overrides if o not in TINY_WORLD]


def test_cli_zero_shot_writes_a_sane_record(workspace, base_overrides):
    out = workspace / "cli_run"
    proc = run_cli([*base_overrides, f"hydra.run.dir={out}"], cwd=workspace)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((out / "metrics.json").read_text())
    assert record["status"] == "complete"
    metrics, evals = record["metrics"], {e["name"]: e for e in record["evaluations"]}
    assert top1_metrics(metrics) == {"base_acc", "novel_acc", "hm"}
    assert evals["base"]["n_images"] == 18 * 6 and evals["novel"]["n_images"] == 18 * 6
    assert evals["base"]["n_classes"] == 18 and evals["novel"]["n_classes"] == 18
    for e in evals.values():
        assert 0.0 <= e["acc"] <= 100.0
        assert e["acc"] == pytest.approx(100.0 * e["n_correct"] / e["n_images"], abs=1e-3)
    assert metrics["hm"] == pytest.approx(harmonic_mean(metrics["base_acc"], metrics["novel_acc"]))
    assert record["summary"]["method"] == "zeroshot" and record["timings"]["total_s"] > 0
    assert "torch" in record["versions"] and "HM" in proc.stdout


def test_unknown_dataset_override_fails_clearly(workspace, base_overrides):
    proc = run_cli([*base_overrides, "dataset=no_such_dataset"], cwd=workspace)
    assert proc.returncode != 0
    assert "no_such_dataset" in proc.stderr and "Available options" in proc.stderr


def test_missing_data_root_names_the_path(workspace, base_overrides):
    missing = workspace / "nowhere"
    cfg = compose_cfg([*without_toy(base_overrides), "dataset=oxford_pets", f"paths.data_root={missing}"])
    with pytest.raises(DatasetError, match="nowhere"):
        run(cfg)
    record = json.loads((Path(cfg.paths.output_dir) / "runs" / cfg.run_name / "metrics.json").read_text())
    assert record["status"] == "failed" and record["error"]["type"] == "DatasetError"


def test_unknown_model_name_fails_clearly(base_overrides):
    cfg = compose_cfg([*base_overrides, "model=vit_b16", "model.name=ViT-Nope-99", "model.weights_file=null"])
    with pytest.raises(ClipLoadError, match="Unknown open_clip model name 'ViT-Nope-99'"):
        run(cfg)


def test_pretrained_tag_without_network_says_how_to_pass_a_file(base_overrides, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", "/nonexistent-hf-home")
    cfg = compose_cfg([*base_overrides, "model=vit_b32", "model.weights_file=null"])
    with pytest.raises(ClipLoadError, match=r"model\.weights_file=/path/to/ViT-B-32\.pt"):
        run(cfg)


def test_saved_prompt_reloads_with_weights_only_and_gives_identical_metrics(workspace, base_overrides):
    first = run(compose_cfg([*base_overrides, "method=coop", "method.optim.epochs=2", "run_name=coop_save"]))
    run_dir = Path(first["run_dir"])
    prompt = run_dir / "prompt_learner.pt"
    payload = torch.load(prompt, weights_only=True)
    assert list(payload["state_dict"]) == ["ctx"] and prompt.stat().st_size < 20_000
    again = run(compose_cfg([*base_overrides, "method=coop", "method.optim.epochs=0", f"load_prompt={prompt}",
                             "run_name=coop_reload"]))
    assert again["evaluations"] == first["evaluations"]


def test_resume_skips_a_complete_run(base_overrides):
    overrides = [*base_overrides, "run_name=resume_me"]
    first = run(compose_cfg(overrides))
    second = run(compose_cfg(overrides))
    assert second["timings"] == first["timings"]  # read back, not recomputed
    changed = run(compose_cfg([*overrides, "seed=2"]))
    assert changed["summary"]["seed"] == 2


def test_short_coop_training_lowers_loss_and_beats_zero_shot_on_spurious_base(tmp_path):
    """Committed tiny CLIP, toy world with the spurious rule on: a short CoOp run learns the shortcut."""
    import csv

    common = [*workspace_overrides(tmp_path), "dataset.generator.spurious=1.0", "dataset.generator.train_per_class=8",
              "dataset.generator.val_per_class=1", "dataset.generator.test_per_class=20", "shots=8"]
    zero = run(compose_cfg([*common, "method=zeroshot", "run_name=zs"]))
    coop = run(compose_cfg([*common, "method=coop", "method.optim.epochs=40", "logger=csv", "run_name=coop"]))
    with open(Path(coop["run_dir"]) / "csv" / "metrics.csv") as f:
        losses = [float(r["train/loss_epoch"]) for r in csv.DictReader(f) if r.get("train/loss_epoch")]
    assert len(losses) == 40 and losses[-1] < 0.7 * losses[0]
    assert coop["metrics"]["base_acc"] > zero["metrics"]["base_acc"] + 2.0


@pytest.mark.parametrize("experiment", ["demo", "smoke", "spurious_study", "base2novel_paper"])
def test_experiment_configs_compose(experiment):
    cfg = compose_cfg([f"experiment={experiment}"])
    assert cfg.protocol.name == "base2novel"
    if experiment == "base2novel_paper":
        assert cfg.model.name == "ViT-B-16" and cfg.shots == 16 and cfg.sweep_name == "base2novel_paper"


def test_smoke_experiment_runs(workspace):
    record = run(compose_cfg(["experiment=smoke", "method=cocoop", *workspace_overrides(workspace), *TINY_WORLD,
                              "run_name=smoke"]))
    assert record["status"] == "complete" and record["summary"]["epochs"] == 2 and record["summary"]["shots"] == 4
