"""The built wheel is a working install: it carries the Hydra configs and the tiny CLIP, and its console
scripts run from a folder outside the checkout, in a fresh virtual environment.

Installing torch & co. into a fresh environment would take minutes, so the fresh venv borrows the
third-party packages of the interpreter running the tests through a `.pth` file that appends that
interpreter's site-packages to `sys.path`. A directory added by a `.pth` file is not itself a site
directory: the `.pth` files inside it (among them the checkout's editable install, which puts `src/`
on the path) are not processed. `test_installed_package_is_the_wheel` checks that this holds, so the
console scripts below really import the installed wheel and not the checkout.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.runs import TINY_WORLD

pytestmark = pytest.mark.slow  # builds a wheel, makes a venv, runs the installed CLI (~15-25 s)

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "src" / "promptlab"
CONSOLE_SCRIPTS = ("promptlab-train", "promptlab-table")


def _clean_env() -> dict[str, str]:
    """The environment of a user's shell: nothing that points Python at the checkout or another venv."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")}
    env.update(OMP_NUM_THREADS="1", WANDB_MODE="disabled", HF_HUB_OFFLINE="1", PYTHONNOUSERSITE="1",
               PIP_DISABLE_PIP_VERSION_CHECK="1", PYTHONUNBUFFERED="1")
    return env


def _run(args: list[str | Path], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(a) for a in args], cwd=cwd, env=_clean_env(), capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, (
        f"{' '.join(map(str, args))} failed (exit {proc.returncode}) in {cwd}:\n"
        f"--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}"
    )
    return proc


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel of the checkout, built from a copy so that no build/ or egg-info lands in the tree."""
    pytest.importorskip("setuptools", minversion="70.1", reason="the build backend (pyproject.toml) is missing")
    root = tmp_path_factory.mktemp("build")
    source = root / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    shutil.copytree(REPO / "src", source / "src",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build"))
    out = root / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
          "-w", out, source], cwd=root)
    wheels = sorted(out.glob("promptlab-*.whl"))
    assert len(wheels) == 1, f"expected one promptlab wheel in {out}, found {wheels}"
    return wheels[0]


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A fresh venv with the wheel installed (no dependencies) and the test interpreter's packages visible."""
    root = tmp_path_factory.mktemp("venv") / "env"
    _run([sys.executable, "-m", "venv", "--without-pip", root], cwd=root.parent)
    python = root / "bin" / "python"
    # pip of the test interpreter installs into the fresh venv (pip >= 22.3); the .pth comes afterwards so
    # that pip sees an empty environment.
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q", wheel],
         cwd=root.parent)
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     cwd=root.parent).stdout.strip())
    (site / "_borrowed_packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return root


def test_wheel_carries_configs_and_assets(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {"promptlab/conf/train.yaml", "promptlab/toy/assets/toyclip.pt"}
    expected |= {f"promptlab/{p.relative_to(PACKAGE).as_posix()}" for p in (PACKAGE / "conf").rglob("*.yaml")}
    # The published numbers `promptlab-table --published` compares with (promptlab/results/published.py).
    published = (PACKAGE / "results" / "published").glob("*.csv")
    expected |= {f"promptlab/{p.relative_to(PACKAGE).as_posix()}" for p in published}
    expected |= {f"promptlab/{p.relative_to(PACKAGE).as_posix()}" for p in PACKAGE.rglob("*.py")
                 if "__pycache__" not in p.parts}
    missing = sorted(expected - names)
    assert not missing, (
        f"the wheel {wheel.name} lacks {len(missing)} file(s) of the source tree: {missing[:20]}. "
        "Add their pattern to [tool.setuptools.package-data] in pyproject.toml (or make the folder a package)."
    )
    asset = zipfile.ZipFile(wheel).getinfo("promptlab/toy/assets/toyclip.pt")
    assert asset.file_size > 1_000_000, "toyclip.pt in the wheel is not the checkpoint (a Git LFS pointer?)"


def test_installed_package_is_the_wheel(venv):
    probe = ("import json, sys, promptlab; print(json.dumps({'file': promptlab.__file__, 'path': sys.path, "
             "'editable': sorted(m for m in sys.modules if 'editable' in m)}))")
    info = json.loads(_run([venv / "bin" / "python", "-c", probe], cwd=venv.parent).stdout)
    assert Path(info["file"]).resolve().is_relative_to(venv.resolve()), (
        f"promptlab imports from {info['file']}, not from the fresh venv {venv}")
    src = str(REPO / "src")
    assert not any(p == src or p.startswith(src + os.sep) for p in info["path"]), (
        f"the checkout's src/ is on sys.path of the fresh venv (an editable-install .pth was processed): "
        f"{info['path']}")
    assert not info["editable"], f"an editable-install finder was imported: {info['editable']}"


def test_installed_console_scripts_exist(venv):
    for name in CONSOLE_SCRIPTS:
        assert (venv / "bin" / name).is_file(), f"{name} is not installed by the wheel ([project.scripts])"


def test_installed_table_help(venv, tmp_path):
    proc = _run([venv / "bin" / "promptlab-table", "--help"], cwd=tmp_path)
    assert "usage" in proc.stdout.lower()


def test_installed_train_runs_outside_checkout(venv, tmp_path):
    """A zero-shot run through the installed `promptlab-train`: configs resolved from the installed package
    (Hydra's `config_path`), the built-in tiny CLIP loaded from the installed assets."""
    work = tmp_path / "cwd"
    work.mkdir()
    out = tmp_path / "out"
    _run([venv / "bin" / "promptlab-train", "experiment=smoke", "method=zeroshot", f"paths.output_dir={out}",
          f"paths.data_root={tmp_path / 'data'}", f"paths.cache_dir={tmp_path / 'cache'}", *TINY_WORLD, "shots=2"],
         cwd=work)
    records = sorted(out.rglob("metrics.json"))
    assert len(records) == 1, f"expected one run record under {out}, found {records}"
    record = json.loads(records[0].read_text())
    assert record["status"] == "complete", record.get("error")
    # The committed tiny CLIP is far above chance (1/18) on the toy world; a random or missing one is not.
    assert record["metrics"]["base_acc"] > 30, record["metrics"]
    assert not any(work.iterdir()), f"the run wrote into its working directory: {list(work.iterdir())}"
