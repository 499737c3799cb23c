"""Dataset readers for the CoOp on-disk layout, chosen by the `reader` key of a dataset config.

A dataset config (conf/dataset/<name>.yaml) names its reader and where its files are:

    name: oxford_pets              # key used on the command line: dataset=oxford_pets
    display_name: OxfordPets       # as papers print it
    reader: split_zhou             # key of READERS
    dataset_dir: oxford_pets       # folder under paths.data_root (absolute paths also work)
    image_dir: images
    split_file: split_zhou_OxfordPets.json
    num_classes: 37                # checked against what is read (null: no check)
    templates: [...]
    epochs_by_shots: {...}

plus reader-specific keys (documented in each reader module): `rename_classes` (split_zhou),
`classnames_file`, `split_files` (fgvc_aircraft), `train_dir`, `test_dir` (imagenet), `class_folders`
(imagenet_variant), `split_fractions`, `split_seed` (imagefolder). `test_only: true` marks datasets
that have only a test split (the ImageNet variants).

A new on-disk format is one function `read(cfg, dataset_dir) -> DatasetSplits` registered with
`register_reader`. Formats that only differ by file names reuse `read_split_zhou` directly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from promptlab.data.errors import DatasetError, missing_data_root
from promptlab.data.readers import fgvc_aircraft, imagefolder, imagenet, split_zhou
from promptlab.data.readers.common import cfg_value, display_name, layout_tree, require_dir
from promptlab.data.readers.split_zhou import read_split_zhou
from promptlab.data.types import DatasetSplits

__all__ = ["READERS", "Reader", "read_dataset", "read_split_zhou", "register_reader"]

ReadFn = Callable[[Mapping[str, Any], Path], DatasetSplits]
LayoutFn = Callable[[Mapping[str, Any]], str]


def _generic_layout(cfg: Mapping[str, Any]) -> str:
    return layout_tree(str(cfg.get("dataset_dir")), ["..."])


@dataclass(frozen=True)
class Reader:
    """How to read one on-disk format.

    `layout(cfg)` describes the expected tree for error messages. `generates` marks readers that create
    their data on first use (the toy world): read_dataset then skips its folder-existence checks.
    """

    read: ReadFn
    layout: LayoutFn = _generic_layout
    generates: bool = False


READERS: dict[str, Reader] = {
    "split_zhou": Reader(split_zhou.read, split_zhou.layout),
    "fgvc_aircraft": Reader(fgvc_aircraft.read, fgvc_aircraft.layout),
    "imagenet": Reader(imagenet.read_imagenet, imagenet.layout_imagenet),
    "imagenet_variant": Reader(imagenet.read_imagenet_variant, imagenet.layout_variant),
    "imagefolder": Reader(imagefolder.read, imagefolder.layout),
}


def register_reader(
    name: str, read: ReadFn, layout: LayoutFn | None = None, *, generates: bool = False
) -> None:
    """Add a reader under `name` (re-registering the same function is a no-op)."""
    existing = READERS.get(name)
    if existing is not None and existing.read is not read:
        raise ValueError(f"a different reader is already registered as {name!r}: {existing.read!r}.")
    READERS[name] = Reader(read, layout or _generic_layout, generates)


def read_dataset(dataset_cfg: Mapping[str, Any], data_root: str | Path) -> DatasetSplits:
    """Read the dataset described by `dataset_cfg` from `data_root/<dataset_dir>`.

    Raises DatasetError (with the expected path and layout) when something is missing, and when the
    number of classes read differs from the config's `num_classes`.
    """
    reader_name = str(cfg_value(dataset_cfg, "reader", None))
    reader = READERS.get(reader_name)
    if reader is None:
        raise DatasetError(
            f"dataset config {dataset_cfg.get('name')!r}: unknown reader {reader_name!r}; "
            f"known readers: {sorted(READERS)}."
        )
    root = Path(data_root).expanduser()
    dataset_dir = root / str(cfg_value(dataset_cfg, "dataset_dir", reader_name))
    if not reader.generates:
        if not root.is_dir():
            raise missing_data_root(root)
        require_dir(dataset_dir, dataset_cfg, "dataset folder", reader.layout(dataset_cfg))
    splits = reader.read(dataset_cfg, dataset_dir)
    _check_classes(splits, dataset_cfg, dataset_dir)
    return splits


def _check_classes(splits: DatasetSplits, cfg: Mapping[str, Any], dataset_dir: Path) -> None:
    name = display_name(cfg)
    if not splits.classnames:
        raise DatasetError(f"{name}: no classes found in {dataset_dir}; check the dataset files.")
    expected = cfg.get("num_classes")
    if expected is not None and int(expected) != splits.num_classes:
        raise DatasetError(
            f"{name}: read {splits.num_classes} classes from {dataset_dir}, but the config says "
            f"num_classes={expected}. The dataset is incomplete or other files are in its place; fix the "
            f"data, or set dataset.num_classes={splits.num_classes} if this subset is intended."
        )
    for split in (splits.train, splits.val, splits.test):
        assert all(0 <= d.label < splits.num_classes for d in split), "reader produced an out-of-range label"
