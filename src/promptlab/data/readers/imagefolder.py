"""Reader for your own images: one sub-folder per class under the dataset folder.

With `split_file` set, the split is read from that file in the split_zhou format (see split_zhou.py).
Without one, each class's images (sorted file list) are shuffled with a private RNG seeded by
(`split_seed`, class folder) and cut into train / val / test by `split_fractions` with CoOp's rounding
(CoOp datasets/dtd.py, read_and_split_data: n_train = round(n * p_train), n_val = round(n * p_val),
the rest test; its defaults 0.5 / 0.2 are ours). Labels follow the sorted class folders; class names are
the folder names with underscores replaced by spaces.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from promptlab.data.errors import DatasetError
from promptlab.data.fewshot import draw_without_replacement, seeded_rng
from promptlab.data.readers.common import (
    cfg_value,
    clean_classname,
    layout_tree,
    list_images,
    list_subfolders,
    require_dir,
    require_file,
)
from promptlab.data.readers.split_zhou import read_split_zhou
from promptlab.data.types import DatasetSplits, Datum

READER = "imagefolder"


def layout(cfg: Mapping[str, Any]) -> str:
    image_dir = cfg.get("image_dir") or ""
    prefix = f"{image_dir}/" if image_dir else ""
    entries = [f"{prefix}<class_name>/  (one folder per class, images inside)"]
    if cfg.get("split_file"):
        entries.append(f"{cfg.get('split_file')}  (optional split in the split_zhou format)")
    return layout_tree(str(cfg.get("dataset_dir")), entries)


def read(cfg: Mapping[str, Any], dataset_dir: Path) -> DatasetSplits:
    name = str(cfg_value(cfg, "name", READER))
    image_dir = str(cfg.get("image_dir") or "")
    split_file = cfg.get("split_file")
    if split_file:
        require_file(dataset_dir / str(split_file), cfg, "split file", layout(cfg))
        return read_split_zhou(name, dataset_dir, image_dir, str(split_file),
                               display_name=cfg.get("display_name"))

    image_root = require_dir(dataset_dir / image_dir, cfg, "image folder", layout(cfg))
    p_train, p_val = _fractions(cfg)
    seed = int(cfg.get("split_seed", 1))
    folders = list_subfolders(image_root)
    if not folders:
        raise DatasetError(
            f"{image_root} has no class folders. Expected layout:\n{layout(cfg)}"
        )
    splits: dict[str, list[Datum]] = {"train": [], "val": [], "test": []}
    notes = []
    for label, folder in enumerate(folders):
        class_dir = os.path.join(image_root, folder)
        images = list_images(Path(class_dir))
        if not images:
            raise DatasetError(
                f"class folder {class_dir} holds no images (extensions .jpg, .png, ...); remove the folder "
                f"or add images."
            )
        shuffled = draw_without_replacement(images, len(images), seeded_rng("imagefolder", seed, folder))
        n_train = round(len(images) * p_train)
        n_val = round(len(images) * p_val)
        parts = {"train": shuffled[:n_train], "val": shuffled[n_train:n_train + n_val],
                 "test": shuffled[n_train + n_val:]}
        classname = clean_classname(folder)
        for split, names in parts.items():
            splits[split].extend(
                Datum(impath=os.path.join(class_dir, image), label=label, classname=classname)
                for image in sorted(names)
            )
        empty = [split for split, names in parts.items() if not names]
        if empty:
            notes.append(f"class {folder!r} has {len(images)} image(s): no image in split(s) {empty}.")
    return DatasetSplits(
        name=name,
        dataset_dir=dataset_dir,
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        classnames=[clean_classname(f) for f in folders],
        notes=notes,
    )


def _fractions(cfg: Mapping[str, Any]) -> tuple[float, float]:
    fractions = cfg.get("split_fractions") or {}
    p_train, p_val = float(fractions.get("train", 0.5)), float(fractions.get("val", 0.2))
    if not (0 < p_train <= 1 and 0 <= p_val and p_train + p_val <= 1):
        raise DatasetError(
            f"split_fractions train={p_train}, val={p_val} are invalid: expected 0 < train, 0 <= val and "
            f"train + val <= 1 (the rest is test). Set e.g. dataset.split_fractions.train=0.5."
        )
    return p_train, p_val
