"""Parallel sweep jobs on several GPUs each get their own GPU (simulated device counts)."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import pytest

import promptlab.train as train
from tests.runs import compose_cfg


@pytest.fixture
def multirun_job(monkeypatch):
    """Pretend to be job `num` of a Hydra multirun."""

    def set_job(num: int) -> None:
        import promptlab.engine.run as steps

        monkeypatch.setattr(steps, "is_multirun", lambda: True)
        job = SimpleNamespace(job=SimpleNamespace(num=num))
        monkeypatch.setattr(train.HydraConfig, "get", staticmethod(lambda: job))

    return set_job


def test_a_four_job_sweep_on_two_gpus_puts_two_jobs_on_each(multirun_job) -> None:
    cfg = compose_cfg(["trainer=gpu"])
    placed = []
    for num in range(4):
        multirun_job(num)
        devices, note = train.job_devices(cfg, n_gpus=2)
        placed.append(devices[0])
        assert f"GPU {devices[0]} of 2" in note
    assert Counter(placed) == {0: 2, 1: 2}


@pytest.mark.parametrize("overrides", [["trainer=gpu", "assign_gpus=false"], ["trainer=ddp"], ["trainer=cpu"],
                                       ["trainer=gpu", "trainer.devices=2"]])
def test_nothing_is_assigned_when_the_job_chose_its_devices(overrides, multirun_job) -> None:
    multirun_job(3)
    assert train.job_devices(compose_cfg(overrides), n_gpus=2) is None


def test_single_runs_and_single_gpu_machines_are_left_alone(multirun_job) -> None:
    cfg = compose_cfg(["trainer=gpu"])
    assert train.job_devices(cfg, n_gpus=2) is None  # not a multirun
    multirun_job(1)
    assert train.job_devices(cfg, n_gpus=1) is None


def test_the_assigned_gpu_reaches_the_trainer(tmp_path, multirun_job, monkeypatch) -> None:
    from tests.runs import tiny_overrides

    multirun_job(1)
    monkeypatch.setattr(train.torch.cuda, "device_count", lambda: 2)
    seen = {}

    def fake_instantiate(node, **kwargs):
        seen.update(kwargs)
        raise RuntimeError("stop after the trainer's arguments")

    import promptlab.engine.run as steps

    monkeypatch.setattr(steps, "instantiate", fake_instantiate)
    cfg = compose_cfg([*tiny_overrides(tmp_path), "trainer.accelerator=gpu"])
    with pytest.raises(RuntimeError, match="stop after"):
        train.execute(cfg, tmp_path / "run")
    assert seen["devices"] == [1]
