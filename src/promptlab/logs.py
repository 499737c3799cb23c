"""Keep the console readable: library notices that say nothing about a promptlab run are silenced."""

from __future__ import annotations

import logging
import warnings

_IGNORED_WARNINGS = (
    ".*does not have many workers.*",  # features are in memory: loader workers would only add overhead
    ".*The number of training batches.*",  # few-shot epochs are short by design
    ".*module\\(s\\) in eval mode.*",  # the frozen CLIP stays in eval mode on purpose
    ".*isinstance\\(treespec, LeafSpec\\).*",
)
_QUIET_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda",
                  "lightning.fabric.utilities.seed")


def quiet_libraries() -> None:
    for pattern in _IGNORED_WARNINGS:
        warnings.filterwarnings("ignore", pattern)
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
