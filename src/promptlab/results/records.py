"""Run records: one ``metrics.json`` per job, in the job's output directory.

A record is the only thing aggregation reads, so a sweep can be tabulated (or resumed) long after it
ran, from any machine, without importing the training code. Schema version 1 (fixed)::

    {
      "schema": 1,
      "status": "complete" | "failed" | "running" | "interrupted",
      "run_dir": "<absolute path of the job's output dir when the record was written>",
      "config_hash": "<config_hash() of the resolved config>",     # resume: same hash + complete = skip
      "summary": {"protocol": "base2novel", "method": "coop", "dataset": "toyworld",
                  "backbone": "toyclip", "shots": 16, "n_ctx": 4, "seed": 1, "precision": "32",
                  "epochs": 10, ...},                               # free extra keys allowed
      "overrides": ["method=coop", "seed=1"],                     # Hydra task overrides of the job
      "config": {...},                                            # the resolved config
      "metrics": {"base_acc": 87.1, "novel_acc": 80.2, "hm": 83.5},   # percent, flat
      "evaluations": [{"name": "base", "dataset": "toyworld", "subset": "base", "acc": 87.1,
                       "n_correct": 784, "n_images": 900, "n_classes": 18}, ...],
      "timings": {"total_s": 12.3, "fit_s": 8.0, "eval_s": 2.1},
      "versions": {"promptlab": "0.1.0", "torch": "...", ...},
      "notes": ["..."],
      "error": null | {"type": "...", "message": "...", "traceback": "..."}
    }

Metric keys per protocol (``summary["protocol"]``):

- ``base2novel``: ``base_acc``, ``novel_acc``, ``hm`` (evaluations named "base" and "novel").
- ``fewshot``: ``acc`` (one evaluation named "all").
- ``cross_dataset`` / ``domain_generalization``: one evaluation per dataset, the source first;
  metrics ``"<dataset>_acc"`` for each plus ``target_mean_acc`` (mean over the targets).

Summary keys read by the tables: ``protocol``, ``method``, ``dataset``, ``seed`` (the replicate axis),
optional ``dataset_display`` / ``method_display`` (names shown instead of the keys); every other key
that varies among the runs of a table becomes a column (see ``promptlab.results.table``).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import platform
import traceback
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from hashlib import sha256
from importlib import metadata
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from promptlab.errors import MissingPathError, RecordError  # RecordError re-exported from here
from promptlab.io import atomic_write_json
from promptlab.launch import LAUNCH_KEYS

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
RECORD_FILENAME = "metrics.json"

STATUS_COMPLETE = "complete"
STATUS_FAILED = "failed"
STATUS_RUNNING = "running"  # written when a job starts: still running, or killed (SIGKILL, power loss)
STATUS_INTERRUPTED = "interrupted"  # stopped by Ctrl-C or SIGTERM (pre-emption, scancel)
STATUSES = (STATUS_COMPLETE, STATUS_FAILED, STATUS_RUNNING, STATUS_INTERRUPTED)

REQUIRED_KEYS = ("schema", "status", "summary", "metrics")


# Distributions reported in every record; missing ones are simply left out.
_VERSIONED_PACKAGES = {
    "promptlab": "promptlab",
    "torch": "torch",
    "torchvision": "torchvision",
    "open_clip": "open_clip_torch",
    "lightning": "lightning",
    "torchmetrics": "torchmetrics",
    "hydra": "hydra-core",
    "numpy": "numpy",
}


# --------------------------------------------------------------------------- building records


#: Where a run's tuned value saw its data, from none to the one a paper must disclose most: each value of a record's
#: `tuning`, and its `summary.tuned_on` (the strongest one; "none" for a validation-free run).
TUNING_SOURCES = ("none", "few-shot val", "full val", "test")


def package_versions() -> dict[str, str]:
    """Versions of Python and the packages that determine a run's numbers."""
    versions = {"python": platform.python_version()}
    for name, dist in _VERSIONED_PACKAGES.items():
        try:
            versions[name] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return versions


def make_record(
    run_dir: str | os.PathLike[str],
    *,
    status: str,
    summary: Mapping[str, Any],
    config_hash: str | None = None,
    overrides: Sequence[str] = (),
    config: Mapping[str, Any] | None = None,
    metrics: Mapping[str, float] | None = None,
    evaluations: Sequence[Mapping[str, Any]] = (),
    timings: Mapping[str, float] | None = None,
    notes: Iterable[str] = (),
    error: Mapping[str, str] | None = None,
    launch: Mapping[str, Any] | None = None,
    backbone: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A schema-1 record with every key present; `versions` is filled in here. `launch`: where and when the
    job started (pid, host, start time), so that a `running` record of a dead job can be told apart."""
    _check_status(status)
    return {
        "schema": SCHEMA_VERSION,
        "status": status,
        "run_dir": str(Path(run_dir).resolve()),
        "config_hash": config_hash,
        "summary": dict(summary),
        "overrides": list(overrides),
        "config": dict(config) if config is not None else {},
        "metrics": dict(metrics) if metrics is not None else {},
        "evaluations": [dict(e) for e in evaluations],
        "timings": dict(timings) if timings is not None else {},
        "versions": package_versions(),
        "notes": list(notes),
        "error": dict(error) if error is not None else None,
        "launch": dict(launch) if launch is not None else None,
        # The backbone that ran: name, fingerprint, exact text speed-ups on/off and why, image preprocessing.
        "backbone": dict(backbone) if backbone is not None else None,
    }


def error_record(
    run_dir: str | os.PathLike[str],
    exc: BaseException,
    *,
    summary: Mapping[str, Any] | None = None,
    config_hash: str | None = None,
    overrides: Sequence[str] = (),
    config: Mapping[str, Any] | None = None,
    metrics: Mapping[str, float] | None = None,
    evaluations: Sequence[Mapping[str, Any]] = (),
    timings: Mapping[str, float] | None = None,
    notes: Iterable[str] = (),
) -> dict[str, Any]:
    """A "failed" record carrying the exception (type, message, full traceback).

    Whatever was measured before the failure (e.g. the base evaluation) may be passed along; tables
    never read failed records, but a person debugging the sweep can.
    """
    error = {
        "type": type(exc).__name__,
        "message": str(exc),
        "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
    }
    return make_record(
        run_dir,
        status=STATUS_FAILED,
        summary=summary or {},
        config_hash=config_hash,
        overrides=overrides,
        config=config,
        metrics=metrics,
        evaluations=evaluations,
        timings=timings,
        notes=notes,
        error=error,
    )


# --------------------------------------------------------------------------- config hash


def config_hash(cfg: Any, exclude: Iterable[str] = LAUNCH_KEYS) -> str:
    """sha256 of the config as sorted-key JSON, after dropping the dotted paths in `exclude`.

    `cfg` is a plain mapping (an OmegaConf DictConfig is converted with interpolations resolved).
    Stable across processes and key order; values JSON cannot encode (paths, enums) hash by `str()`.
    """
    if isinstance(cfg, DictConfig) or not isinstance(cfg, Mapping):  # DictConfig is a Mapping too
        cfg = _to_plain_mapping(cfg)
    pruned = copy.deepcopy(dict(cfg))
    for dotted in exclude:
        _drop_path(pruned, dotted.split("."))
    text = json.dumps(pruned, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)
    return sha256(text.encode("utf-8")).hexdigest()


def _to_plain_mapping(cfg: Any) -> Mapping[str, Any]:
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    raise TypeError(
        f"config_hash expects a mapping or an OmegaConf DictConfig, got {type(cfg).__name__}; "
        "pass OmegaConf.to_container(cfg, resolve=True)."
    )


def _drop_path(node: dict[str, Any], parts: list[str]) -> None:
    head, *rest = parts
    if head not in node:
        return
    if not rest:
        del node[head]
    elif isinstance(node[head], dict):
        _drop_path(node[head], rest)


# --------------------------------------------------------------------------- writing and reading


def write_record(run_dir: str | os.PathLike[str], record: Mapping[str, Any]) -> Path:
    """Write `record` to `<run_dir>/metrics.json` atomically and return the file's path.

    Written with `promptlab.io.atomic_write_json` (temporary file in the same directory, fsync,
    os.replace): a reader (or a resume after a kill) sees either the old or the new record, never a
    half-written one; a value JSON cannot encode raises before anything is written. The file's mode
    follows the umask (records are meant to be shared).
    """
    _check_status(record.get("status"))
    return atomic_write_json(Path(run_dir) / RECORD_FILENAME, record, indent=2)


def record_path(path_or_dir: str | os.PathLike[str]) -> Path:
    """`<dir>/metrics.json` for a directory, the path itself otherwise."""
    path = Path(path_or_dir)
    return path / RECORD_FILENAME if path.is_dir() else path


def read_record(path_or_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The record in a run directory (or a metrics.json path); None when there is none.

    Raises RecordError when the file exists but is not a usable schema-1 record.
    """
    path = record_path(path_or_dir)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RecordError(f"{path}: not valid JSON ({exc}); delete it or rerun the job.") from exc
    _check_record(record, path)
    return record


def _check_record(record: Any, path: Path) -> None:
    if not isinstance(record, dict):
        raise RecordError(f"{path}: expected a JSON object, found {type(record).__name__}.")
    missing = [key for key in REQUIRED_KEYS if key not in record]
    if missing:
        raise RecordError(f"{path}: missing keys {missing}; expected a promptlab run record.")
    if record["schema"] != SCHEMA_VERSION:
        raise RecordError(
            f"{path}: schema {record['schema']!r}, this promptlab reads schema {SCHEMA_VERSION}; "
            "aggregate it with the promptlab version that wrote it."
        )
    if record["status"] not in STATUSES:
        raise RecordError(f"{path}: status {record['status']!r} is not one of {STATUSES}.")
    if not isinstance(record["summary"], dict) or not isinstance(record["metrics"], dict):
        raise RecordError(f"{path}: 'summary' and 'metrics' must be JSON objects.")


def _check_status(status: Any) -> None:
    if status not in STATUSES:
        raise ValueError(f"record status {status!r} is not one of {STATUSES}; set record['status'].")


def is_complete(run_dir: str | os.PathLike[str], config_hash: str) -> bool:
    """True when `run_dir` holds a complete record of the same config (resume may skip the job)."""
    try:
        record = read_record(run_dir)
    except RecordError as exc:
        log.warning("ignoring unusable record, the job will run again: %s", exc)
        return False
    if record is None or record["status"] != STATUS_COMPLETE:
        return False
    return record.get("config_hash") == config_hash


# --------------------------------------------------------------------------- finding records


@dataclass(frozen=True)
class SkippedRun:
    """A metrics.json that aggregation did not use, and why."""

    path: Path
    status: str  # "failed", "running" (unfinished or killed), "interrupted", "unreadable" or "missing" (no record)
    reason: str

    def __str__(self) -> str:
        return f"{self.path.parent}: {self.status} ({self.reason})"


@dataclass
class RecordScan:
    """Everything found under some directories: usable (complete) records and the runs skipped."""

    complete: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[SkippedRun] = field(default_factory=list)


def scan_records(paths: Iterable[str | os.PathLike[str]]) -> RecordScan:
    """Search each path (a run dir, a sweep dir, any parent, or a metrics.json) recursively.

    Each record file is read once even when paths overlap; order is sorted by file path so tables
    come out the same on every file system.
    """
    files: dict[Path, None] = {}
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise MissingPathError(
                f"{path} does not exist; pass a run directory, a sweep directory or a parent of them."
            )
        found = [path] if path.is_file() else sorted(path.rglob(RECORD_FILENAME))
        for file in found:
            files.setdefault(file.resolve(), None)

    scan = RecordScan()
    for file in sorted(files):
        try:
            record = read_record(file)
        except RecordError as exc:
            scan.skipped.append(SkippedRun(file, "unreadable", str(exc)))
            continue
        assert record is not None  # the file was just listed
        if record["status"] == STATUS_COMPLETE:
            scan.complete.append(record)
        elif record["status"] == STATUS_FAILED:
            error = record.get("error") or {}
            reason = f"{error.get('type', 'error')}: {error.get('message', 'no message recorded')}"
            scan.skipped.append(SkippedRun(file, STATUS_FAILED, reason))
        elif record["status"] == STATUS_INTERRUPTED:
            scan.skipped.append(SkippedRun(file, STATUS_INTERRUPTED, "stopped by Ctrl-C or SIGTERM; rerun to resume"))
        else:
            launch = record.get("launch") or {}
            where = (f" (pid {launch.get('pid')} on {launch.get('host')}, started {launch.get('started')})"
                     if launch else "")
            scan.skipped.append(SkippedRun(file, STATUS_RUNNING, f"still running, or killed before the end{where}"))
    return scan


def find_records(paths: Iterable[str | os.PathLike[str]]) -> list[dict[str, Any]]:
    """Complete records under `paths`; failed, unfinished and unreadable ones are logged and skipped."""
    scan = scan_records(paths)
    for skipped in scan.skipped:
        log.warning("skipping run %s", skipped)
    return scan.complete
