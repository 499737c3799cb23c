"""Project habits that are easy to let drift: one version, one ruff."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

import promptlab

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the backport, where installed
    tomllib = pytest.importorskip("tomli")

REPO = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def test_package_version_is_the_pyproject_version() -> None:
    # A mismatch after a version bump means the environment is stale: `make setup` reinstalls it.
    assert promptlab.__version__ == _pyproject()["project"]["version"]


def _ruff_pin(requirement: str) -> str:
    match = re.fullmatch(r"ruff==([0-9][0-9a-z.]*)", requirement.strip())
    assert match, f"{requirement!r}: ruff is pinned exactly (ruff==X.Y.Z)"
    return match.group(1)


def test_ruff_is_one_pinned_version_in_dev_pre_commit_and_ci() -> None:
    dev = [r for r in _pyproject()["project"]["optional-dependencies"]["dev"] if re.match(r"ruff\b", r)]
    assert len(dev) == 1
    pinned = _ruff_pin(dev[0])

    hooks = yaml.safe_load((REPO / ".pre-commit-config.yaml").read_text(encoding="utf-8"))
    ruff_hooks = [hook for repo in hooks["repos"] for hook in repo["hooks"] if hook["id"] == "ruff"]
    assert len(ruff_hooks) == 1
    assert [_ruff_pin(dep) for dep in ruff_hooks[0]["additional_dependencies"]] == [pinned]

    workflow = yaml.safe_load((REPO / ".github" / "workflows" / "ci.yml").read_text(encoding="utf-8"))
    installs = [step["run"] for step in workflow["jobs"]["lint"]["steps"] if "pip install" in step.get("run", "")]
    ci_pins = re.findall(r"ruff==([0-9][0-9a-z.]*)", " ".join(installs))
    assert ci_pins == [pinned], installs
