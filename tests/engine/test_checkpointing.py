"""In-run checkpoints: a job stopped mid-way resumes from `last.ckpt` and ends with exactly the learned tensors
of an uninterrupted run (CPU, same seed); a checkpoint of another config is set aside, never used or lost."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

import promptlab.train as train
from promptlab.engine.checkpointing import CHECKPOINT_NAME, rng_states, set_rng_states
from tests.runs import compose_cfg, run_cli, tiny_overrides

# K=2 cached augmented views: each step draws a view from the global torch RNG, so the test covers the
# generators (global and the loader's) as well as the optimiser, scheduler and loop state.
COOP = ["method=coop", "method.loader.augment=flip", "method.loader.train_cache=on", "method.loader.train_views=2",
        "method.loader.batch_size=8", "method.optim.warmup_epochs=1", "checkpoint.every_n_epochs=1"]


def _learned(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "prompt_learner.pt", weights_only=True)["state_dict"]


class _StopAt(L.Callback):
    """Stands in for a kill: raises when epoch `epoch` (0-based) starts, after the checkpoint of the one before."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            raise RuntimeError(f"stopped at epoch {self.epoch}")


# Online augmentation of decoded images (the tensor backend): its crop/flip generator is part of the state too.
ONLINE = ["method.loader.train_cache=off", "method.loader.augment=coop"]


def _run(tmp_path: Path, name: str, extra: list[str] = ()) -> dict:
    return train.run(compose_cfg([*tiny_overrides(tmp_path), *COOP, "method.optim.epochs=6", f"run_name={name}",
                                  *extra]))


@pytest.mark.parametrize("variant", [[], ONLINE], ids=["cached-views", "online-augmentation"])
def test_a_run_stopped_mid_way_resumes_and_ends_identical(tmp_path, monkeypatch, variant) -> None:
    def _run(tmp_path: Path, name: str) -> dict:
        return globals()["_run"](tmp_path, name, variant)

    whole = _run(tmp_path, "whole")
    whole_dir = Path(whole["run_dir"])
    assert not (whole_dir / CHECKPOINT_NAME).exists()  # removed once the record is complete

    real_trainer = L.Trainer

    def trainer_that_stops(*args, **kwargs):
        kwargs["callbacks"] = [*(kwargs.get("callbacks") or []), _StopAt(4)]
        return real_trainer(*args, **kwargs)

    monkeypatch.setattr(L, "Trainer", trainer_that_stops)
    with pytest.raises(RuntimeError, match="stopped at epoch 4"):
        _run(tmp_path, "stopped")
    monkeypatch.setattr(L, "Trainer", real_trainer)
    stopped_dir = whole_dir.parent / "stopped"
    checkpoint = torch.load(stopped_dir / CHECKPOINT_NAME, weights_only=True)
    assert checkpoint["epoch"] == 3  # the end of the 4th epoch (0-based 3) was saved
    assert set(checkpoint["state_dict"]) == {"learner.ctx"}  # the learned tensors only, not the frozen CLIP

    resumed = _run(tmp_path, "stopped")
    assert any("resumed from last.ckpt after epoch 4" in n for n in resumed["notes"]), resumed["notes"]
    whole_state, resumed_state = _learned(whole_dir), _learned(stopped_dir)
    assert whole_state.keys() == resumed_state.keys()
    for key, value in whole_state.items():
        assert torch.equal(value, resumed_state[key]), key
    assert resumed["metrics"] == whole["metrics"]


def test_resume_false_or_another_config_starts_from_epoch_zero(tmp_path) -> None:
    first = _run(tmp_path, "job", ["checkpoint.keep=true"])
    run_dir = Path(first["run_dir"])
    assert (run_dir / CHECKPOINT_NAME).is_file()
    # Same job folder, another config: the checkpoint is not used, and kept beside under another name.
    changed = _run(tmp_path, "job", ["method.optim.lr=0.05"])
    assert not any("resumed from" in n for n in changed["notes"])
    assert any("written by another config" in n for n in changed["notes"]), changed["notes"]
    assert (run_dir / (CHECKPOINT_NAME + ".stale")).is_file()


def test_rng_states_round_trip_through_a_weights_only_file(tmp_path) -> None:
    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    path = tmp_path / "rng.pt"
    torch.save(rng_states(), path)
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    set_rng_states(torch.load(path, weights_only=True))
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], again[0]) and np.array_equal(expected[1], again[1]) and expected[2] == again[2]


def test_checkpoint_settings_are_checked_before_anything_runs(tmp_path) -> None:
    from promptlab.errors import ConfigError

    with pytest.raises(ConfigError, match="checkpoint.every_n_minutes=0"):
        train.run(compose_cfg([*tiny_overrides(tmp_path), "method=coop", "checkpoint.every_n_minutes=0"]))


# --------------------------------------------------------------------------- a real kill
def _cli(tmp_path: Path, run_dir: Path, epochs: int) -> list[str]:
    return [*tiny_overrides(tmp_path), *COOP, f"method.optim.epochs={epochs}", f"hydra.run.dir={run_dir}"]


@pytest.mark.slow
def test_sigkill_mid_run_then_rerun_ends_identical(tmp_path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    epochs = 150  # long enough that the kill lands mid-run (after epoch 20) on a fast machine
    whole_dir, killed_dir = tmp_path / "whole", tmp_path / "killed"
    done = run_cli(_cli(tmp_path, whole_dir, epochs), cwd=tmp_path)  # the uninterrupted run, in this process
    assert done.returncode == 0, done.stderr[-3000:]

    proc = subprocess.Popen([sys.executable, "-m", "promptlab.train", *_cli(tmp_path, killed_dir, epochs)],
                            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, saved_epoch = time.monotonic() + 300, -1
    while time.monotonic() < deadline and saved_epoch < 20:
        assert proc.poll() is None, "the job ended before it could be killed: raise `epochs`"
        if (killed_dir / CHECKPOINT_NAME).is_file():
            saved_epoch = int(torch.load(killed_dir / CHECKPOINT_NAME, weights_only=True)["epoch"])
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert json.loads((killed_dir / "metrics.json").read_text())["status"] == "running"
    killed_at = int(torch.load(killed_dir / CHECKPOINT_NAME, weights_only=True)["epoch"]) + 1
    assert 20 <= killed_at < epochs

    again = run_cli(_cli(tmp_path, killed_dir, epochs), cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    record = json.loads((killed_dir / "metrics.json").read_text())
    assert record["status"] == "complete"
    assert f"resumed from last.ckpt after epoch {killed_at} " in " ".join(record["notes"])
    for key, value in _learned(whole_dir).items():
        assert torch.equal(value, _learned(killed_dir)[key]), key
    assert record["metrics"] == json.loads((whole_dir / "metrics.json").read_text())["metrics"]


def test_checkpoints_by_epochs_and_by_time(tmp_path, monkeypatch) -> None:
    import types

    import promptlab.engine.checkpointing as checkpointing

    saved: list[int] = []
    trainer = types.SimpleNamespace(current_epoch=0, is_global_zero=True)
    trainer.save_checkpoint = lambda path, **_: (Path(path).write_text("x"), saved.append(trainer.current_epoch))
    clock = [0.0]
    monkeypatch.setattr(checkpointing.time, "monotonic", lambda: clock[0])

    trainer.max_epochs = 8
    every_3 = checkpointing.RunCheckpoint(tmp_path / "a.ckpt", "h", every_n_epochs=3, every_n_minutes=None)
    for epoch in range(8):
        trainer.current_epoch = epoch
        every_3.on_train_epoch_end(trainer, None)
    assert saved == [2, 5, 7] and (tmp_path / "a.ckpt").is_file()  # and after the last epoch

    saved.clear()
    by_time = checkpointing.RunCheckpoint(tmp_path / "b.ckpt", "h", every_n_epochs=0, every_n_minutes=10)
    for epoch, minutes in enumerate([4, 9, 11, 15, 20, 22, 23]):  # the clock at each epoch end
        clock[0], trainer.current_epoch = 60.0 * minutes, epoch
        by_time.on_train_epoch_end(trainer, None)
    assert saved == [2, 5]  # the first epoch end 10 minutes after the start, then after that write
    trainer.current_epoch = 7
    by_time.on_train_epoch_end(trainer, None)
    assert saved == [2, 5, 7]  # the last epoch


def test_results_do_not_depend_on_the_caches(tmp_path) -> None:
    """The second run of a config finds the test features, few-shot files and image verdicts cached; its random
    stream, and so its learned tensors, must be those of the first run."""
    first, second = _run(tmp_path, "first"), _run(tmp_path, "second")
    for key, value in _learned(Path(first["run_dir"])).items():
        assert torch.equal(value, _learned(Path(second["run_dir"]))[key]), key
