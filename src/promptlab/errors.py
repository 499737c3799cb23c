"""The errors a user causes and can fix, all under one base class: `PromptlabError`.

A `PromptlabError` means "your input is wrong, here is what and what to do": its message is complete on
its own, so console scripts print it as one paragraph without a traceback
(`promptlab.cli_errors.exit_on_user_error`). Anything else that escapes is a bug in promptlab and keeps
its traceback. Internal invariants stay asserts (or plain built-in exceptions), never a `PromptlabError`.

Most classes also derive from the built-in exception they replaced (ValueError, RuntimeError,
FileNotFoundError, ...), so code that caught the built-in keeps working.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "AnalysisError",
    "ClipLoadError",
    "ConfigError",
    "DatasetError",
    "MissingPathError",
    "NoCompleteRecordsError",
    "NonFiniteLossError",
    "PathConflictError",
    "PromptlabError",
    "RecordError",
]


class PromptlabError(Exception):
    """An error the user caused and can fix; the message says what and what to do."""


class ConfigError(PromptlabError, ValueError):
    """A config value (or command-line option) is invalid; the message names the key and the allowed values."""


class MissingPathError(PromptlabError, FileNotFoundError):
    """A file or folder the user passed (or configured) does not exist."""


class PathConflictError(PromptlabError, FileExistsError):
    """A path the user passed exists but holds something else than what promptlab would write there."""


class DatasetError(PromptlabError):
    """A dataset is missing, incomplete or inconsistent with its config."""


class ClipLoadError(PromptlabError, RuntimeError):
    """The requested CLIP weights cannot be loaded; the message says what to pass instead."""


class RecordError(PromptlabError, ValueError):
    """A metrics.json that exists but cannot be used (invalid JSON, wrong schema, missing keys)."""


class AnalysisError(PromptlabError, ValueError):
    """A run (dir) that cannot be analysed; the message says which and what to do."""


class NonFiniteLossError(PromptlabError, RuntimeError):
    """Training produced a NaN/inf loss; the message names the run and what to change."""


class NoCompleteRecordsError(PromptlabError, RuntimeError):
    """Nothing to tabulate: no metrics.json with status "complete" under the given directories."""

    # `skipped`: promptlab.results.records.SkippedRun items (not imported: this module sits below records).
    def __init__(self, dirs: Sequence[str | os.PathLike[str]], skipped: Sequence[object]) -> None:
        where = ", ".join(str(d) for d in dirs)
        lines = [f"no complete run record (metrics.json with status 'complete') under {where}."]
        if skipped:
            lines.append(f"Found {len(skipped)} failed or incomplete run(s):")
            lines += [f"  {s}" for s in skipped]
            lines.append("Fix and rerun them (a resumed sweep skips the runs that completed).")
        else:
            lines.append("Pass the sweep directory (hydra.sweep.dir) or a run directory of promptlab-train.")
        super().__init__("\n".join(lines))
        self.dirs = [Path(d) for d in dirs]
        self.skipped = list(skipped)

    def __reduce__(self) -> tuple[Any, ...]:
        # The default pickling calls cls(message), which this constructor does not accept; jobs of a
        # joblib/submitit sweep send their exceptions back pickled.
        return (type(self), (self.dirs, self.skipped))
