"""Log aggregated tables and figures to Weights & Biases as one extra run of the sweep's group."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from promptlab.results.table import ResultTable


def log_tables_to_wandb(
    tables: Sequence[ResultTable],
    figure_paths: Sequence[str | os.PathLike[str]],
    project: str,
    group: str | None,
    mode: str | None = None,
    config: Mapping[str, Any] | None = None,
    dir: str | os.PathLike[str] | None = None,
    files: Sequence[str | os.PathLike[str]] = (),
) -> Path:
    """Log each table as a wandb.Table ("<protocol>/table") and each figure as a wandb.Image
    ("figure/<file stem>") in one run of job_type "aggregate"; every cell mean also goes to the run
    summary as "<protocol>/<row labels>/<column>". Returns the run's files directory.

    `mode` is passed to wandb.init ("online", "offline", "disabled"); None lets WANDB_MODE decide. `files`
    (the table's md/csv/tex/png files) are versioned as one artifact of type "results", named after the group.
    """
    import wandb

    # A job that did not call wandb.finish() leaves its run open, and wandb.init would otherwise hand
    # that run back (docs/reference.md, "Pitfalls"): close it so the tables land in a run of their own.
    if wandb.run is not None:
        wandb.finish()
    run = wandb.init(
        project=project,
        group=group,
        job_type="aggregate",
        name=f"{group}-aggregate" if group else "aggregate",
        mode=mode,
        config=dict(config) if config else None,
        dir=str(dir) if dir is not None else None,
    )
    try:
        for table in tables:
            columns, data = table.tabular()
            run.log({f"{table.protocol}/table": wandb.Table(columns=columns, data=data)})
            for row in table.rows:
                labels = "/".join(row.labels.get(c, "") for c in table.label_columns)
                for column, cell in row.cells.items():
                    if cell is not None:
                        run.summary[f"{table.protocol}/{labels}/{column}"] = cell.mean
        for path in figure_paths:
            run.log({f"figure/{Path(path).stem}": wandb.Image(str(path))})
        if files:
            artifact = wandb.Artifact(artifact_name("results", group or "sweep"), type="results")
            for path in files:
                artifact.add_file(str(path))
            run.log_artifact(artifact)
        files_dir = Path(run.dir)
    finally:
        run.finish()
    return files_dir


def artifact_name(kind: str, label: str) -> str:
    """A W&B artifact name (letters, digits, '-', '_', '.') for a kind and a free-form label."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "-", label).strip("-.") or "run"
    return f"{kind}-{cleaned}"[:128]


def log_prompt_artifact(loggers: Sequence[Any], path: str | os.PathLike[str], label: str,
                        metadata: Mapping[str, Any]) -> None:
    """Version a run's prompt file as a W&B artifact of type "prompt", linked to the run of each W&B logger."""
    for logger in loggers:
        if type(logger).__name__ != "WandbLogger":
            continue
        import wandb

        artifact = wandb.Artifact(artifact_name("prompt", label), type="prompt", metadata=dict(metadata))
        artifact.add_file(str(path))
        logger.experiment.log_artifact(artifact)
