"""Few-shot sampling: K training images per class, drawn reproducibly, saved in a readable file.

Protocol (CoOp datasets/*.py with Dassl base_dataset.py, generate_fewshot_dataset): per label, `shots`
training images; validation keeps min(shots, 4) per label; test is untouched; shots < 1 means "all".
The reference draws with the global `random` state from lists in file-system order and pickles the
result with absolute paths (`split_fewshot/shot_{K}-seed_{S}.pkl`). Here each label's items are sorted
by path and drawn with a local RNG seeded by (seed, label), so the selection does not depend on
listing order, on other classes or on global state, and it is saved as JSON with paths relative to the
dataset folder. Where a class has fewer images than `shots`, each image is kept once and a note is
recorded; so does the reference, whose readers call `generate_fewshot_dataset` without `repeat=True`
(only that would draw with replacement). Rule and sources: docs/reference.md, "Few-shot sampling".
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from promptlab.data.errors import DatasetError
from promptlab.data.types import DatasetSplits, Datum
from promptlab.errors import ConfigError
from promptlab.io import atomic_write_json

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Validation images per class, whatever the number of shots (CoOp: `min(num_shots, 4)`).
MAX_VAL_SHOTS = 4
FEWSHOT_DIRNAME = "split_fewshot"
FILE_FORMAT = 1


def seeded_rng(*parts: object) -> random.Random:
    """A private RNG seeded from `parts` (e.g. seed and label).

    Seeding with a string uses SHA-512 of its bytes, a seeding that Python guarantees to keep, and
    the draws below use only `random()`, whose stream Python also guarantees: the same parts give the
    same selection on every machine and Python version.
    """
    return random.Random("promptlab:" + ":".join(str(p) for p in parts))


def draw_without_replacement(items: Sequence[T], k: int, rng: random.Random) -> list[T]:
    """The first k steps of a Fisher-Yates shuffle (uses only `rng.random()`, see `seeded_rng`)."""
    pool = list(items)
    k = min(k, len(pool))
    for i in range(k):
        j = i + int(rng.random() * (len(pool) - i))
        pool[i], pool[j] = pool[j], pool[i]
    return pool[:k]


def _check_shots(shots: int) -> None:
    if not isinstance(shots, int) or isinstance(shots, bool) or (shots < 1 and shots != -1):
        raise ConfigError(f"shots must be a positive integer or -1 (all images), got {shots!r}.")


def sample_few_shot(items: list[Datum], shots: int, seed: int) -> tuple[list[Datum], list[str]]:
    """Draw `shots` items per label (all of them when shots == -1).

    Returns the selection, ordered by label then path, and notes for classes that have fewer than
    `shots` items (those keep all their items).
    """
    _check_shots(shots)
    by_label: dict[int, list[Datum]] = defaultdict(list)
    for item in items:
        by_label[item.label].append(item)
    selected: list[Datum] = []
    notes: list[str] = []
    for label in sorted(by_label):
        pool = sorted(by_label[label], key=lambda d: d.impath)
        if shots == -1:
            selected.extend(pool)
            continue
        if len(pool) < shots:
            note = (
                f"class {label} ({pool[0].classname!r}) has {len(pool)} image(s), fewer than shots={shots}: "
                f"all {len(pool)} kept (the reference keeps them once too)."
            )
            log.warning(note)
            notes.append(note)
        chosen = draw_without_replacement(pool, shots, seeded_rng(seed, label))
        selected.extend(sorted(chosen, key=lambda d: d.impath))
    return selected, notes


def fewshot_splits(splits: DatasetSplits, shots: int, seed: int, cache_dir: Path | None) -> DatasetSplits:
    """Train = `shots` per class, val = min(shots, 4) per class, test untouched.

    The selection is saved as `shot_{K}-seed_{S}.json` in `cache_dir`, or by default in
    `<dataset_dir>/split_fewshot/` (the reference's folder), falling back to
    `~/.cache/promptlab/split_fewshot/<dataset>-<hash of dataset_dir>/` when the data root is read-only.
    An existing file is reused after checking that every image it lists is still in the dataset with the
    same label and on disk; if not, a `DatasetError` says which image and how to resample.
    """
    _check_shots(shots)
    if shots == -1:
        return splits
    filename = f"shot_{shots}-seed_{seed}.json"
    candidates = [Path(cache_dir) / filename] if cache_dir is not None else [
        Path(splits.dataset_dir) / FEWSHOT_DIRNAME / filename,
        _user_cache_dir(splits) / filename,
    ]
    existing = next((path for path in candidates if path.is_file()), None)
    if existing is not None:
        train, val, notes = _load_selection(existing, splits, shots, seed)
        source = f"few-shot selection reused from {existing}"
    else:
        train, train_notes = sample_few_shot(splits.train, shots, seed)
        val, val_notes = sample_few_shot(splits.val, min(shots, MAX_VAL_SHOTS), seed)
        notes = [f"train: {n}" for n in train_notes] + [f"val: {n}" for n in val_notes]
        payload = _selection_payload(splits, shots, seed, train, val, notes)
        written = _write_first_possible(candidates, payload)
        source = f"few-shot selection drawn and saved to {written}"
    log.info(source)
    return replace(splits, train=train, val=val, notes=[*splits.notes, *notes, source])


def _user_cache_dir(splits: DatasetSplits) -> Path:
    # The dataset-dir hash keeps two datasets of the same name (e.g. two toy worlds) apart.
    digest = hashlib.sha1(str(Path(splits.dataset_dir).resolve()).encode()).hexdigest()[:8]
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "promptlab" / FEWSHOT_DIRNAME / f"{splits.name}-{digest}"


def _relpath(item: Datum, dataset_dir: Path) -> str:
    # Prefix stripping first: readers build paths as dataset_dir + relative path, and os.path.relpath
    # costs ~8 us a call (10 s over ImageNet's 1.28 M training images).
    prefix = os.path.join(str(dataset_dir), "")
    if item.impath.startswith(prefix):
        return item.impath[len(prefix):].replace(os.sep, "/")
    return Path(os.path.relpath(item.impath, dataset_dir)).as_posix()


def _pool_fingerprint(items: Sequence[Datum], dataset_dir: Path) -> str:
    entries = sorted(f"{_relpath(d, dataset_dir)}\t{d.label}" for d in items)
    return hashlib.sha256("\n".join(entries).encode()).hexdigest()


def _selection_payload(
    splits: DatasetSplits, shots: int, seed: int, train: list[Datum], val: list[Datum], notes: list[str]
) -> dict[str, Any]:
    root = Path(splits.dataset_dir)
    return {
        "format": FILE_FORMAT,
        "dataset": splits.name,
        "shots": shots,
        "seed": seed,
        "val_shots": min(shots, MAX_VAL_SHOTS),
        "paths_relative_to": "dataset_dir",
        # Fingerprints of the pools the selection was drawn from: a change is reported, not fatal.
        "pool_sha256": {
            "train": _pool_fingerprint(splits.train, root),
            "val": _pool_fingerprint(splits.val, root),
        },
        "notes": notes,
        "train": [[_relpath(d, root), d.label] for d in train],
        "val": [[_relpath(d, root), d.label] for d in val],
    }


def _write_first_possible(candidates: list[Path], payload: dict[str, Any]) -> Path:
    errors = []
    for path in candidates:
        try:
            _write_json_atomic(path, payload)
            return path
        except OSError as err:  # read-only data root, no permission: try the next location
            errors.append(f"{path}: {err}")
            log.info("cannot write few-shot selection to %s (%s)", path, err)
    raise DatasetError(
        "could not save the few-shot selection anywhere: " + "; ".join(errors)
        + ". Pass a writable cache folder (fewshot_splits(..., cache_dir=...))."
    )


def _write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    # Atomic: readers never see a half-written file, and jobs of a sweep that draw the same selection
    # at the same time simply replace it with identical bytes. Mode follows the umask: the data root
    # is often shared by a group.
    atomic_write_json(path, payload, indent=1)


def _load_selection(
    path: Path, splits: DatasetSplits, shots: int, seed: int
) -> tuple[list[Datum], list[Datum], list[str]]:
    try:
        with open(path, encoding="utf-8") as f:
            payload = json.load(f)
        ok = payload.get("shots") == shots and payload.get("seed") == seed
    except (OSError, json.JSONDecodeError, AttributeError):
        ok = False
    if not ok:
        raise DatasetError(
            f"few-shot selection {path} is unreadable or not for shots={shots}, seed={seed}. "
            f"Delete it to draw a new selection."
        )
    root = Path(splits.dataset_dir)
    notes = list(payload.get("notes", []))
    selected = {}
    for split, pool in (("train", splits.train), ("val", splits.val)):
        selected[split] = _resolve(payload.get(split, []), pool, root, path, split, shots, seed)
        fingerprint = payload.get("pool_sha256", {}).get(split)
        if fingerprint and fingerprint != _pool_fingerprint(pool, root):
            note = (
                f"{split} pool of {splits.name} changed since {path} was drawn; its selection is still "
                f"valid and is reused (delete the file to draw from the current pool)."
            )
            log.warning(note)
            notes.append(note)
    return selected["train"], selected["val"], notes


def _resolve(
    entries: list[Any], pool: list[Datum], root: Path, path: Path, split: str, shots: int, seed: int
) -> list[Datum]:
    by_relpath = {_relpath(d, root): d for d in pool}
    items, problems = [], []
    for relpath, label in entries:
        item = by_relpath.get(relpath)
        if item is None:
            problems.append(f"{relpath} (label {label}) is not in the {split} split any more")
        elif item.label != label:
            problems.append(f"{relpath} has label {item.label} now, {label} when drawn")
        elif not os.path.isfile(item.impath):
            problems.append(f"{relpath} (label {label}) is missing on disk ({item.impath})")
        else:
            items.append(item)
    if problems:
        raise DatasetError(
            f"few-shot selection {path} does not match the dataset: {len(problems)} image(s) differ, e.g. "
            f"{problems[0]}. Restore the image(s), or delete {path} to draw a new {shots}-shot selection "
            f"with seed {seed}."
        )
    return items
