"""A torch Dataset over `Datum` items that loads RGB images and applies a transform.

Bad images (missing, unreadable, corrupt) are handled in one of two explicit ways:
- on_error="raise" (default): every file is checked to exist when the dataset is built (one stat per
  image, so a missing file fails before training rather than mid-epoch); an image that cannot be
  decoded raises when it is loaded. Both errors name the file and the "skip" option.
- on_error="skip": every image is decoded when the dataset is built (`promptlab.data.image_check`: a
  header check alone passes a JPEG truncated inside its image data); bad images are left out, counted in
  a warning and listed in `skipped` (for the run record). Verdicts are reused for files that did not
  change (per run in memory, across runs under `check_cache_dir`), so an image is decoded for the check
  at most once per run. Indices refer to the kept items, so they stay stable and no sample disappears
  mid-epoch. An image that changes on disk after the check and then fails to decode still raises.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset

from promptlab.data.errors import DatasetError
from promptlab.data.image_check import DecodeVerdicts, find_missing
from promptlab.data.types import Datum
from promptlab.errors import ConfigError

log = logging.getLogger(__name__)

ON_ERROR = ("raise", "skip")
SKIP_ADVICE = "To leave bad images out (they are counted and listed in the run record), set loader.on_error=skip."


class ImageDataset(Dataset):
    """Items -> dict(image=transformed tensor, label=int, index=int); `items[index]` is the Datum."""

    def __init__(
        self,
        items: Sequence[Datum],
        transform: Callable[[Image.Image], torch.Tensor],
        on_error: str = "raise",
        check_cache_dir: Path | None = None,
    ) -> None:
        """`check_cache_dir`: where on_error=skip keeps its decode verdicts for later runs (None: this run only)."""
        if on_error not in ON_ERROR:
            raise ConfigError(f"on_error must be one of {ON_ERROR}, got {on_error!r}.")
        self.transform = transform
        self.on_error = on_error
        #: Left-out images: dicts with impath, label, classname and reason (JSON-ready).
        self.skipped: list[dict[str, Any]] = []
        self.verdicts = DecodeVerdicts(check_cache_dir)
        if on_error == "skip":
            self.items = self._drop_bad(items)
        else:
            _require_files_exist(items)
            self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.items[index]
        return {"image": self.transform(self._load(item)), "label": item.label, "index": index}

    def _drop_bad(self, items: Sequence[Datum]) -> list[Datum]:
        kept = []
        problems = self.verdicts.problems([item.impath for item in items])
        for item in items:
            reason = problems.get(item.impath)
            if reason is None:
                kept.append(item)
            else:
                self.skipped.append({
                    "impath": item.impath, "label": item.label, "classname": item.classname, "reason": reason,
                })
        if self.skipped:
            first = self.skipped[0]
            log.warning(
                "skipped %d of %d images that are missing or unreadable (e.g. %s: %s)",
                len(self.skipped), len(items), first["impath"], first["reason"],
            )
        log.info("on_error=skip image check: %s", self.verdicts.stats.describe())
        return kept

    def _load(self, item: Datum) -> Image.Image:
        try:
            with Image.open(item.impath) as image:
                return image.convert("RGB")
        except FileNotFoundError as err:
            raise DatasetError(f"image {item.impath} (label {item.label}) is missing. {SKIP_ADVICE}") from err
        except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, ... for broken files
            if self.on_error == "skip":
                advice = ("It passed the check of loader.on_error=skip but cannot be decoded now (changed on "
                          "disk since?): delete or replace it.")
            else:
                advice = SKIP_ADVICE
            raise DatasetError(
                f"image {item.impath} (label {item.label}) is corrupt or unreadable: {err!r}. {advice}"
            ) from err


def _require_files_exist(items: Sequence[Datum]) -> None:
    missing = find_missing(items)
    if missing:
        raise DatasetError(
            f"{len(missing)} of {len(items)} listed image(s) are missing, e.g. {missing[0].impath}. Check the "
            f"dataset folder (paths.data_root). {SKIP_ADVICE}"
        )


def require_decodable(items: Sequence[Datum], check_cache_dir: Path | None = None) -> None:
    """Decode every image of `items` once (verdicts reused as in on_error=skip); DatasetError naming the bad
    ones. For checks before training of images that are otherwise decoded only after it."""
    verdicts = DecodeVerdicts(check_cache_dir)
    problems = verdicts.problems([item.impath for item in items])
    log.info("image check before training: %s", verdicts.stats.describe())
    if problems:
        path, reason = next(iter(problems.items()))
        raise DatasetError(
            f"{len(problems)} of {len(items)} image(s) are missing or cannot be decoded, e.g. {path}: {reason}. "
            f"Replace them (re-download or re-extract the dataset). {SKIP_ADVICE}"
        )
