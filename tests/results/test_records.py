"""Run records: atomic writing, reading, resume checks, failed records and the config hash."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import promptlab
from promptlab.launch import LAUNCH_KEYS
from promptlab.results import records
from promptlab.results.metrics import accuracy_percent, harmonic_mean
from promptlab.results.records import (
    RECORD_FILENAME,
    RecordError,
    config_hash,
    error_record,
    find_records,
    is_complete,
    make_record,
    read_record,
    scan_records,
    write_record,
)

CFG = {
    "seed": 1,
    "method": {"name": "coop", "n_ctx": 4, "lr": 0.002},
    "dataset": {"name": "toyworld", "root": "/data"},
    "paths": {"output_dir": "/runs/2025-01-01/12-00-00/0", "data_dir": "/data"},
    "logger": {"name": "wandb", "project": "p"},
}


def _record(run_dir: Path, status: str = "complete", cfg_hash: str | None = "abc") -> dict:
    return make_record(
        run_dir,
        status=status,
        summary={"protocol": "fewshot", "method": "coop", "dataset": "toyworld", "seed": 1},
        config_hash=cfg_hash,
        overrides=["method=coop", "seed=1"],
        config=CFG,
        metrics={"acc": 71.25},
        evaluations=[{"name": "all", "dataset": "toyworld", "subset": "all", "acc": 71.25,
                      "n_correct": 57, "n_images": 80, "n_classes": 36}],
        timings={"total_s": 1.5},
    )


def test_metrics_formulas() -> None:
    assert harmonic_mean(80.0, 60.0) == pytest.approx(2 * 80 * 60 / 140)
    assert harmonic_mean(0.0, 0.0) == 0.0
    assert harmonic_mean(50.0, 0.0) == 0.0
    assert accuracy_percent(57, 80) == pytest.approx(71.25)
    with pytest.raises(ValueError, match="n_images=0"):
        accuracy_percent(0, 0)
    with pytest.raises(ValueError, match="non-negative"):
        harmonic_mean(-1.0, 5.0)


def test_write_is_atomic_and_round_trips(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    record = _record(run_dir)
    path = write_record(run_dir, record)
    assert path == run_dir / RECORD_FILENAME
    assert sorted(os.listdir(run_dir)) == [RECORD_FILENAME]  # no temporary file left behind
    assert read_record(run_dir) == json.loads(json.dumps(record))
    assert read_record(path)["metrics"] == {"acc": 71.25}
    assert set(record) >= {"schema", "status", "run_dir", "config_hash", "summary", "overrides", "config",
                           "metrics", "evaluations", "timings", "versions", "notes", "error"}
    assert record["versions"]["promptlab"] == promptlab.__version__

    # Overwriting replaces the whole file; the old content never shows through.
    record["metrics"] = {"acc": 12.5}
    write_record(run_dir, record)
    assert read_record(run_dir)["metrics"] == {"acc": 12.5}
    assert sorted(os.listdir(run_dir)) == [RECORD_FILENAME]


def test_failed_serialisation_leaves_old_record_and_no_temp(tmp_path: Path, monkeypatch) -> None:
    write_record(tmp_path, _record(tmp_path))
    before = (tmp_path / RECORD_FILENAME).read_text()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(records.os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        write_record(tmp_path, {**_record(tmp_path), "metrics": {"acc": 1.0}})
    assert (tmp_path / RECORD_FILENAME).read_text() == before
    assert sorted(os.listdir(tmp_path)) == [RECORD_FILENAME]


def test_write_rejects_unknown_status(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'done'"):
        write_record(tmp_path, {**_record(tmp_path), "status": "done"})
    assert not (tmp_path / RECORD_FILENAME).exists()


def test_read_missing_and_broken(tmp_path: Path) -> None:
    assert read_record(tmp_path) is None
    (tmp_path / RECORD_FILENAME).write_text('{"schema": 1, "status": "compl')
    with pytest.raises(RecordError, match="not valid JSON"):
        read_record(tmp_path)
    (tmp_path / RECORD_FILENAME).write_text(json.dumps({**_record(tmp_path), "schema": 7}))
    with pytest.raises(RecordError, match="schema 7"):
        read_record(tmp_path)


def test_is_complete_needs_complete_status_and_same_hash(tmp_path: Path) -> None:
    assert not is_complete(tmp_path, "abc")  # no record yet
    write_record(tmp_path, _record(tmp_path, status="running", cfg_hash="abc"))
    assert not is_complete(tmp_path, "abc")
    write_record(tmp_path, _record(tmp_path, status="complete", cfg_hash="abc"))
    assert is_complete(tmp_path, "abc")
    assert not is_complete(tmp_path, "def")
    (tmp_path / RECORD_FILENAME).write_text("garbage")
    assert not is_complete(tmp_path, "abc")


def test_error_record_and_failed_detection(tmp_path: Path) -> None:
    try:
        raise RuntimeError("loss is NaN at step 3")
    except RuntimeError as exc:
        failed = error_record(tmp_path / "b", exc, summary={"protocol": "fewshot", "seed": 2},
                              config_hash="h", metrics={"base_acc": 50.0})
    assert failed["status"] == "failed"
    assert failed["error"]["type"] == "RuntimeError"
    assert failed["error"]["message"] == "loss is NaN at step 3"
    assert "test_error_record_and_failed_detection" in failed["error"]["traceback"]
    assert failed["metrics"] == {"base_acc": 50.0}
    write_record(tmp_path / "b", failed)
    write_record(tmp_path / "a", _record(tmp_path / "a"))
    write_record(tmp_path / "c", _record(tmp_path / "c", status="running"))
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / RECORD_FILENAME).write_text("[1, 2]")

    scan = scan_records([tmp_path, tmp_path / "a"])  # overlapping paths: each file read once
    assert [Path(r["run_dir"]).name for r in scan.complete] == ["a"]
    assert [(s.path.parent.name, s.status) for s in scan.skipped] == [
        ("b", "failed"), ("c", "running"), ("d", "unreadable")]
    assert "RuntimeError: loss is NaN at step 3" in str(scan.skipped[0])
    assert [r["run_dir"] for r in find_records([tmp_path / "a" / RECORD_FILENAME])] == [str(tmp_path / "a")]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        scan_records([tmp_path / "nope"])


def test_config_hash_is_stable_and_drops_excluded_keys() -> None:
    reordered = {k: CFG[k] for k in reversed(list(CFG))}
    reordered["method"] = {"lr": 0.002, "n_ctx": 4, "name": "coop"}
    assert config_hash(CFG) == config_hash(reordered)
    assert len(config_hash(CFG)) == 64
    # Output locations and loggers do not change what a run computes ...
    moved = json.loads(json.dumps(CFG))
    moved["paths"]["output_dir"] = "/elsewhere/3"
    moved["logger"] = {"name": "csv"}
    moved["hydra"] = {"run": {"dir": "x"}}
    assert config_hash(moved) == config_hash(CFG)
    # ... but anything else does, including keys under a partly excluded node.
    for path, value in ((("seed",), 2), (("method", "n_ctx"), 16), (("paths", "data_dir"), "/d2")):
        changed = json.loads(json.dumps(CFG))
        node = changed
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        assert config_hash(changed) != config_hash(CFG), path
    assert {"hydra", "logger", "paths.output_dir"} <= set(LAUNCH_KEYS)
    assert config_hash(CFG, exclude=()) != config_hash(CFG)
    assert CFG["paths"]["output_dir"].startswith("/runs")  # hashing did not mutate the input


def test_config_hash_accepts_omegaconf() -> None:
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({**CFG, "alias": "${method.name}"})
    assert config_hash(cfg) == config_hash({**CFG, "alias": "coop"})
    with pytest.raises(TypeError, match="mapping"):
        config_hash(["not", "a", "mapping"])
