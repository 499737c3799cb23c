"""Is every listed image there, inside its dataset folder, and decodable? The checks behind `loader.on_error`,
the pre-flight before training and `promptlab-data check`.

Three costs, three checks:
- containment (`outside_folder`): string work only, on every listed path; a split entry such as
  `../../etc/hostname` must never be opened.
- existence (`find_missing`): one directory listing per folder that holds listed images, not one stat per
  image (ImageNet's 1.28 M training images live in 1,000 folders).
- decoding (`decode_problem`, `DecodeVerdicts`): the only check that catches a JPEG cut inside its image
  data (what an interrupted download leaves): `PIL.Image.verify()` reads headers only and passes it. JPEGs
  are decoded at reduced scale (`Image.draft`): libjpeg still reads every compressed byte, so truncation is
  caught, at about a third of the cost of a full-size decode. Verdicts are kept per (path, size, mtime), in
  memory for the run and in a JSON file under the cache folder for later runs, so an image is decoded at
  most once per run and not again until the file changes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from promptlab.data.types import Datum
from promptlab.io import atomic_write_json

log = logging.getLogger(__name__)

#: Side of the reduced-scale JPEG decode (libjpeg scales by 1/2, 1/4 or 1/8 towards it).
DRAFT_SIZE = 64
#: Reason recorded for a listed file that is not there.
MISSING = "missing"
VERDICTS_DIRNAME = "image_checks"
#: Most threads that decode images for a check.
DECODE_THREADS = 8
VERDICTS_FORMAT = 1


def outside_folder(items: Iterable[Datum], folder: str | os.PathLike[str]) -> list[Datum]:
    """Items whose path, normalised (`..` resolved lexically), is not inside `folder`.

    Lexical on purpose: a dataset folder that is itself a symbolic link, or holds links to images stored
    elsewhere, is the user's choice and stays allowed; what is refused is a listed path that climbs out.
    """
    prefix = os.path.join(os.path.normpath(os.fspath(folder)), "")
    return [d for d in items if not os.path.normpath(d.impath).startswith(prefix)]


def find_missing(items: Iterable[Datum]) -> list[Datum]:
    """Items whose file does not exist (or is not a file), found with one listing per folder."""
    by_folder: dict[str, list[Datum]] = defaultdict(list)
    for item in items:
        folder, name = os.path.split(item.impath)
        by_folder[folder].append(item)
    missing = []
    for folder, listed in by_folder.items():
        try:
            with os.scandir(folder or ".") as entries:
                # is_file() follows links (a linked image counts) and needs no stat on most file systems.
                present = {e.name for e in entries if e.is_file()}
        except OSError:  # absent folder (or not one): every image listed in it is missing
            present = set()
        missing.extend(d for d in listed if os.path.basename(d.impath) not in present)
    return missing


def decode_problem(path: str | os.PathLike[str]) -> str | None:
    """None if the image at `path` decodes completely, else why not ("missing", "unreadable (...)")."""
    try:
        with Image.open(path) as image:
            image.draft("RGB", (DRAFT_SIZE, DRAFT_SIZE))  # no-op for formats other than JPEG
            image.load()
    except FileNotFoundError:
        return MISSING
    except Exception as err:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError, ... for broken files
        return f"unreadable ({err!r})"
    return None


@dataclass
class CheckStats:
    """What a decode check cost: images decoded now, verdicts reused, and the seconds spent."""

    decoded: int = 0
    reused: int = 0
    seconds: float = 0.0

    def describe(self) -> str:
        return (f"{self.decoded} image(s) decoded in {self.seconds:.2f} s, {self.reused} verdict(s) reused "
                f"from earlier checks")


# Verdicts of this process: (path, size, mtime_ns) -> reason or None. Shared by every DecodeVerdicts so an
# image is decoded once per run however many datasets (train, val, each test set) list it.
_SEEN: dict[tuple[str, int, int], str | None] = {}


@dataclass
class DecodeVerdicts:
    """Decode verdicts of images, reused while a file keeps its size and modification time.

    `cache_dir`: where verdicts persist across runs (`<cache_dir>/image_checks/<hash>.json`, one file per
    folder that holds the checked images); None keeps them for this process only.
    """

    cache_dir: Path | None = None
    stats: CheckStats = field(default_factory=CheckStats)

    def problems(self, paths: Sequence[str]) -> dict[str, str]:
        """path -> reason, for each of `paths` that is missing or does not decode."""
        started = time.perf_counter()
        stored = self._load(paths)
        found: dict[str, str] = {}
        new: dict[str, list] = {}
        to_decode: list[tuple[str, int, int]] = []
        for path in paths:
            try:
                st = os.stat(path)
            except FileNotFoundError:
                found[path] = MISSING
                continue
            except OSError as err:
                found[path] = f"unreadable ({err!r})"
                continue
            key = (path, st.st_size, st.st_mtime_ns)
            if key in _SEEN:
                reason = _SEEN[key]
            elif stored.get(path, [None, None])[:2] == [st.st_size, st.st_mtime_ns]:
                reason = _SEEN[key] = stored[path][2]
            else:
                to_decode.append(key)
                continue
            self.stats.reused += 1
            if reason is not None:
                found[path] = reason
        # PIL decodes with the GIL released: threads spread the decoding over the cores.
        workers = min(DECODE_THREADS, os.cpu_count() or 1, max(1, len(to_decode) // 64))
        if workers > 1:
            with ThreadPoolExecutor(workers) as pool:
                reasons = list(pool.map(decode_problem, [key[0] for key in to_decode]))
        else:
            reasons = [decode_problem(key[0]) for key in to_decode]
        for key, reason in zip(to_decode, reasons, strict=True):
            _SEEN[key] = reason
            new[key[0]] = [key[1], key[2], reason]
            if reason is not None:
                found[key[0]] = reason
        self.stats.decoded += len(to_decode)
        if new:
            self._save(paths, stored, new)
        self.stats.seconds += time.perf_counter() - started
        return found

    # ------------------------------------------------------------------ persistence
    def _file(self, paths: Sequence[str]) -> Path | None:
        if self.cache_dir is None or not paths:
            return None
        common = os.path.commonpath([os.path.dirname(p) for p in paths])
        digest = hashlib.sha1(os.path.abspath(common).encode()).hexdigest()[:16]
        return Path(self.cache_dir) / VERDICTS_DIRNAME / f"{digest}.json"

    def _load(self, paths: Sequence[str]) -> dict[str, list]:
        path = self._file(paths)
        if path is None or not path.is_file():
            return {}
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
            if payload.get("format") == VERDICTS_FORMAT and isinstance(payload.get("verdicts"), dict):
                return payload["verdicts"]
        except (OSError, ValueError, AttributeError) as err:
            log.warning("ignoring unreadable image-check cache %s (%s); the images are decoded again", path, err)
            return {}
        log.warning("ignoring image-check cache %s of another format; the images are decoded again", path)
        return {}

    def _save(self, paths: Sequence[str], stored: dict[str, list], new: dict[str, list]) -> None:
        path = self._file(paths)
        if path is None:
            return
        # Read again just before writing: another job of the sweep may have added verdicts meanwhile.
        merged = {**stored, **self._load(paths), **new}
        try:
            atomic_write_json(path, {"format": VERDICTS_FORMAT, "verdicts": merged}, indent=None)
        except OSError as err:  # an optional cache: the run goes on, later runs decode again
            log.warning("could not save the image-check cache %s (%s); later runs will decode these images "
                        "again", path, err)
