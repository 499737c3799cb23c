"""Readers for ImageNet and its test-only variants (class folders + CoOp's `classnames.txt`).

ImageNet (CoOp datasets/imagenet.py, DATASETS.md): `imagenet/images/{train,val}/<wnid>/*.JPEG` and
`imagenet/classnames.txt` ("<wnid> <class name>" lines). Labels follow the sorted wnid folders of
train/. The validation set is the test set ("standard practice", CoOp) and also serves as val, as in the
reference (`super().__init__(train_x=train, val=test, test=test)`); few-shot sampling then shrinks val.
The reference lists the images of a folder unsorted (`listdir_nohidden` without sort): we sort.

Variants (CoOp datasets/imagenetv2.py, imagenet_sketch.py, imagenet_a.py, imagenet_r.py), test only:
- class_folders "index" (ImageNet-V2, `imagenetv2/imagenetv2-matched-frequency-format-val/<i>/`): folder
  `i` holds class i, whose name is line i of classnames.txt.
- class_folders "wnid" (ImageNet-Sketch `imagenet-sketch/images/`, ImageNet-A
  `imagenet-adversarial/imagenet-a/`, ImageNet-R `imagenet-rendition/imagenet-r/`): the wnid folders
  present, sorted, are labelled 0..n-1, so the 200-class A and R are relabelled 0..199 in sorted wnid
  order exactly as the reference; their README.txt is a file, not a class folder, and is ignored.

Without `classnames.txt` (CoOp links it from Google Drive), the names come from open_clip's copy of the
same list (`open_clip.zero_shot_metadata.IMAGENET_CLASSNAMES`, OpenAI CLIP's ImageNet notebook), which is
ordered by class index, i.e. by sorted wnid: it applies wherever the folders are all 1,000 classes (ImageNet's
train/, ImageNet-Sketch, ImageNet-V2's index folders). The 200-class subsets (-A, -R) cannot be matched to
it by position: they use `imagenet/classnames.txt` of the same data root when present
(`promptlab-data prepare imagenet` writes it), else they ask for the file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from promptlab.data.errors import DatasetError, missing_dataset_path
from promptlab.data.readers.common import (
    cfg_value,
    display_name,
    layout_tree,
    list_images,
    list_subfolders,
    read_wnid_classnames,
    require_dir,
)
from promptlab.data.types import DatasetSplits, Datum


def layout_imagenet(cfg: Mapping[str, Any]) -> str:
    image_dir = cfg.get("image_dir")
    return layout_tree(str(cfg.get("dataset_dir")), [
        f"{image_dir}/{cfg.get('train_dir')}/  (one folder per class, e.g. n01440764/)",
        f"{image_dir}/{cfg.get('test_dir')}/  (same class folders)",
        f"{cfg.get('classnames_file')}  (lines '<wnid> <class name>')",
    ])


def layout_variant(cfg: Mapping[str, Any]) -> str:
    folders = "0/ .. 999/" if cfg.get("class_folders") == "index" else "n01443537/ ... (wnid folders)"
    return layout_tree(str(cfg.get("dataset_dir")), [
        f"{cfg.get('image_dir')}/  (class folders {folders})",
        f"{cfg.get('classnames_file')}  (copied from imagenet/)",
    ])


def read_imagenet(cfg: Mapping[str, Any], dataset_dir: Path) -> DatasetSplits:
    reader = "imagenet"
    image_root = dataset_dir / str(cfg_value(cfg, "image_dir", reader))
    train_root = require_dir(image_root / str(cfg_value(cfg, "train_dir", reader)), cfg, "train folder",
                             layout_imagenet(cfg))
    test_root = require_dir(image_root / str(cfg_value(cfg, "test_dir", reader)), cfg, "val folder",
                            layout_imagenet(cfg))
    names_path = dataset_dir / str(cfg_value(cfg, "classnames_file", reader))
    folders = list_subfolders(train_root)
    names, names_note = _wnid_names(names_path, folders, cfg, layout_imagenet(cfg))
    classnames = _lookup_names(folders, names, names_path, train_root)
    label_of = {folder: label for label, folder in enumerate(folders)}
    unknown = sorted(set(list_subfolders(test_root)) - set(label_of))
    if unknown:
        raise DatasetError(
            f"ImageNet: {test_root} has class folder(s) {unknown[:5]} that {train_root} does not have; "
            f"train and val must hold the same classes."
        )
    train = _read_class_folders(train_root, folders, label_of, classnames)
    test = _read_class_folders(test_root, list_subfolders(test_root), label_of, classnames)
    return DatasetSplits(
        name=str(cfg_value(cfg, "name", reader)),
        dataset_dir=dataset_dir,
        train=train,
        val=list(test),
        test=test,
        classnames=classnames,
        notes=[names_note] if names_note else [],
        class_source=names_path if not names_note else train_root,
    )


def read_imagenet_variant(cfg: Mapping[str, Any], dataset_dir: Path) -> DatasetSplits:
    reader = "imagenet_variant"
    image_root = require_dir(dataset_dir / str(cfg_value(cfg, "image_dir", reader)), cfg, "image folder",
                             layout_variant(cfg))
    names_path = dataset_dir / str(cfg_value(cfg, "classnames_file", reader))
    scheme = cfg_value(cfg, "class_folders", reader)
    if not names_path.is_file() and scheme == "index":
        names, names_note = open_clip_names([str(i) for i in range(IMAGENET_NUM_CLASSES)]), OPEN_CLIP_NOTE
    else:
        names, names_note = _wnid_names(names_path, list_subfolders(image_root) if scheme == "wnid" else [], cfg,
                                        layout_variant(cfg))
    if scheme == "index":
        folders = [str(label) for label in range(len(names))]
        classnames = list(names.values())
        absent = [f for f in folders if not (image_root / f).is_dir()]
        if absent:
            raise DatasetError(
                f"{display_name(cfg)}: class folder(s) {absent[:5]} missing under {image_root}; expected one "
                f"folder per line of {names_path} ({len(folders)} folders named 0..{len(folders) - 1})."
            )
    elif scheme == "wnid":
        folders = list_subfolders(image_root)
        classnames = _lookup_names(folders, names, names_path, image_root)
    else:
        raise DatasetError(
            f"dataset config {cfg.get('name')!r}: class_folders must be 'index' or 'wnid', got {scheme!r}."
        )
    label_of = {folder: label for label, folder in enumerate(folders)}
    test = _read_class_folders(image_root, folders, label_of, classnames)
    return DatasetSplits(
        name=str(cfg_value(cfg, "name", reader)),
        dataset_dir=dataset_dir,
        train=[],
        val=[],
        test=test,
        classnames=classnames,
        notes=[names_note] if names_note else [],
        class_source=names_path if not names_note else image_root,
    )


IMAGENET_NUM_CLASSES = 1000
OPEN_CLIP_NOTE = ("class names from open_clip's ImageNet list (open_clip.zero_shot_metadata.IMAGENET_CLASSNAMES, "
                  "OpenAI CLIP's names): no classnames.txt in the dataset folder")


def open_clip_names(folders: list[str]) -> dict[str, str]:
    """Folder -> class name for the 1,000 ImageNet classes, folders in class-index (sorted wnid) order."""
    # Imported here: open_clip pulls in torch, which reading other datasets (and the tables) need not load.
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    assert len(folders) == IMAGENET_NUM_CLASSES
    return dict(zip(folders, IMAGENET_CLASSNAMES, strict=True))


def _wnid_names(
    names_path: Path, folders: list[str], cfg: Mapping[str, Any], layout: str
) -> tuple[dict[str, str], str | None]:
    """The wnid -> name map: the dataset's classnames.txt, else the data root's imagenet/classnames.txt, else
    open_clip's list when `folders` are the 1,000 classes; a note says which (None: the dataset's own file)."""
    if names_path.is_file():
        return read_wnid_classnames(names_path), None
    shared = names_path.parent.parent / "imagenet" / names_path.name
    if shared.is_file():
        return read_wnid_classnames(shared), f"class names read from {shared} (no {names_path.name} in the folder)"
    if len(folders) == IMAGENET_NUM_CLASSES and all(f.startswith("n") for f in folders):
        return open_clip_names(folders), OPEN_CLIP_NOTE
    raise missing_dataset_path(
        display_name(cfg), f"class-name file (open_clip's list needs all {IMAGENET_NUM_CLASSES} wnid folders "
        f"to name classes by position; {len(folders)} found)", names_path, layout, display_name(cfg))


def _lookup_names(folders: list[str], names: Mapping[str, str], names_path: Path, root: Path) -> list[str]:
    unknown = [f for f in folders if f not in names]
    if unknown:
        raise DatasetError(
            f"class folder(s) {unknown[:5]} under {root} are not listed in {names_path}. Use the "
            f"classnames.txt from CoOp's DATASETS.md (ImageNet section) and keep only class folders there."
        )
    return [names[f] for f in folders]


def _read_class_folders(
    root: Path, folders: list[str], label_of: Mapping[str, int], classnames: list[str]
) -> list[Datum]:
    items = []
    for folder in folders:
        label = label_of[folder]
        class_dir = os.path.join(root, folder)
        items.extend(
            Datum(impath=os.path.join(class_dir, image), label=label, classname=classnames[label])
            for image in list_images(Path(class_dir))
        )
    return items
