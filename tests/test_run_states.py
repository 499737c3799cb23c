"""Run states reached by real signals: `running` at start (left behind by SIGKILL), `interrupted` on Ctrl-C or
SIGTERM with a one-line hint, listed by the table; the table still prints when the record cannot be written."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from promptlab.results.records import scan_records
from tests.runs import tiny_overrides


def _start(tmp_path: Path, run_dir: Path) -> subprocess.Popen:
    args = [*tiny_overrides(tmp_path), "method=coop", "method.optim.epochs=100000", f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "promptlab.train", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_training(proc: subprocess.Popen, run_dir: Path, timeout: float = 120) -> dict:
    """Until the `running` record exists and a few training steps have run (the CSV-free run logs nothing)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record_file = run_dir / "metrics.json"
        if record_file.is_file():
            record = json.loads(record_file.read_text())
            if record["status"] == "running":
                time.sleep(8)  # past model loading and feature caching, into the epochs
                return record
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    raise AssertionError("the job never wrote its running record")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_signal_leaves_an_interrupted_record_and_a_hint(tmp_path, sig) -> None:
    run_dir = tmp_path / "job"
    proc = _start(tmp_path, run_dir)
    running = _wait_for_training(proc, run_dir)
    assert running["launch"]["pid"] == proc.pid
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "interrupted; rerun the same command to resume" in stderr
    assert "Traceback" not in stderr
    record = json.loads((run_dir / "metrics.json").read_text())
    assert record["status"] == "interrupted"
    skipped = scan_records([tmp_path]).skipped
    assert [s.status for s in skipped] == ["interrupted"]


@pytest.mark.slow
def test_sigkill_leaves_a_running_record_that_the_table_lists(tmp_path) -> None:
    run_dir = tmp_path / "job"
    proc = _start(tmp_path, run_dir)
    _wait_for_training(proc, run_dir)
    proc.kill()
    proc.communicate(timeout=60)
    skipped = scan_records([tmp_path]).skipped
    assert [s.status for s in skipped] == ["running"]
    assert f"pid {proc.pid}" in skipped[0].reason


def test_the_result_prints_when_the_record_cannot_be_written(tmp_path, monkeypatch, capsys) -> None:
    import promptlab.train as train
    from tests.runs import compose_cfg

    real_write = train.write_record

    def failing_write(run_dir, record):
        if record["status"] == "complete":
            raise OSError(28, "No space left on device")
        return real_write(run_dir, record)

    monkeypatch.setattr(train, "write_record", failing_write)
    record = train.run(compose_cfg([*tiny_overrides(tmp_path), "run_name=full_disk"]))
    assert record["status"] == "complete"
    assert "HM" in capsys.readouterr().out  # the run's table was printed all the same


FAKE_SUBMITIT = """
import signal, sys
from pathlib import Path

marker = Path(sys.argv[1])

def requeue_and_exit(signum, frame):  # what submitit's handler does: requeue the job, then sys.exit(-1)
    marker.write_text("requeued")
    sys.exit(-1)

signal.signal(signal.SIGUSR2, requeue_and_exit)
sys.argv = ["promptlab-train", *sys.argv[2:]]
from promptlab.train import main
main()
"""


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(signal, "SIGUSR2"), reason="no SIGUSR2 on this platform")
def test_slurm_preemption_signal_reaches_submitit_and_leaves_a_resumable_job(tmp_path) -> None:
    run_dir, marker = tmp_path / "job", tmp_path / "requeued"
    script = tmp_path / "fake_submitit.py"
    script.write_text(FAKE_SUBMITIT)
    args = [*tiny_overrides(tmp_path), "method=coop", "method.optim.epochs=100000", "checkpoint.every_n_epochs=1",
            f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, str(script), str(marker), *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_training(proc, run_dir)
    proc.send_signal(signal.SIGUSR2)
    _, stderr = proc.communicate(timeout=60)
    assert marker.read_text() == "requeued"  # submitit's handler ran: the job was requeued
    assert proc.returncode == 255, stderr[-2000:]  # and its exit code is submitit's, not promptlab's 130
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "interrupted"
    assert (run_dir / "last.ckpt").is_file()  # what the requeued job resumes from
