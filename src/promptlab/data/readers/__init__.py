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

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from promptlab.data.errors import DatasetError, missing_data_root
from promptlab.data.image_check import find_missing, outside_folder
from promptlab.data.readers import fgvc_aircraft, imagefolder, imagenet, split_zhou
from promptlab.data.readers.common import cfg_value, display_name, layout_tree, require_dir
from promptlab.data.readers.split_zhou import read_split_zhou
from promptlab.data.types import DatasetSplits

__all__ = [
    "READERS", "Reader", "check_listed_images", "read_dataset", "read_listing", "read_split_zhou", "reader_of",
    "register_reader",
]

log = logging.getLogger(__name__)

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


def read_dataset(
    dataset_cfg: Mapping[str, Any], data_root: str | Path, on_missing: str = "raise"
) -> DatasetSplits:
    """Read the dataset described by `dataset_cfg` from `data_root/<dataset_dir>`, and check it cheaply.

    Raises DatasetError (with the expected path and layout) when something is missing; when the number of
    classes read differs from the config's `num_classes` (checked before any image: a wrong split file in
    place is named as such); when a listed image path leads outside the dataset folder; and, with
    on_missing="raise", when a listed image is absent. With on_missing="skip" (loader.on_error=skip)
    absent images are reported in one warning and left to the loader, which leaves them out and lists
    them in the run record. The existence check lists each image folder once (no stat per image).
    """
    splits = read_listing(dataset_cfg, data_root)
    # A generated dataset (the toy world) is written by promptlab, completely or not at all: its paths are
    # still checked for containment, its files are not listed again.
    check_listed_images(splits, dataset_cfg, on_missing, existence=not reader_of(dataset_cfg).generates)
    return splits


def reader_of(dataset_cfg: Mapping[str, Any]) -> Reader:
    """The reader a dataset config names; DatasetError listing the known ones for an unknown name."""
    reader_name = str(cfg_value(dataset_cfg, "reader", None))
    reader = READERS.get(reader_name)
    if reader is None:
        raise DatasetError(
            f"dataset config {dataset_cfg.get('name')!r}: unknown reader {reader_name!r}; "
            f"known readers: {sorted(READERS)}."
        )
    return reader


def read_listing(dataset_cfg: Mapping[str, Any], data_root: str | Path) -> DatasetSplits:
    """What `read_dataset` does before it looks at the images: the folders, the split and class files, and
    the class count against the config (the listing `promptlab-data check` then examines image by image)."""
    reader = reader_of(dataset_cfg)
    reader_name = str(dataset_cfg.get("reader"))
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
    source = splits.class_source or dataset_dir
    if not splits.classnames:
        raise DatasetError(f"{name}: no classes found in {source}; check the dataset files.")
    expected = cfg.get("num_classes")
    if expected is not None and int(expected) != splits.num_classes:
        raise DatasetError(
            f"{name}: {source} has {splits.num_classes} classes, {name} has {expected} (dataset.num_classes). "
            f"It is another dataset's file or an incomplete copy: put {name}'s own file in its place (CoOp "
            f"DATASETS.md, section {name}), or set dataset.num_classes={splits.num_classes} if this subset is "
            f"intended."
        )
    for split in (splits.train, splits.val, splits.test):
        assert all(0 <= d.label < splits.num_classes for d in split), "reader produced an out-of-range label"


def check_listed_images(
    splits: DatasetSplits, cfg: Mapping[str, Any], on_missing: str = "raise", existence: bool = True
) -> None:
    """Containment (always an error) and existence (an error, or one warning with on_missing="skip") of
    every image the splits list."""
    if on_missing not in ("raise", "skip"):
        raise ValueError(f"on_missing must be 'raise' or 'skip', got {on_missing!r}")
    name = display_name(cfg)
    source = splits.class_source or splits.dataset_dir
    listed = {split: getattr(splits, split) for split in ("train", "val", "test")}
    outside = [d for items in listed.values() for d in outside_folder(items, splits.dataset_dir)]
    if outside:
        raise DatasetError(
            f"{name}: {len(outside)} image path(s) listed in {source} lead outside the dataset folder "
            f"{splits.dataset_dir}, e.g. {os.path.normpath(outside[0].impath)}; promptlab opens no such path. "
            f"The file is damaged or not written for this layout: re-download it."
        )
    if not existence:
        return
    missing = {split: find_missing(items) for split, items in listed.items()}
    n_missing = sum(len(m) for m in missing.values())
    if n_missing == 0:
        return
    split, gone = next((s, m) for s, m in missing.items() if m)
    whole = [s for s, m in missing.items() if m and len(m) == len(listed[s])]
    hint = (
        f"No image of the {whole} split(s) is there: check that the images are extracted so that the paths in "
        f"{source} resolve under {splits.dataset_dir} (not one folder too deep, not under another name)."
        if whole else "Restore the images (re-download or re-extract the dataset)."
    )
    total = sum(len(items) for items in listed.values())
    counts = ", ".join(f"{s} {len(m)}" for s, m in missing.items() if m)
    message = (f"{name}: {n_missing} of {total} image(s) listed in {source} are absent ({counts}), "
               f"e.g. {gone[0].impath} ({split!r}).")
    if on_missing == "raise":
        raise DatasetError(f"{message} {hint} To run without them (left out and listed in the run record), set "
                           f"loader.on_error=skip.")
    log.warning("%s loader.on_error=skip: they are left out and listed in the run record.", message)
