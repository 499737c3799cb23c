"""Reader for CoOp's `split_zhou_<Name>.json` split files (10 of the 11 CoOp datasets, the toy world,
and image folders that come with such a file).

Format (CoOp datasets/oxford_pets.py, read_split/save_split): a JSON object with keys "train", "val",
"test", each a list of `[image path relative to image_dir, label, classname]`. The classes are exactly
those in the file: Caltech101's BACKGROUND_Google and Faces_easy folders exist on disk but are left out
of the file (CoOp datasets/caltech101.py, IGNORED), so reading the file is enough to exclude them.
StanfordCars stores paths relative to the dataset folder itself, so its `image_dir` is "" (CoOp
datasets/stanford_cars.py reads its split with `self.dataset_dir` as prefix).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from promptlab.data.errors import DatasetError
from promptlab.data.readers.common import (
    cfg_value,
    classnames_from_labels,
    clean_classname,
    layout_tree,
    require_dir,
    require_file,
)
from promptlab.data.types import DatasetSplits, Datum

SPLIT_NAMES = ("train", "val", "test")


def layout(cfg: Mapping[str, Any]) -> str:
    image_dir = cfg.get("image_dir") or ""
    images = f"{image_dir}/  (the images, at the paths listed in the split file)" if image_dir else (
        "<image folders>/  (paths in the split file are relative to this folder)"
    )
    return layout_tree(str(cfg.get("dataset_dir", "<dataset_dir>")), [images, str(cfg.get("split_file"))])


def read_split_zhou(
    name: str,
    dataset_dir: str | Path,
    image_dir: str,
    split_file: str,
    rename_classes: Mapping[str, str] | None = None,
    display_name: str | None = None,
) -> DatasetSplits:
    """Read `dataset_dir/split_file` with image paths under `dataset_dir/image_dir`.

    `rename_classes` maps a class name as stored in the file to the name to use; names not in it are
    kept. Class names then have underscores replaced by spaces. `display_name` is used in messages.
    Only the file and the image folder are checked here; `read_dataset` then checks the class count and
    that every listed image is inside the dataset folder and on disk (`promptlab.data.image_check`).
    """
    dataset_dir = Path(dataset_dir)
    cfg = {"name": name, "display_name": display_name or name, "dataset_dir": dataset_dir.name,
           "image_dir": image_dir, "split_file": split_file}
    split_path = require_file(dataset_dir / split_file, cfg, "split file", layout(cfg))
    image_root = require_dir(dataset_dir / image_dir, cfg, "image folder", layout(cfg))
    raw = _load_json(split_path)

    rename = dict(rename_classes or {})
    label_to_name: dict[int, str] = {}
    splits: dict[str, list[Datum]] = {}
    for split in SPLIT_NAMES:
        items = []
        for entry in raw[split]:
            relpath, label, classname = _parse_entry(entry, split, split_path)
            classname = clean_classname(rename.get(classname, classname))
            known = label_to_name.setdefault(label, classname)
            if known != classname:
                raise DatasetError(
                    f"{split_path}: label {label} is named both {known!r} and {classname!r}; each label must "
                    f"have one class name. Re-download or regenerate the split file."
                )
            items.append(Datum(impath=os.path.join(image_root, relpath), label=label, classname=classname))
        splits[split] = items

    return DatasetSplits(
        name=name,
        dataset_dir=dataset_dir,
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        classnames=classnames_from_labels(label_to_name, split_path),
        class_source=split_path,
    )


def read(cfg: Mapping[str, Any], dataset_dir: Path) -> DatasetSplits:
    """Registry entry: read a split_zhou dataset described by its config."""
    return read_split_zhou(
        name=str(cfg_value(cfg, "name", "split_zhou")),
        dataset_dir=dataset_dir,
        image_dir=str(cfg.get("image_dir") or ""),
        split_file=str(cfg_value(cfg, "split_file", "split_zhou")),
        rename_classes=cfg.get("rename_classes"),
        display_name=cfg.get("display_name"),
    )


def _load_json(split_path: Path) -> dict[str, Any]:
    try:
        with open(split_path, encoding="utf-8") as f:
            raw = json.load(f)
    except json.JSONDecodeError as err:
        raise DatasetError(f"split file {split_path} is not valid JSON ({err}); re-download it.") from err
    missing = [s for s in SPLIT_NAMES if not isinstance(raw, dict) or not isinstance(raw.get(s), list)]
    if missing:
        raise DatasetError(
            f"split file {split_path} lacks the list(s) {missing}: expected a JSON object "
            f'{{"train": [...], "val": [...], "test": [...]}} of [relative_path, label, classname] entries.'
        )
    return raw


def _parse_entry(entry: Any, split: str, split_path: Path) -> tuple[str, int, str]:
    ok = isinstance(entry, list | tuple) and len(entry) == 3
    if ok:
        relpath, label, classname = entry
        ok = isinstance(relpath, str) and isinstance(classname, str) and not isinstance(label, bool)
        try:
            label = int(label)
        except (TypeError, ValueError):
            ok = False
    if not ok or label < 0:
        raise DatasetError(
            f"{split_path}: entry {entry!r} in {split!r} is not [relative_path, label, classname] "
            f"with a label >= 0. Re-download or regenerate the split file."
        )
    return relpath, label, classname
