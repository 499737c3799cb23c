"""Dassl few-shot selections (`<dataset>/split_fewshot/shot_K-seed_S.pkl`) to promptlab's JSON selections.

The reference (CoOp repo datasets/oxford_pets.py and the other readers; Dassl
dassl/data/datasets/base_dataset.py) pickles {"train": [Datum], "val": [Datum]} (ImageNet: "train" only) with
protocol HIGHEST_PROTOCOL; a Datum keeps `_impath` (absolute, on the machine that drew it), `_label` (in the
dataset's full class list, before the base/novel split), `_domain` and `_classname`. The selection was drawn
before the base/novel subsampling, as promptlab's is.

promptlab's selection file (data/fewshot.py) stores paths relative to the dataset folder. The reference's
absolute paths are made relative by cutting them after the dataset folder's name (e.g. ".../oxford_pets/") or
after `reference_root` when given. Written as `shot_K-seed_S.json`; a run reads it from the dataset's
`split_fewshot/` folder (the default, where the reference's .pkl files also live) or from `paths.fewshot_dir`.
At run time promptlab checks every image against the dataset (present, same label) and refuses a mismatch.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from promptlab.data.fewshot import FILE_FORMAT, MAX_VAL_SHOTS
from promptlab.errors import ConfigError, MissingPathError, PathConflictError
from promptlab.io import atomic_write_json
from promptlab.reference_import.unpickler import InertObject, load_file

log = logging.getLogger(__name__)

SHOT_FILE = re.compile(r"^shot_(?P<shots>\d+)-seed_(?P<seed>\d+)\.pkl$")


def _parts(impath: str) -> tuple[str, ...]:
    # The reference may have run on Windows: accept either separator.
    return (PureWindowsPath(impath) if "\\" in impath else PurePosixPath(impath)).parts


def relative_path(impath: str, dataset_dirname: str, reference_root: str | None = None) -> str:
    """The path of a reference image relative to its dataset folder (posix separators)."""
    if reference_root is not None:
        root = _parts(reference_root)
        parts = _parts(impath)
        if parts[: len(root)] != root:
            raise ConfigError(f"image {impath} is not under --reference-root {reference_root}.")
        return "/".join(parts[len(root):])
    parts = _parts(impath)
    name = _parts(dataset_dirname)[-1]
    hits = [i for i, part in enumerate(parts[:-1]) if part == name]
    if not hits:
        raise ConfigError(
            f"image {impath} has no folder named {name!r} (the dataset folder) in its path: pass --reference-root "
            "with the dataset folder as it was on the machine that drew the selection.")
    return "/".join(parts[hits[-1] + 1:])


def datum_entry(datum: Any, dataset_dirname: str, reference_root: str | None) -> tuple[str, int]:
    if not isinstance(datum, InertObject) or datum.get("_impath") is None:
        raise ConfigError(f"expected Dassl Datum objects in the selection, found {datum!r}.")
    return relative_path(str(datum.get("_impath")), dataset_dirname, reference_root), int(datum.get("_label"))


def convert_file(
    pkl: Path, out_dir: Path, dataset_dir: Path, reference_root: str | None = None, force: bool = False,
    dataset: str | None = None,
) -> Path:
    """One shot_K-seed_S.pkl to out_dir/shot_K-seed_S.json; returns the written path."""
    match = SHOT_FILE.match(pkl.name)
    if not match:
        raise ConfigError(f"{pkl.name}: expected the reference's name shot_<K>-seed_<S>.pkl.")
    shots, seed = int(match["shots"]), int(match["seed"])
    data = load_file(pkl)
    if not isinstance(data, dict) or "train" not in data:
        raise ConfigError(f"{pkl} is not a Dassl few-shot selection (a dict with 'train' and 'val' lists).")
    entries = {split: [datum_entry(d, str(dataset_dir), reference_root) for d in data.get(split) or []]
               for split in ("train", "val")}
    local = [rel for rel, _ in entries["train"] + entries["val"] if not (dataset_dir / rel).is_file()]
    notes = [f"imported from the reference's {pkl.name} (Dassl pickle): the exact images the reference trained on"]
    if "val" not in data:
        notes.append("the reference stored no val split in this file (its ImageNet reader): val is empty")
    if local:
        n = len(entries["train"]) + len(entries["val"])
        message = (f"{len(local)} of {n} images of {pkl.name} are not under {dataset_dir} (e.g. {local[0]}); a run "
                   "refuses the selection until they are")
        if len(local) == n:
            raise MissingPathError(f"none of the images of {pkl.name} are under {dataset_dir} (e.g. {local[0]}): "
                                   "pass --dataset-dir (your copy of the dataset) or --reference-root.")
        log.warning(message)
        notes.append(message)
    payload = {
        "format": FILE_FORMAT,
        "dataset": dataset or dataset_dir.name,
        "shots": shots,
        "seed": seed,
        "val_shots": min(shots, MAX_VAL_SHOTS),
        "paths_relative_to": "dataset_dir",
        "source": {"format": "dassl", "file": str(pkl.resolve())},
        "notes": notes,
        "train": [[rel, label] for rel, label in entries["train"]],
        "val": [[rel, label] for rel, label in entries["val"]],
    }
    target = out_dir / f"shot_{shots}-seed_{seed}.json"
    if target.exists() and not force:
        raise PathConflictError(f"{target} exists (a selection promptlab drew, or an earlier import); pass --force "
                                "to replace it, or --out another folder and run with paths.fewshot_dir=<it>.")
    atomic_write_json(target, payload, indent=1)
    return target


def import_shots(
    source: Path, out_dir: Path | None = None, dataset_dir: Path | None = None, reference_root: str | None = None,
    force: bool = False, dataset: str | None = None,
) -> list[Path]:
    """Convert a reference split_fewshot folder (or one .pkl). Defaults: out_dir = the folder of the .pkl files
    (the dataset's split_fewshot/, where promptlab looks first); dataset_dir = its parent (the CoOp layout)."""
    source = Path(source)
    if not source.exists():
        raise MissingPathError(f"{source}: no such file or folder (a split_fewshot folder or a shot_K-seed_S.pkl).")
    files: Sequence[Path] = [source] if source.is_file() else sorted(
        p for p in source.iterdir() if SHOT_FILE.match(p.name))
    if not files:
        raise MissingPathError(f"{source} holds no shot_<K>-seed_<S>.pkl file.")
    folder = source.parent if source.is_file() else source
    out_dir = Path(out_dir) if out_dir is not None else folder
    dataset_dir = Path(dataset_dir) if dataset_dir is not None else folder.parent
    os.makedirs(out_dir, exist_ok=True)
    return [convert_file(p, out_dir, dataset_dir, reference_root, force, dataset) for p in files]
