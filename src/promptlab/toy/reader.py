"""The toy world's dataset reader: generated on first use (deterministic from its spec), then read like real
data in the CoOp layout. Importing this module registers it as the reader `toyworld`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from promptlab.data.readers import read_split_zhou, register_reader
from promptlab.data.types import DatasetSplits
from promptlab.toy.world import ToyWorldSpec, ensure_toyworld


def read_toyworld(cfg: Mapping[str, Any], dataset_dir: Path) -> DatasetSplits:
    """The toy world is generated on first use (deterministic from its spec), then read like real data."""
    spec = ToyWorldSpec.from_dict(dict(cfg.get("generator") or {}))
    ensure_toyworld(dataset_dir, spec)
    splits = read_split_zhou(str(cfg.get("name", "toyworld")), dataset_dir, str(cfg.get("image_dir", "images")),
                             str(cfg.get("split_file", "split_zhou_ToyWorld.json")),
                             display_name=cfg.get("display_name"))
    return splits


register_reader("toyworld", read_toyworld, generates=True)
