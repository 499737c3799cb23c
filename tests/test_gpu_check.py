"""The prepared GPU check runs end to end (on the CPU with --smoke) and writes its JSON and markdown."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_gpu_check_smoke_writes_its_report(tmp_path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "promptlab.gpu_check", "--smoke", "--epochs", "1",
                           "--methods", "zeroshot", "coop", "--out-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert set(result["steps"]) == {"train+eval zeroshot", "train+eval coop", "bench"}
    assert all(step["status"] == "complete" for step in result["steps"].values())
    assert result["steps"]["train+eval coop"]["epochs"] == 1
    markdown = (tmp_path / "gpu_check.md").read_text()
    assert "smoke run on the CPU" in markdown and "| train+eval coop | complete |" in markdown
