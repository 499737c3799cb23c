"""Portability and CI plumbing: no POSIX-only import on any import path, the workflow file is sound."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]

MASKED = """
import importlib, pkgutil, sys
for name in ("fcntl", "termios", "grp", "pwd", "resource"):
    sys.modules[name] = None  # as on Windows: importing them raises ImportError
import promptlab
failed = []
for info in pkgutil.walk_packages(promptlab.__path__, "promptlab."):
    if not info.name.startswith("promptlab.conf"):
        try:
            importlib.import_module(info.name)
        except ImportError as err:
            failed.append(f"{info.name}: {err}")
print("FAILED " + "; ".join(failed) if failed else "OK")
"""


@pytest.mark.slow  # imports every module in a fresh interpreter (about 15 s)
def test_every_module_imports_without_posix_only_modules() -> None:
    proc = subprocess.run([sys.executable, "-c", MASKED], capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"})
    assert proc.stdout.strip().splitlines()[-1] == "OK", proc.stdout + proc.stderr


def _make_targets() -> set[str]:
    text = (REPO / "Makefile").read_text(encoding="utf-8")
    return set(re.findall(r"^([a-z][a-z-]*):", text, flags=re.MULTILINE))


def test_workflow_parses_and_runs_real_targets() -> None:
    workflow = yaml.safe_load((REPO / ".github" / "workflows" / "ci.yml").read_text(encoding="utf-8"))
    jobs = workflow["jobs"]
    assert {"lint", "test", "slow"} <= set(jobs)
    matrix = jobs["test"]["strategy"]["matrix"]
    assert set(matrix["os"]) == {"ubuntu-latest", "macos-latest", "windows-latest"}
    assert matrix["python"] == ["3.10", "3.11", "3.12", "3.13"]
    targets = _make_targets()
    runs = [step["run"] for job in jobs.values() for step in job["steps"] if "run" in step]
    called = {m for run in runs for m in re.findall(r"\bmake ([a-z][a-z-]*)", run)}
    assert called and called <= targets, called - targets
    # The lint job runs what `make lint` runs (ruff over src and tests).
    assert any("ruff check src tests" in run for run in runs)


def test_ci_script_lints_and_runs_both_suites() -> None:
    script = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    steps = re.findall(r"^make ([a-z-]+)", script, flags=re.MULTILINE)
    assert steps == ["test", "lint", "test-slow"]
    assert set(steps) <= _make_targets()
