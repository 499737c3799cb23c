"""User errors (one base class, reported as one paragraph by console scripts) and atomic writes."""

from __future__ import annotations

import json
import os
import pickle
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import promptlab.io as pio
from promptlab import errors
from promptlab.cli_errors import exit_on_user_error, format_user_error, user_errors_in_hydra_job
from promptlab.errors import PromptlabError

USER_ERRORS = [
    errors.AnalysisError, errors.ClipLoadError, errors.ConfigError, errors.DatasetError, errors.MissingPathError,
    errors.NoCompleteRecordsError, errors.NonFiniteLossError, errors.PathConflictError, errors.RecordError,
]


# --------------------------------------------------------------------------- the error classes
@pytest.mark.parametrize("cls", USER_ERRORS, ids=lambda c: c.__name__)
def test_every_user_error_is_a_promptlab_error(cls: type[Exception]) -> None:
    assert issubclass(cls, PromptlabError)


def test_user_errors_keep_the_builtin_bases_callers_catch() -> None:
    assert issubclass(errors.ConfigError, ValueError) and issubclass(errors.RecordError, ValueError)
    assert issubclass(errors.AnalysisError, ValueError)
    assert issubclass(errors.ClipLoadError, RuntimeError) and issubclass(errors.NonFiniteLossError, RuntimeError)
    assert issubclass(errors.NoCompleteRecordsError, RuntimeError)
    assert issubclass(errors.MissingPathError, FileNotFoundError)
    assert issubclass(errors.PathConflictError, FileExistsError)
    assert str(errors.MissingPathError("no such dir /x")) == "no such dir /x"


def test_old_homes_re_export_the_same_classes() -> None:
    from promptlab.analysis.drift import AnalysisError
    from promptlab.data.errors import DatasetError
    from promptlab.models import ClipLoadError
    from promptlab.models.loading import ClipLoadError as LoadingClipLoadError
    from promptlab.results.records import RecordError

    assert DatasetError is errors.DatasetError and RecordError is errors.RecordError
    assert ClipLoadError is LoadingClipLoadError is errors.ClipLoadError
    assert AnalysisError is errors.AnalysisError


def test_no_complete_records_error_message_and_pickling() -> None:
    from promptlab.results.records import SkippedRun

    skipped = [SkippedRun(Path("/sweep/0/metrics.json"), "failed", "DatasetError: gone")]
    err = errors.NoCompleteRecordsError([Path("/sweep")], skipped)
    assert str(err).startswith("no complete run record (metrics.json with status 'complete') under /sweep.")
    assert "Found 1 failed or incomplete run(s)" in str(err) and err.skipped == skipped
    # Sweep launchers (joblib, submitit) send exceptions back pickled.
    again = pickle.loads(pickle.dumps(err))
    assert type(again) is errors.NoCompleteRecordsError and str(again) == str(err) and again.skipped == skipped
    assert "Pass the sweep directory" in str(errors.NoCompleteRecordsError(["/empty"], []))


def test_user_facing_checks_raise_user_errors(tmp_path: Path) -> None:
    from promptlab.data.fewshot import sample_few_shot
    from promptlab.models.loading import load_clip
    from promptlab.results.records import scan_records
    from promptlab.toy import world as tw

    with pytest.raises(errors.ConfigError, match="shots must be"):
        sample_few_shot([], shots=0, seed=1)
    with pytest.raises(errors.ConfigError, match="spurious"):
        tw.ToyWorldSpec(spurious=2)
    with pytest.raises(errors.MissingPathError, match="does not exist"):
        scan_records([tmp_path / "missing"])
    (tmp_path / "world").write_text("not a folder")
    with pytest.raises(errors.PathConflictError, match="not a directory"):
        tw.ensure_toyworld(tmp_path / "world", tw.ToyWorldSpec())
    (tmp_path / "garbage.pt").write_text("not a checkpoint")
    with pytest.raises(errors.ClipLoadError, match=r"garbage.pt cannot be read as a PyTorch checkpoint"):
        load_clip(weights_file=str(tmp_path / "garbage.pt"))


# --------------------------------------------------------------------------- reporting them
def _user_error() -> errors.DatasetError:
    return errors.DatasetError("toy: images not found: expected /data/toy.\n\nExpected layout:\n  toy/\n    images/\n")


def test_exit_on_user_error_prints_one_paragraph_and_exits_1(monkeypatch, capsys) -> None:
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(SystemExit) as info, exit_on_user_error("promptlab-x"):
        raise _user_error()
    assert info.value.code == 1
    err = capsys.readouterr().err
    # Blank lines dropped (one paragraph), the layout's indentation kept.
    assert err == ("promptlab-x: error: toy: images not found: expected /data/toy.\n"
                   "Expected layout:\n  toy/\n    images/\n")
    assert "Traceback" not in err


def test_exit_on_user_error_as_decorator(monkeypatch, capsys) -> None:
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)

    @exit_on_user_error("promptlab-x")
    def main(fail: bool) -> int:
        if fail:
            raise errors.ConfigError("seed=-1; expected a count >= 0.")
        return 0

    assert main(False) == 0
    for _ in range(2):  # the decorator works on every call, not only the first
        with pytest.raises(SystemExit, match="1"):
            main(True)
        assert capsys.readouterr().err == "promptlab-x: error: seed=-1; expected a count >= 0.\n"


def test_full_error_reraises_and_bugs_propagate(monkeypatch, capsys) -> None:
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(errors.DatasetError), exit_on_user_error("promptlab-x"):
        raise _user_error()
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")
    with pytest.raises(KeyError, match="oops"), exit_on_user_error("promptlab-x"):
        raise KeyError("oops")
    with pytest.raises(KeyError), user_errors_in_hydra_job("promptlab-x"):
        raise KeyError("oops")
    assert capsys.readouterr().err == ""


def test_hydra_helper_reraises_outside_a_hydra_job(monkeypatch) -> None:
    # Tests and scripts call task functions with a config directly: the error must reach them unchanged.
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(errors.DatasetError), user_errors_in_hydra_job("promptlab-x"):
        raise _user_error()


def test_format_user_error_falls_back_to_the_class_name() -> None:
    assert format_user_error("p", errors.ConfigError()) == "p: error: ConfigError"


_HYDRA_APP = """
import hydra
from promptlab.cli_errors import user_errors_in_hydra_job
from promptlab.errors import DatasetError

@hydra.main(version_base="1.3", config_path=None, config_name=None)
def main(cfg):
    with user_errors_in_hydra_job("promptlab-app"):
        if cfg.get("kind") == "user":
            raise DatasetError("dataset foo not found.\\n\\nExpected layout:\\n  foo/")
        if cfg.get("kind") == "bug":
            raise KeyError("oops")
        print("ran", cfg.get("kind"))

main()
"""


def _run_app(tmp_path: Path, *args: str, full_error: bool = False) -> subprocess.CompletedProcess[str]:
    app = tmp_path / "app.py"
    app.write_text(_HYDRA_APP)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1" if full_error else "0"}
    return subprocess.run([sys.executable, str(app), *args, f"hydra.run.dir={tmp_path / 'run'}",
                           f"hydra.sweep.dir={tmp_path / 'sweep'}"], capture_output=True, text=True, env=env,
                          timeout=120)


def test_hydra_app_reports_a_user_error_as_one_paragraph(tmp_path: Path) -> None:
    done = _run_app(tmp_path, "+kind=user")
    assert done.returncode == 1
    assert done.stderr == "promptlab-app: error: dataset foo not found.\nExpected layout:\n  foo/\n"
    full = _run_app(tmp_path, "+kind=user", full_error=True)
    assert full.returncode == 1 and "Traceback" in full.stderr and "DatasetError" in full.stderr
    bug = _run_app(tmp_path, "+kind=bug")
    assert bug.returncode == 1 and "Traceback" in bug.stderr and "KeyError: 'oops'" in bug.stderr


def test_hydra_multirun_runs_every_job_and_reports_the_user_error(tmp_path: Path) -> None:
    done = _run_app(tmp_path, "-m", "+kind=user,ok")
    assert done.returncode == 1
    assert "ran ok" in done.stdout  # the job after the failing one still ran
    assert "promptlab-app: error: dataset foo not found." in done.stderr and "Traceback" not in done.stderr


# --------------------------------------------------------------------------- console scripts
def test_promptlab_analyze_on_a_missing_folder_prints_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    from promptlab.analysis import cli as analyze_cli

    missing = tmp_path / "nowhere"
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    assert analyze_cli.main([str(missing)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"promptlab-analyze: error: {missing} does not exist")
    assert err.count("\n") == 1 and "Traceback" not in err


def test_promptlab_toyworld_reports_a_conflicting_path(tmp_path: Path, monkeypatch, capsys) -> None:
    from promptlab.toy import world as tw

    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "something.txt").write_text("x")
    with pytest.raises(SystemExit) as info:
        tw.main(["--out", str(tmp_path / "taken")])
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("promptlab-toyworld: error: ") and "not a toy world" in err and "Traceback" not in err


# --------------------------------------------------------------------------- atomic writes
@pytest.fixture
def umask() -> Iterator[None]:
    old = os.umask(0o022)
    os.umask(old)
    yield
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_current_umask_reads_without_changing_it(umask) -> None:
    os.umask(0o027)
    assert pio.current_umask() == 0o027
    assert os.umask(0o027) == 0o027


@pytest.mark.parametrize(("mask", "file_mode", "dir_mode"), [(0o022, 0o644, 0o755), (0o002, 0o664, 0o775)])
def test_modes_follow_the_umask(tmp_path: Path, umask, mask: int, file_mode: int, dir_mode: int) -> None:
    os.umask(mask)
    written = [
        pio.atomic_write_bytes(tmp_path / "new" / "a.bin", b"x"),
        pio.atomic_write_text(tmp_path / "b.txt", "x"),
        pio.atomic_write_json(tmp_path / "c.json", {"a": 1}),
        pio.atomic_torch_save({"t": torch.zeros(2)}, tmp_path / "d.pt"),
    ]
    assert [_mode(p) for p in written] == [file_mode] * 4
    assert _mode(tmp_path / "new") == dir_mode
    shared = pio.make_shared_tempdir(tmp_path, prefix=".tmp-")
    assert shared.parent == tmp_path and _mode(shared) == dir_mode


def test_toy_world_folder_follows_the_umask(tmp_path: Path, umask) -> None:
    from promptlab.toy import world as tw

    os.umask(0o002)
    world = tw.ensure_toyworld(tmp_path / "w", tw.ToyWorldSpec(train_per_class=0, val_per_class=0, test_per_class=1))
    assert _mode(world) == 0o775  # tempfile.mkdtemp would have left 0700
    assert _mode(world / tw.SPEC_FILE) == 0o664


def test_same_content_gives_same_bytes(tmp_path: Path) -> None:
    obj = {"b": 2, "a": [1.5, None], "path": Path("/x/y")}
    one, two = pio.atomic_write_json(tmp_path / "one.json", obj), pio.atomic_write_json(tmp_path / "two.json", obj)
    assert one.read_bytes() == two.read_bytes()
    # Insertion order, indent 2, a trailing newline, paths as strings.
    assert one.read_text() == '{\n  "b": 2,\n  "a": [\n    1.5,\n    null\n  ],\n  "path": "/x/y"\n}\n'

    state = {"weight": torch.randn(3, 4, generator=torch.Generator().manual_seed(0)), "step": torch.tensor(7)}
    first = pio.atomic_torch_save(state, tmp_path / "one" / "prompt.pt")
    second = pio.atomic_torch_save({k: v.clone() for k, v in state.items()}, tmp_path / "two" / "prompt.pt")
    # Same name, same bytes (the temporary file's name never reaches the archive), and the bytes of a plain
    # torch.save to that name.
    assert first.read_bytes() == second.read_bytes()
    torch.save(state, tmp_path / "prompt.pt")
    assert (tmp_path / "prompt.pt").read_bytes() == first.read_bytes()
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".")]  # no staging left behind
    loaded = torch.load(second, weights_only=True)
    assert torch.equal(loaded["weight"], state["weight"]) and int(loaded["step"]) == 7


def test_json_converts_paths_and_numpy_and_torch_scalars(tmp_path: Path) -> None:
    import numpy as np

    path = pio.atomic_write_json(tmp_path / "s.json", {"n": np.float32(0.5), "t": torch.tensor(3), "i": np.int64(2)})
    assert json.loads(path.read_text()) == {"n": 0.5, "t": 3, "i": 2}


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_unencodable_object_leaves_the_old_file(tmp_path: Path) -> None:
    target = pio.atomic_write_json(tmp_path / "r.json", {"ok": 1})
    before = target.read_bytes()
    with pytest.raises(ValueError):
        pio.atomic_write_json(target, {"nan": float("nan")}, allow_nan=False)
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        pio.atomic_torch_save({"f": lambda: None}, target)  # a lambda cannot be pickled
    assert target.read_bytes() == before and _leftovers(tmp_path) == []


def test_failed_replace_leaves_the_old_file_and_no_temp(tmp_path: Path, monkeypatch) -> None:
    target = pio.atomic_write_text(tmp_path / "r.txt", "old\n")

    def broken_replace(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pio.os, "replace", broken_replace)
    with pytest.raises(OSError, match="No space left"):
        pio.atomic_write_text(target, "new\n")
    with pytest.raises(OSError, match="No space left"):
        pio.atomic_torch_save({"t": torch.ones(1)}, target)
    assert target.read_text() == "old\n" and _leftovers(tmp_path) == []


def test_failed_write_leaves_the_old_file_and_no_temp(tmp_path: Path, monkeypatch) -> None:
    target = pio.atomic_write_bytes(tmp_path / "r.bin", b"old")

    def broken_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(pio.os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="Input/output"):
        pio.atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old" and _leftovers(tmp_path) == []


def test_write_record_keeps_its_behaviour(tmp_path: Path, umask) -> None:
    from promptlab.results.records import make_record, read_record, write_record

    os.umask(0o022)
    record = make_record(tmp_path / "run", status="complete", summary={"seed": 1}, metrics={"acc": 50.0})
    path = write_record(tmp_path / "run", record)
    assert path == tmp_path / "run" / "metrics.json" and _mode(path) == 0o644
    assert read_record(path) == json.loads(json.dumps(record))
    assert path.read_text() == json.dumps(record, indent=2) + "\n"
    assert _leftovers(tmp_path / "run") == []


def test_feature_cache_alias_writes_identical_files(tmp_path: Path) -> None:
    from promptlab.engine.features import save_atomic

    payload = {"features": torch.arange(6.0).view(2, 3), "label": "test"}
    save_atomic(payload, tmp_path / "a" / "k1.pt")
    save_atomic(payload, tmp_path / "b" / "k1.pt")
    assert (tmp_path / "a" / "k1.pt").read_bytes() == (tmp_path / "b" / "k1.pt").read_bytes()
