"""Helpers to compose the real configs and run jobs in-process or through the CLI, on tiny settings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from omegaconf import DictConfig

from promptlab.config import compose
from tests.conftest import make_random_clip

REPO = Path(__file__).resolve().parent.parent
CONF_DIR = REPO / "src" / "promptlab" / "conf"

# A small toy world: 18 base + 18 novel classes, few images, generated once per test session.
TINY_WORLD = [
    "dataset.generator.train_per_class=6",
    "dataset.generator.val_per_class=1",
    "dataset.generator.test_per_class=6",
]


def random_checkpoint(path: Path, seed: int = 0) -> Path:
    """An OpenAI-format state dict of a random tiny CLIP (plumbing tests that need no accuracy)."""
    if not path.exists():
        clip = make_random_clip(seed)
        torch.save({k: v.half() for k, v in clip.model.state_dict().items()}, path)
    return path


def workspace_overrides(root: Path) -> list[str]:
    return [
        f"paths.data_root={root / 'data'}",
        f"paths.output_dir={root / 'outputs'}",
        f"paths.cache_dir={root / 'cache'}",
        "logger=none",
        "trainer.enable_progress_bar=false",
        "num_threads=1",
    ]


def tiny_overrides(root: Path) -> list[str]:
    """A workspace under `root`, a random tiny CLIP, the small toy world and 2 shots: plumbing tests."""
    return [*workspace_overrides(root), f"model.checkpoint={random_checkpoint(root / 'random_clip.pt')}",
            *TINY_WORLD, "shots=2"]


def compose_cfg(overrides: list[str]) -> DictConfig:
    """The train config as promptlab-train composes it (schemas registered), without the range checks:
    `run()` performs those itself."""
    return compose(overrides, check=False)


def run_cli(args: list[str], cwd: Path, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1",
                "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "promptlab.train", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=full_env)


def top1_metrics(metrics: dict) -> set[str]:
    """A record's metric names without the top-5 / mean-per-class extras (each protocol's micro top-1 metrics)."""
    from promptlab.results.table import EXTRA_ACCURACY_SUFFIXES

    return {k for k in metrics if not k.endswith(EXTRA_ACCURACY_SUFFIXES)}
