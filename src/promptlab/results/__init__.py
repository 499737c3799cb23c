"""Run records (metrics.json), aggregation of sweeps into tables, and plots.

    from promptlab.results import read_sweep
    sweep = read_sweep("multirun/2025-01-01/12-00-00")
    sweep["base2novel"].to_records()
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from promptlab.results.aggregate import SweepTables, aggregate_runs, read_sweep
    from promptlab.results.table import ResultTable

# Resolved on first access, not imported here: promptlab.protocols imports promptlab.results.metrics, which
# runs this file first, and the tables import the protocols; eager imports would make that a cycle (and
# would load the table code for every user of records or metrics).
_LAZY = {
    "read_sweep": "promptlab.results.aggregate",
    "SweepTables": "promptlab.results.aggregate",
    "aggregate_runs": "promptlab.results.aggregate",
    "ResultTable": "promptlab.results.table",
}

__all__ = ["ResultTable", "SweepTables", "aggregate_runs", "read_sweep"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
