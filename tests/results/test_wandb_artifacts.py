"""W&B artifacts: a run's prompt file (type "prompt") and a sweep's table files (type "results"), offline."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.runs import compose_cfg, tiny_overrides


@pytest.fixture
def logged_artifacts(tmp_path, monkeypatch) -> list:
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    (tmp_path / "wandb").mkdir()
    captured = []
    real = wandb.sdk.wandb_run.Run.log_artifact

    def spy(self, artifact, *args, **kwargs):
        captured.append(artifact)
        return real(self, artifact, *args, **kwargs)

    monkeypatch.setattr(wandb.sdk.wandb_run.Run, "log_artifact", spy)
    yield captured
    wandb.finish()
    wandb.teardown()


def test_a_trained_prompt_is_versioned_as_an_artifact(tmp_path, logged_artifacts) -> None:
    from promptlab.train import run

    run(compose_cfg([*tiny_overrides(tmp_path), "method=coop", "method.optim.epochs=1", "logger=wandb",
                     "logger.wandb.mode=offline", "run_name=art"]))
    (artifact,) = logged_artifacts
    assert artifact.type == "prompt" and artifact.name.startswith("prompt-")
    assert set(artifact.manifest.entries) == {"prompt_learner.pt"}
    assert artifact.metadata["method"] == "coop"


def test_the_sweep_tables_are_versioned_as_a_results_artifact(tmp_path, logged_artifacts) -> None:
    from promptlab.results.wandb_log import log_tables_to_wandb
    from promptlab.train import run

    run(compose_cfg([*tiny_overrides(tmp_path), "run_name=zs"]))
    from promptlab.results.aggregate import aggregate_runs

    result = aggregate_runs([tmp_path / "outputs" / "runs"], tmp_path / "tables")
    files = [p for key, p in result.paths.items() if key != "skipped_runs"]
    log_tables_to_wandb(result.tables, result.figure_paths, project="toy", group="sweep=1,a", files=files)
    # (wandb itself logs each wandb.Table as an artifact of its own type)
    (artifact,) = [a for a in logged_artifacts if a.type == "results"]
    assert artifact.type == "results" and artifact.name == "results-sweep-1-a"
    assert {Path(p).name for p in files} == set(artifact.manifest.entries)
