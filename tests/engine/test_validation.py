"""Validation on the few-shot val split: recorded, optionally used to choose the epoch, and the only value a Hydra
sweeper gets; it never reads test data and never changes what training computes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

import promptlab.train as train
from promptlab.errors import ConfigError
from tests.runs import compose_cfg, run_cli, tiny_overrides

COOP = ["method=coop", "method.optim.epochs=6"]


def _run(tmp_path: Path, name: str, extra: list[str] = ()) -> dict:
    return train.run(compose_cfg([*tiny_overrides(tmp_path), *COOP, f"run_name={name}", *extra]))


def _learned(record: dict) -> torch.Tensor:
    return torch.load(Path(record["run_dir"]) / "prompt_learner.pt", weights_only=True)["state_dict"]["ctx"]


def test_validation_is_recorded_and_is_the_sweeper_objective(tmp_path) -> None:
    record = _run(tmp_path, "val", ["validation.every_n_epochs=2"])
    validation = record["validation"]
    assert [h["epoch"] for h in validation["history"]] == [2, 4, 6]
    assert validation["acc"] == validation["history"][-1]["acc"]  # the last epoch is the evaluated prompt
    assert validation["n_images"] > 0 and 0 <= validation["n_correct"] <= validation["n_images"]
    assert train.objective(record) == validation["acc"]
    # What ran, loader by loader: the toy world's small sets decode in-process under the automatic rule.
    assert record["loader_workers"] and set(record["loader_workers"].values()) == {0}
    assert train.objective(record) != record["metrics"]["hm"] or validation["acc"] == record["metrics"]["hm"]
    # Beside micro top-1, every scored evaluation has top-5 and mean-per-class accuracy, from exact counts.
    for evaluation in record["evaluations"]:
        assert evaluation["n_correct"] <= evaluation["n_correct_top5"] <= evaluation["n_images"]
        assert evaluation["top5_acc"] == pytest.approx(100.0 * evaluation["n_correct_top5"] / evaluation["n_images"])
        name = evaluation["name"]
        assert record["metrics"][f"{name}_top5_acc"] == evaluation["top5_acc"]
        assert record["metrics"][f"{name}_mean_class_acc"] == evaluation["mean_per_class_acc"]


def test_validating_during_training_does_not_change_what_is_learned(tmp_path) -> None:
    once = _run(tmp_path, "once")  # validation.every_n_epochs=0: once, after training
    every = _run(tmp_path, "every", ["validation.every_n_epochs=1"])
    assert torch.equal(_learned(once), _learned(every))
    assert once["validation"]["acc"] == every["validation"]["acc"]
    assert once["metrics"] == every["metrics"]


def test_best_val_keeps_the_first_best_validated_epoch(tmp_path) -> None:
    record = _run(tmp_path, "best", ["validation.every_n_epochs=1", "validation.selection=best_val",
                                     "method.optim.lr=0.5"])
    validation = record["validation"]
    accs = [h["acc"] for h in validation["history"]]
    assert len(accs) == 6
    best = accs.index(max(accs)) + 1
    assert validation["selected_epoch"] == best
    assert validation["acc"] == max(accs)  # the restored prompt is validated again: the best epoch's accuracy
    assert record["summary"]["epoch_selected_on"] == "val"


def test_best_val_needs_validated_epochs(tmp_path) -> None:
    with pytest.raises(ConfigError, match="validation.selection=best_val with validation.every_n_epochs=0"):
        _run(tmp_path, "bad", ["validation.selection=best_val"])


def test_the_objective_never_reads_test_data(tmp_path, monkeypatch) -> None:
    """The same job with its test labels scrambled: the test accuracy changes, the objective does not."""
    clean = _run(tmp_path, "clean")
    from promptlab.protocols import base

    real = base.Protocol.build_data

    def poisoned(self, *args, **kwargs):
        data = real(self, *args, **kwargs)
        for eval_set in data.eval_sets:
            n = len(eval_set.classnames)
            eval_set.items = [dataclasses.replace(d, label=(d.label + 1) % n) for d in eval_set.items]
        return data

    monkeypatch.setattr(base.Protocol, "build_data", poisoned)
    dirty = _run(tmp_path, "poisoned")
    assert dirty["metrics"]["base_acc"] != clean["metrics"]["base_acc"]
    assert train.objective(dirty) == train.objective(clean)


@pytest.mark.slow
def test_optuna_search_on_the_toy_world_tunes_on_validation(tmp_path) -> None:
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="promptlab[tune] is not installed")
    proc = run_cli(["-m", "hparams_search=coop", "method=coop", "hydra.sweeper.n_trials=3", "sweep_name=tune",
                    *tiny_overrides(tmp_path)], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json

    import yaml

    sweep = tmp_path / "outputs" / "sweeps" / "tune"
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    records = [json.loads(p.read_text()) for p in sweep.glob("*/metrics.json")]
    assert records and all(r["status"] == "complete" for r in records)
    assert results["best_value"] == max(r["validation"]["acc"] for r in records)


def test_the_wandb_sweep_example_composes_and_its_metric_is_logged(tmp_path) -> None:
    """The W&B sweep file cannot run without a W&B server; what can be checked here: its fixed arguments and each
    sampled parameter are valid overrides, and its metric is a name every run logs."""
    import csv

    import yaml

    from tests.runs import REPO

    sweep = yaml.safe_load((REPO / "examples" / "wandb_sweep.yaml").read_text())
    command = sweep["command"]
    assert command[:4] == ["${env}", "python", "-m", "promptlab.train"] and command[-1] == "${args_no_hyphens}"
    fixed = [c for c in command[4:-1] if c != "logger=wandb"]
    for name, spec in sweep["parameters"].items():
        value = spec["values"][0] if "values" in spec else spec["min"]
        compose_cfg([*fixed, f"{name}={value}"])  # would raise on an unknown key or a bad value
    assert sweep["metric"]["name"] == "val/acc"

    record = train.run(compose_cfg([*tiny_overrides(tmp_path), *fixed, "method.optim.epochs=5", "logger=csv",
                                    "run_name=logged"]))
    rows = list(csv.DictReader(open(Path(record["run_dir"]) / "csv" / "metrics.csv")))
    logged = [float(r["val/acc"]) for r in rows if r.get("val/acc")]
    assert logged and logged[-1] == pytest.approx(record["validation"]["acc"])
