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
from collections.abc import Callable, Sequence
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


def draw_without_replacement(
    items: Sequence[T], k: int, rng: random.Random, usable: Callable[[T], bool] | None = None
) -> list[T]:
    """The first k steps of a Fisher-Yates shuffle (uses only `rng.random()`, see `seeded_rng`).

    With `usable`, an item it rejects is passed over and the shuffle goes on until k usable items are
    drawn (or the pool ends): when every item is usable the draw is exactly the plain one, and a missing
    image only changes its own slot of the selection.
    """
    pool = list(items)
    chosen: list[T] = []
    i = 0
    while len(chosen) < k and i < len(pool):
        j = i + int(rng.random() * (len(pool) - i))
        pool[i], pool[j] = pool[j], pool[i]
        if usable is None or usable(pool[i]):
            chosen.append(pool[i])
        i += 1
    return chosen


def image_on_disk(item: Datum) -> bool:
    """Whether a drawn image can go into a saved selection: it must exist (one stat per drawn image)."""
    return os.path.isfile(item.impath)


def _check_shots(shots: int) -> None:
    if not isinstance(shots, int) or isinstance(shots, bool) or (shots < 1 and shots != -1):
        raise ConfigError(f"shots must be a positive integer or -1 (all images), got {shots!r}.")


def sample_few_shot(
    items: list[Datum], shots: int, seed: int, usable: Callable[[Datum], bool] | None = None, split: str = ""
) -> tuple[list[Datum], list[str]]:
    """Draw `shots` items per label (all of them when shots == -1), passing over those `usable` rejects.

    Returns the selection, ordered by label then path, and notes: one summary for the classes that have
    fewer than `shots` items (those keep all their items), one for images passed over. The warnings are
    summaries too: one line, not one per class (ImageNet has 1,000); `split` ("train", "val") prefixes them.
    """
    _check_shots(shots)
    by_label: dict[int, list[Datum]] = defaultdict(list)
    for item in items:
        by_label[item.label].append(item)
    selected: list[Datum] = []
    short: list[str] = []
    passed_over: list[str] = []
    for label in sorted(by_label):
        pool = sorted(by_label[label], key=lambda d: d.impath)
        if shots == -1:
            selected.extend(pool)
            continue
        if len(pool) < shots:
            short.append(f"class {label} ({pool[0].classname!r}) has {len(pool)} image(s)")

        def keep(item: Datum) -> bool:
            ok = usable is None or usable(item)
            if not ok:
                passed_over.append(item.impath)
            return ok

        chosen = draw_without_replacement(pool, shots, seeded_rng(seed, label), keep)
        selected.extend(sorted(chosen, key=lambda d: d.impath))
    notes = []
    prefix = f"{split}: " if split else ""
    if short:
        note = prefix + (
            f"{len(short)} of {len(by_label)} classes have fewer images than shots={shots}, all kept once (as the "
            f"reference does): {_listing(short)}"
        )
        log.warning(note)
        notes.append(note)
    if passed_over:
        note = prefix + (
            f"{len(passed_over)} drawn image(s) missing on disk were passed over and the next ones drawn "
            f"instead: {_listing(passed_over)}"
        )
        log.warning(note)
        notes.append(note)
    return selected, notes


def _listing(entries: Sequence[str], limit: int = 10) -> str:
    more = f" and {len(entries) - limit} more" if len(entries) > limit else ""
    return "; ".join(entries[:limit]) + more


def empty_classes_note(splits: DatasetSplits, train: Sequence[Datum]) -> str | None:
    """A warning (and record note) for classes with no training image: they would train on 0 shots."""
    present = {d.label for d in train}
    empty = [f"class {label} ({name!r})" for label, name in enumerate(splits.classnames) if label not in present]
    if not empty or not train:
        return None  # test-only datasets have no training split at all; they are refused as a source elsewhere
    note = (
        f"{len(empty)} of {splits.num_classes} classes of {splits.name} have no training image: their prompts "
        f"are trained on 0 shots, {_listing(empty)}. Check the dataset's train split."
    )
    log.warning(note)
    return note


def fewshot_splits(
    splits: DatasetSplits, shots: int, seed: int, cache_dir: Path | None, save: bool = True
) -> DatasetSplits:
    """Train = `shots` per class, val = min(shots, 4) per class, test untouched.

    The selection is saved as `shot_{K}-seed_{S}.json` in `cache_dir`, or by default in
    `<dataset_dir>/split_fewshot/` (the reference's folder), falling back to
    `~/.cache/promptlab/split_fewshot/<dataset>-<hash of dataset_dir>/` when the data root is read-only.
    An existing file is reused after checking that every image it lists is still in the dataset with the
    same label and on disk; if not, a `DatasetError` says which image and how to resample. A drawn image
    that is missing on disk is passed over (the next one is drawn), so a saved selection never lists one.
    `save=False` (runs that do not train: zero-shot) draws the same selection without writing a file.
    Saving is optional: when no location is writable the run goes on with a warning.
    """
    _check_shots(shots)
    if shots == -1:
        note = empty_classes_note(splits, splits.train)
        return replace(splits, notes=[*splits.notes, note]) if note else splits
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
        train, train_notes = sample_few_shot(splits.train, shots, seed, usable=image_on_disk, split="train")
        val, val_notes = sample_few_shot(splits.val, min(shots, MAX_VAL_SHOTS), seed, usable=image_on_disk,
                                         split="val")
        notes = train_notes + val_notes
        if not save:
            source = "few-shot selection drawn, not saved (this run does not train)"
        else:
            payload = _selection_payload(splits, shots, seed, train, val, notes)
            written = _write_first_possible(candidates, payload)
            source = (f"few-shot selection drawn and saved to {written}" if written is not None
                      else "few-shot selection drawn, not saved (no writable location)")
    empty = empty_classes_note(splits, train)
    log.info(source)
    return replace(splits, train=train, val=val, notes=[*splits.notes, *notes, *([empty] if empty else []), source])


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


def _write_first_possible(candidates: list[Path], payload: dict[str, Any]) -> Path | None:
    errors = []
    for path in candidates:
        try:
            _write_json_atomic(path, payload)
            return path
        except OSError as err:  # read-only data root, no permission: try the next location
            errors.append(f"{path}: {err}")
            log.info("cannot write few-shot selection to %s (%s)", path, err)
    # The selection is a pure function of (pool, shots, seed): not saving it costs a redraw, never a result.
    log.warning("could not save the few-shot selection anywhere (%s); the run goes on with the selection "
                "drawn in memory. Set paths.fewshot_dir to a writable folder to keep it.", "; ".join(errors))
    return None


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


def selection_files(splits: DatasetSplits, fewshot_dir: Path | None = None) -> list[Path]:
    """The saved selections of a dataset: promptlab's JSON files and the reference's pickles, in every place
    `fewshot_splits` writes them (the dataset's split_fewshot/, the user cache, `fewshot_dir`)."""
    folders = [Path(splits.dataset_dir) / FEWSHOT_DIRNAME, _user_cache_dir(splits)]
    if fewshot_dir is not None:
        folders.append(Path(fewshot_dir))
    files: list[Path] = []
    for folder in folders:
        if folder.is_dir():
            files += sorted(p for p in folder.iterdir() if p.suffix in (".json", ".pkl") and p.name.startswith("shot_"))
    return files


def check_selection(path: Path, splits: DatasetSplits) -> str | None:
    """None if the saved selection at `path` can be reused on `splits` (every image still listed with its
    label and on disk), else what is wrong and what to do."""
    if path.suffix == ".pkl":
        return None  # the reference's pickle (Dassl objects): promptlab never reads it, so it cannot mislead
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
        shots, seed = payload["shots"], payload["seed"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"{path} is not a readable selection ({err!r}); delete it to draw a new one."
    try:
        _load_selection(path, splits, shots, seed)
    except DatasetError as err:
        return str(err)
    return None
