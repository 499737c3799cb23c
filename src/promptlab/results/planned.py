"""The jobs a sweep was asked to run, read back from Hydra's `multirun.yaml`, and those that left no record.

A job that never started (the sweep was cancelled, a SLURM array task never ran) or stopped before its first
record (killed while loading) has no `metrics.json`; scanning records cannot see it. Hydra's basic sweeper
writes the sweep's parameters (`hydra.sweeper.params`) and command-line overrides (`hydra.overrides.task`)
into the sweep folder; expanding them the way the sweeper does (`BasicSweeper.split_arguments`) gives every
job's overrides, and promptlab's job folder rule (`job_dirname`) its folder.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from promptlab.config.registry import job_dirname
from promptlab.results.records import RECORD_FILENAME, SkippedRun

log = logging.getLogger(__name__)

MULTIRUN_FILENAME = "multirun.yaml"
STATUS_MISSING = "missing"
_BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
_JOB_FOLDER_RULE = "${job_dirname:${hydra:overrides.task}}"


@dataclass(frozen=True)
class PlannedJob:
    """One job of a sweep: its overrides and its folder."""

    overrides: tuple[str, ...]
    run_dir: Path


def planned_jobs(sweep_dir: Path) -> list[PlannedJob] | None:
    """Every job of the sweep in `sweep_dir`, or None when that cannot be known: no multirun.yaml, another
    sweeper (Optuna chooses its jobs as it goes) or job folders not named by promptlab's rule."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    file = Path(sweep_dir) / MULTIRUN_FILENAME
    if not file.is_file():
        return None
    hydra = OmegaConf.load(file).get("hydra")
    if hydra is None:
        return None
    sweeper = hydra.get("sweeper") or {}
    subdir = OmegaConf.to_container(hydra, resolve=False).get("sweep", {}).get("subdir")
    if sweeper.get("_target_") != _BASIC_SWEEPER or subdir != _JOB_FOLDER_RULE:
        return None
    params_node = sweeper.get("params")  # None when every swept key came from the command line
    params = OmegaConf.to_container(params_node, resolve=False) if params_node else {}
    arguments = [f"{key}={value}" for key, value in params.items()] + list(hydra.overrides.task)
    try:
        parsed = OverridesParser.create().parse_overrides(arguments)
        batches = BasicSweeper.split_arguments(parsed, None)
    except Exception as err:  # noqa: BLE001 - an unreadable plan only means no "missing" list
        log.warning("%s: could not expand the sweep's jobs (%s); missing jobs are not listed", file, err)
        return None
    return [PlannedJob(tuple(job), Path(sweep_dir) / job_dirname(job)) for batch in batches for job in batch]


def missing_jobs(paths: list[Path]) -> list[SkippedRun]:
    """The planned jobs without a record, for every sweep folder at or under `paths`."""
    sweeps: dict[Path, None] = {}
    for path in paths:
        path = Path(path)
        if path.is_dir():
            for file in sorted(path.rglob(MULTIRUN_FILENAME)):
                sweeps.setdefault(file.parent.resolve(), None)
    missing = []
    for sweep in sweeps:
        for job in planned_jobs(sweep) or []:
            record = job.run_dir / RECORD_FILENAME
            if not record.is_file():
                missing.append(SkippedRun(record, STATUS_MISSING, "no record: never started, or stopped before it "
                                          f"began ({' '.join(job.overrides)}); rerun the sweep to run it"))
    return missing
