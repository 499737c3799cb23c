"""Prompt-drift diagnostics: how a learned prompt moves class prototypes away from the hand-written ones,
and whether novel images end up on base classes (`promptlab-analyze`, or `analysis=true` in a run).

The names below are loaded on first use (PEP 562), so that `promptlab-analyze --help` does not wait for
torch and Lightning to import.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "AnalysisError", "analyze", "analyze_run_dir", "analyze_run_objects", "drift_statistics", "summary_markdown",
    "write_analysis",
]


_HOMES = {
    "AnalysisError": "drift", "analyze": "drift", "drift_statistics": "drift",
    "summary_markdown": "report", "write_analysis": "report",
    "analyze_run_dir": "runs", "analyze_run_objects": "runs",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(f"promptlab.analysis.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'promptlab.analysis' has no attribute {name!r}")
