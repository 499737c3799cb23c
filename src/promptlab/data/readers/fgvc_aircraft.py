"""Reader for FGVCAircraft, which CoOp reads from the dataset's own list files (no split_zhou file).

Layout and format (CoOp datasets/fgvc_aircraft.py and DATASETS.md, FGVCAircraft): the `data/` folder of
fgvc-aircraft-2013b renamed to `fgvc_aircraft/`, holding `images/<id>.jpg`, `variants.txt` (one class
name per line; the label is the line index) and `images_variant_{train,val,test}.txt` with lines
"<image id> <variant name>" (the name may contain spaces, e.g. "Cessna 172").
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from promptlab.data.errors import DatasetError
from promptlab.data.readers.common import (
    cfg_value,
    clean_classname,
    keyed_lines,
    layout_tree,
    require_dir,
    require_file,
)
from promptlab.data.types import DatasetSplits, Datum

READER = "fgvc_aircraft"


def layout(cfg: Mapping[str, Any]) -> str:
    split_files = dict(cfg.get("split_files") or {})
    return layout_tree(
        str(cfg.get("dataset_dir")),
        [
            f"{cfg.get('image_dir')}/  (<image id>.jpg)",
            f"{cfg.get('classnames_file')}  (one class name per line)",
            *split_files.values(),
        ],
    )


def read(cfg: Mapping[str, Any], dataset_dir: Path) -> DatasetSplits:
    image_root = require_dir(dataset_dir / str(cfg_value(cfg, "image_dir", READER)), cfg, "image folder",
                             layout(cfg))
    variants_path = require_file(dataset_dir / str(cfg_value(cfg, "classnames_file", READER)), cfg,
                                 "class list", layout(cfg))
    with open(variants_path, encoding="utf-8") as f:
        raw_names = [line.strip() for line in f if line.strip()]
    label_of = {name: label for label, name in enumerate(raw_names)}
    if len(label_of) != len(raw_names):
        raise DatasetError(f"{variants_path} lists a class name twice; re-download the dataset.")

    split_files = cfg_value(cfg, "split_files", READER)
    splits: dict[str, list[Datum]] = {}
    for split in ("train", "val", "test"):
        list_path = require_file(dataset_dir / str(split_files[split]), cfg, f"{split} list", layout(cfg))
        splits[split] = _read_list(list_path, image_root, label_of)

    return DatasetSplits(
        name=str(cfg_value(cfg, "name", READER)),
        dataset_dir=dataset_dir,
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        classnames=[clean_classname(name) for name in raw_names],
        class_source=variants_path,
    )


def _read_list(list_path: Path, image_root: Path, label_of: Mapping[str, int]) -> list[Datum]:
    items = []
    for line_no, _, image_id, raw_name in keyed_lines(list_path):
        if raw_name not in label_of:
            raise DatasetError(
                f"{list_path}, line {line_no}: class {raw_name!r} is not in the class list "
                f"(variants.txt). The list files and variants.txt come from different releases; "
                f"re-download fgvc-aircraft-2013b."
            )
        items.append(Datum(
            impath=os.path.join(image_root, image_id + ".jpg"),
            label=label_of[raw_name],
            classname=clean_classname(raw_name),
        ))
    return items
