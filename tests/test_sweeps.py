"""Sweeps end to end: multirun -> table files and figure, kill-and-resume, W&B offline runs per job."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from promptlab.results.aggregate import read_sweep
from tests.runs import run_cli, tiny_overrides

SWEEP = ["-m", "method=zeroshot,coop", "seed=1,2", "method.optim.epochs=1"]


def _common(root: Path) -> list[str]:
    return tiny_overrides(root)


def _records(sweep_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(sweep_dir.glob("*/metrics.json"))]


def _table_rows(sweep_dir: Path) -> list[dict]:
    with open(sweep_dir / "table_base2novel.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_multirun_writes_table_files_and_figure(tmp_path):
    proc = run_cli([*SWEEP, *_common(tmp_path), "sweep_name=t", "launcher=joblib"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = tmp_path / "outputs" / "sweeps" / "t"
    records = _records(sweep)
    assert len(records) == 4 and all(r["status"] == "complete" for r in records)
    assert len({r["run_dir"] for r in records}) == 4  # one dir per job, never shared
    for suffix in ("md", "csv", "tex", "png"):
        assert (sweep / f"table_base2novel.{suffix}").stat().st_size > 100
    rows = _table_rows(sweep)
    assert [(r["dataset"], r["method"], r["n_seeds"]) for r in rows] == [
        ("ToyWorld", "CLIP", "2"), ("ToyWorld", "CoOp", "2")]
    by_method = {r["method_display"] if "method_display" in r else r["method"]: r for r in rows}
    zs = [r for r in records if r["summary"]["method"] == "zeroshot"]
    mean_base = sum(r["metrics"]["base_acc"] for r in zs) / 2
    assert float(by_method["CLIP"]["base_mean"]) == pytest.approx(mean_base, abs=1e-3)
    assert "table_base2novel.png" in proc.stdout


@pytest.mark.slow
def test_killed_sweep_resumes_and_gives_the_same_table(tmp_path):
    common = _common(tmp_path)
    # The reference: the same sweep, uninterrupted.
    proc = run_cli([*SWEEP, *common, "sweep_name=full"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # The same sweep, killed once two jobs have finished.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    sweep = tmp_path / "outputs" / "sweeps" / "cut"
    child = subprocess.Popen([sys.executable, "-m", "promptlab.train", *SWEEP, *common, "sweep_name=cut"],
                             cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while len([r for r in _records(sweep) if r["status"] == "complete"]) < 2 and time.time() < deadline:
        if child.poll() is not None:
            break
        time.sleep(0.2)
    child.send_signal(signal.SIGKILL)
    child.wait()
    finished = {r["run_dir"]: r["timings"] for r in _records(sweep) if r["status"] == "complete"}
    assert 2 <= len(finished) < 4, "the sweep should have been cut after two of its four jobs"
    assert not (sweep / "table_base2novel.csv").exists()
    # The table lists every job it cannot show: the killed one (`running`) and those never started (`missing`,
    # from the sweep's multirun.yaml).
    cut = read_sweep(sweep)
    assert len(cut.records) + len(cut.skipped) == 4
    assert {s.status for s in cut.skipped} <= {"running", "missing"}

    proc = run_cli([*SWEEP, *common, "sweep_name=cut"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = _records(sweep)
    assert len(records) == 4 and all(r["status"] == "complete" for r in records)
    for record in records:  # finished jobs were skipped: their records are untouched
        if record["run_dir"] in finished:
            assert record["timings"] == finished[record["run_dir"]]
    assert proc.stdout.count("already holds a complete record") + proc.stderr.count("already holds a complete") >= 2

    def numbers(rows):
        return [{k: v for k, v in r.items()} for r in rows]

    assert numbers(_table_rows(sweep)) == numbers(_table_rows(tmp_path / "outputs" / "sweeps" / "full"))


def _logged_values(run_file: Path, key: str) -> list[float]:
    """Values logged under `key` in an offline W&B run file (protobuf records: the key, then a JSON value
    behind field tag 0x82 0x01 and a varint length). Enough to check what would be sent, without wandb's
    internal readers."""
    data, values, needle = run_file.read_bytes(), [], bytes([len(key)]) + key.encode() + b"\x82\x01"
    start = data.find(needle)
    while start >= 0:
        pos, length, shift = start + len(needle), 0, 0
        while True:
            byte = data[pos]
            length |= (byte & 0x7F) << shift
            pos, shift = pos + 1, shift + 7
            if byte < 0x80:
                break
        values.append(float(json.loads(data[pos : pos + length])))
        start = data.find(needle, pos)
    return values


@pytest.mark.slow
def test_wandb_offline_one_run_per_job_and_the_table_is_logged(tmp_path):
    proc = run_cli([*SWEEP, *_common(tmp_path), "sweep_name=wb", "logger=wandb"], cwd=tmp_path,
                   env={"WANDB_MODE": "offline", "WANDB_SILENT": "true"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = tmp_path / "outputs" / "sweeps" / "wb"
    run_ids = []
    for job_dir in sorted(p for p in sweep.iterdir() if (p / "metrics.json").exists()):
        runs = list((job_dir / "wandb").glob("offline-run-*/run-*.wandb"))
        assert len(runs) == 1, f"{job_dir.name}: expected its own W&B run, found {runs}"
        run_ids.append(runs[0].stem)
        record = json.loads((job_dir / "metrics.json").read_text())
        assert record["metrics"]["hm"] == pytest.approx(_logged_values(runs[0], "test/hm")[-1], abs=1e-6)
        payload = runs[0].read_bytes()
        assert f"method={record['summary']['method']}".encode() in payload  # run name from the overrides
        assert b'"wb"' in payload  # group = the sweep
        if record["summary"]["method"] == "coop":
            assert _logged_values(runs[0], "train/loss_epoch"), "training curve not logged"
    assert len(run_ids) == 4 and len(set(run_ids)) == 4  # separate runs, never shared
    aggregate = list((sweep / "wandb").glob("offline-run-*"))
    assert len(aggregate) == 1
    files = aggregate[0] / "files"
    tables = list(files.rglob("*.table.json"))
    assert tables, "the table was not logged as a wandb.Table"
    logged = json.loads(tables[0].read_text())
    assert len(logged["data"]) == 2 and "hm_mean" in logged["columns"]
    assert list(files.rglob("*.png")), "the figure was not logged"


def test_local_multirun_with_ddp_fails_fast_and_points_to_the_launchers(tmp_path):
    proc = run_cli(["-m", "seed=1,2", "trainer=ddp", "trainer.accelerator=cpu", *_common(tmp_path), "sweep_name=ddp"],
                   cwd=tmp_path)
    assert proc.returncode != 0
    assert "Lightning issue #11300" in proc.stderr and "launcher=joblib" in proc.stderr
    assert "launcher=submitit_slurm" in proc.stderr


def test_launcher_configs_compose(tmp_path):
    from hydra import compose, initialize_config_dir

    from tests.runs import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        slurm = compose(config_name="train", overrides=["launcher=submitit_slurm", "trainer=ddp"],
                        return_hydra_config=True)
        joblib = compose(config_name="train", overrides=["launcher=joblib"], return_hydra_config=True)
    assert "submitit" in slurm.hydra.launcher._target_ and slurm.hydra.launcher.tasks_per_node == 2
    assert "joblib" in joblib.hydra.launcher._target_ and joblib.hydra.launcher.n_jobs == 2


@pytest.mark.slow
def test_loader_workers_start_inside_joblib_jobs(tmp_path):
    """A job run by joblib's loky launcher inherits loky's default multiprocessing context, which cannot start a
    DataLoader's workers: the loaders name the platform's own start method, so image loaders with workers run."""
    proc = run_cli(["-m", "method=zeroshot,linear_probe", "loader.num_workers=1", "launcher=joblib",
                    *_common(tmp_path), "sweep_name=workers"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = _records(tmp_path / "outputs" / "sweeps" / "workers")
    assert len(records) == 2 and all(r["status"] == "complete" for r in records), [r.get("error") for r in records]
    assert all(1 in r["loader_workers"].values() for r in records)
