"""Helpers to compose the real configs and run jobs in-process or through the CLI, on tiny settings."""

from __future__ import annotations

import atexit
import contextlib
import functools
import importlib
import io
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
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
    return [*workspace_overrides(root), f"model.weights_file={random_checkpoint(root / 'random_clip.pt')}",
            *TINY_WORLD, "shots=2"]


def compose_cfg(overrides: list[str]) -> DictConfig:
    """The train config as promptlab-train composes it (schemas registered), without the range checks:
    `run()` performs those itself."""
    return compose(overrides, check=False)


CLI_ENV = {"OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


@dataclass
class CliResult:
    """What a command-line run left: its exit status and what it printed (as subprocess.CompletedProcess)."""

    returncode: int
    stdout: str
    stderr: str


def _exit_status(code: object) -> int:
    if code is None:
        return 0
    return code if isinstance(code, int) else 1


@contextlib.contextmanager
def _collect_exit_handlers(handlers: list[functools.partial]) -> Iterator[None]:
    """Collect what the code under it registers with `atexit` instead of leaving it to this process's exit."""
    saved = atexit.register, atexit.unregister

    def register(func, *args, **kwargs):
        handlers.append(functools.partial(func, *args, **kwargs))
        return func

    def unregister(func):
        handlers[:] = [h for h in handlers if h.func is not func]

    atexit.register, atexit.unregister = register, unregister
    try:
        yield
    finally:
        atexit.register, atexit.unregister = saved


def run_cli(args: list[str], cwd: Path, env: dict | None = None, module: str = "promptlab.train") -> CliResult:
    """`python -m <module> <args>` through the module's entry function in this process: the same Hydra
    composition, error reporting and exit status as the console script, without a fresh interpreter that
    imports torch and Lightning again (several seconds a call on 2 cores). Exit handlers registered during the
    call run at its end, as they would when the process exits; logging handlers, environment, working directory
    and Hydra's global state are restored afterwards. Runs that start processes of their own from the command
    line (DDP's launcher re-runs `sys.argv`) need `run_cli_subprocess`."""
    from hydra.core.global_hydra import GlobalHydra

    entry = importlib.import_module(module).main
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    saved_env = {key: os.environ.get(key) for key in {**CLI_ENV, **(env or {})}}
    saved_argv, saved_cwd = sys.argv, os.getcwd()
    out, err = io.StringIO(), io.StringIO()
    status = 0
    at_exit: list[functools.partial] = []
    try:
        os.environ.update({**CLI_ENV, **(env or {})})
        os.chdir(cwd)
        sys.argv = [module, *args]
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), _collect_exit_handlers(at_exit):
            try:
                entry()
            except SystemExit as stop:
                status = _exit_status(stop.code)
            for handler in reversed(at_exit):
                handler()
    finally:
        sys.argv = saved_argv
        os.chdir(saved_cwd)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        for handler in root.handlers[:]:
            if handler not in saved_handlers:
                root.removeHandler(handler)
                handler.close()
        for handler in saved_handlers:
            if handler not in root.handlers:
                root.addHandler(handler)
        root.setLevel(saved_level)
        GlobalHydra.instance().clear()
    return CliResult(status, out.getvalue(), err.getvalue())


def run_cli_subprocess(args: list[str], cwd: Path, timeout: int = 600, env: dict | None = None,
                       module: str = "promptlab.train") -> subprocess.CompletedProcess:
    """`python -m <module> <args>` in a fresh interpreter: for runs that start processes themselves (DDP),
    signals, and the slow tests that check the real command end to end."""
    full_env = {**os.environ, **CLI_ENV, **(env or {})}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=full_env)


def top1_metrics(metrics: dict) -> set[str]:
    """A record's metric names without the top-5 / mean-per-class extras (each protocol's micro top-1 metrics)."""
    from promptlab.results.table import EXTRA_ACCURACY_SUFFIXES

    return {k for k in metrics if not k.endswith(EXTRA_ACCURACY_SUFFIXES)}
