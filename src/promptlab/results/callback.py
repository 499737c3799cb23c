"""Hydra callback: tabulate a multirun sweep as soon as it ends.

Enable it in a config (e.g. conf/train.yaml)::

    hydra:
      callbacks:
        aggregate:
          _target_: promptlab.results.callback.AggregateOnMultirunEnd

The tables (table_<protocol>.md/.csv/.tex/.png) are written into hydra.sweep.dir, and logged to W&B
when the config's logger is wandb. Hydra calls on_multirun_end only when every job returned normally:
a job that raises aborts the sweep before it. So the callback also registers an exit hook at the start
of the sweep and aggregates from there when on_multirun_end never came. In neither case does it raise:
it tabulates what completed and prints what failed.
"""

from __future__ import annotations

import atexit
import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

DEFAULT_WANDB_PROJECT = "promptlab"


class AggregateOnMultirunEnd(Callback):
    """Aggregate the sweep's run records into tables (and W&B) at the end of a Hydra multirun."""

    def __init__(self, log_to_wandb: bool = True, quiet: bool = False) -> None:
        self.log_to_wandb = log_to_wandb
        self.quiet = quiet
        self._pending: DictConfig | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._pending = config
        atexit.register(self._aggregate_if_pending)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._pending = None
        atexit.unregister(self._aggregate_if_pending)
        self.aggregate_sweep(config)

    def _aggregate_if_pending(self) -> None:
        if self._pending is not None:
            config, self._pending = self._pending, None
            print("promptlab: the sweep stopped early (a job raised); tabulating the runs that completed.")
            self.aggregate_sweep(config)

    def aggregate_sweep(self, config: DictConfig) -> None:
        """Write the tables of config.hydra.sweep.dir into it; log them to W&B if configured. Never raises."""
        from promptlab.results.aggregate import NoCompleteRecordsError, aggregate_runs

        try:
            sweep_dir = Path(str(config.hydra.sweep.dir))
            result = aggregate_runs([sweep_dir], sweep_dir)
        except NoCompleteRecordsError as exc:
            print(f"promptlab: nothing to tabulate: {exc}")
            return
        except Exception as exc:  # noqa: BLE001 - a table must never turn a finished sweep into a failure
            log.exception("promptlab: aggregating the sweep failed: %s", exc)
            return
        if not self.quiet:
            result.report()
        settings = wandb_settings(config) if self.log_to_wandb else None
        if settings is None:
            return
        try:
            from promptlab.results.wandb_log import log_tables_to_wandb

            group = settings["group"] or sweep_dir.name
            log_tables_to_wandb(
                result.tables, result.figure_paths, settings["project"], group, settings["mode"],
                config={"sweep_dir": str(sweep_dir), "skipped_runs": [str(s) for s in result.skipped]},
                dir=sweep_dir, files=[p for key, p in result.paths.items() if key != "skipped_runs"],
            )
        except Exception as exc:  # noqa: BLE001 - W&B trouble must not fail the sweep either
            log.exception("promptlab: logging the tables to W&B failed: %s", exc)


def wandb_settings(config: DictConfig) -> dict[str, str | None] | None:
    """{"project", "group", "mode"} of the W&B logger in `config`, or None when it logs elsewhere.

    Recognises `logger` nodes whose `name` or `_target_` mentions wandb, flat (logger: {_target_:
    ...WandbLogger, project: ...}) or one level down (logger: {wandb: {_target_: ...}}).
    """
    logger = OmegaConf.select(config, "logger", default=None)
    if not isinstance(logger, DictConfig):
        return None
    children = [_value(logger, str(key)) for key in logger.keys()]
    candidates = [logger] + [child for child in children if isinstance(child, DictConfig)]
    for node in candidates:
        if "wandb" in f"{_value(node, 'name')} {_value(node, '_target_')}".lower():
            mode = _value(node, "mode")
            if mode is None and _value(node, "offline") is True:
                mode = "offline"
            return {
                "project": _value(node, "project") or DEFAULT_WANDB_PROJECT,
                "group": _value(node, "group"),
                "mode": mode,
            }
    return None


def _value(node: DictConfig, key: str) -> Any:
    """node[key] resolved, or None when missing or when its interpolation cannot be resolved here
    (e.g. ${hydra:runtime.output_dir} outside a job)."""
    try:
        return OmegaConf.select(node, key, default=None, throw_on_resolution_failure=True)
    except Exception:  # noqa: BLE001 - any resolution problem means "not known here"
        return None
