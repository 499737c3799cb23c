"""Helpers shared by the dataset readers: config access, listings, class names, path checks."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from promptlab.data.errors import DatasetError, missing_dataset_path

# Extensions accepted when a reader lists image files itself (folder layouts). Generous on purpose:
# the real datasets use .jpg, .JPEG (ImageNet, -Sketch), .jpeg (ImageNet-V2) and .png.
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"})


def clean_classname(name: str) -> str:
    """The name used in prompts: underscores become spaces, as CoOp does when it builds prompts
    (CoOp trainers/coop.py and trainers/zsclip.py: `name.replace("_", " ")`)."""
    return name.replace("_", " ").strip()


def cfg_value(cfg: Mapping[str, Any], key: str, reader: str | None) -> Any:
    """A required key of a dataset config, with an error naming the config and the reader (if any)."""
    if key not in cfg or cfg[key] is None:
        needed_by = f", which reader {reader!r} needs" if reader else ""
        raise DatasetError(
            f"dataset config {cfg.get('name', '?')!r} has no value for {key!r}{needed_by}. Add `{key}: ...` "
            f"to conf/dataset/{cfg.get('name', '<name>')}.yaml or pass dataset.{key}=... on the command line."
        )
    return cfg[key]


def display_name(cfg: Mapping[str, Any]) -> str:
    return str(cfg.get("display_name") or cfg.get("name") or "dataset")


def layout_tree(root_name: str, entries: Iterable[str]) -> str:
    """An indented tree for error messages: `root/` followed by its entries."""
    lines = [f"  {root_name}/"] + [f"  |-- {entry}" for entry in entries]
    return "\n".join(lines)


def _coop_section(cfg: Mapping[str, Any]) -> str | None:
    # Every dataset but your own image folder is documented in CoOp's DATASETS.md under its display name.
    return None if cfg.get("reader") == "imagefolder" else display_name(cfg)


def require_dir(path: Path, cfg: Mapping[str, Any], what: str, layout: str) -> Path:
    if not path.is_dir():
        raise missing_dataset_path(display_name(cfg), what, path, layout, _coop_section(cfg))
    return path


def require_file(path: Path, cfg: Mapping[str, Any], what: str, layout: str) -> Path:
    if not path.is_file():
        raise missing_dataset_path(display_name(cfg), what, path, layout, _coop_section(cfg))
    return path


def _visible(entry: os.DirEntry[str]) -> bool:
    # Hidden entries (.DS_Store, ._foo.jpg from macOS archives) are skipped like Dassl's listdir_nohidden.
    return not entry.name.startswith(".")


def list_subfolders(folder: Path) -> list[str]:
    """Names of the visible sub-folders, sorted (the reference lists some folders unsorted: we sort,
    so labels and samples do not depend on the file system)."""
    with os.scandir(folder) as entries:
        return sorted(e.name for e in entries if _visible(e) and e.is_dir())


def list_images(folder: Path) -> list[str]:
    """Names of the visible image files in `folder`, sorted."""
    with os.scandir(folder) as entries:
        return sorted(
            e.name
            for e in entries
            if _visible(e) and e.is_file() and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS
        )


def keyed_lines(path: Path) -> Iterator[tuple[int, str, str, str]]:
    """(line number, stripped line, first word, rest) of each non-blank line of a "<key> <rest>" list file."""
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            line = line.strip()
            if line:
                key, _, rest = line.partition(" ")
                yield line_no, line, key, rest


def read_wnid_classnames(path: Path) -> dict[str, str]:
    """Read CoOp's ImageNet `classnames.txt`: one "<wnid> <class name>" line per class, in file order
    (format from CoOp datasets/imagenet.py, read_classnames; names copied from OpenAI CLIP)."""
    names: dict[str, str] = {}
    for line_no, line, folder, name in keyed_lines(path):
        if not name.strip():
            raise DatasetError(
                f"{path}, line {line_no}: expected '<folder> <class name>', got {line!r}. "
                f"Use the classnames.txt linked from CoOp's DATASETS.md (ImageNet section)."
            )
        if folder in names:
            raise DatasetError(f"{path}, line {line_no}: folder {folder!r} is listed twice.")
        names[folder] = clean_classname(name)
    return names


def classnames_from_labels(label_to_name: Mapping[int, str], source: Path) -> list[str]:
    """The class-name list indexed by label; labels must be exactly 0..n-1."""
    n = len(label_to_name)
    missing = sorted(set(range(n)) - set(label_to_name))
    if missing or (n and max(label_to_name) != n - 1):
        raise DatasetError(
            f"{source}: labels must be 0..{n - 1} without gaps, found {n} distinct labels "
            f"(min {min(label_to_name)}, max {max(label_to_name)}). The file is not in the expected format "
            f"or is incomplete; re-download it."
        )
    return [label_to_name[label] for label in range(n)]
