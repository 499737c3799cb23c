"""A torch Dataset over `Datum` items that loads RGB images and applies a transform.

Bad images (missing, unreadable, corrupt) are handled in one of two explicit ways:
- on_error="raise" (default): every file is checked to exist when the dataset is built (one stat per
  image, so a missing file fails before training rather than mid-epoch); an image that cannot be
  decoded raises when it is loaded. Both errors name the file and the "skip" option.
- on_error="skip": a cheap pass (`PIL.Image.open(...).verify()`, no pixel decoding) finds bad images
  when the dataset is built; they are left out, counted in a warning and listed in `skipped` (for the
  run record). Indices refer to the kept items, so they stay stable and no sample disappears
  mid-epoch. An image that passes `verify` but fails to decode later still raises.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset

from promptlab.data.errors import DatasetError
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
    ) -> None:
        if on_error not in ON_ERROR:
            raise ConfigError(f"on_error must be one of {ON_ERROR}, got {on_error!r}.")
        self.transform = transform
        self.on_error = on_error
        #: Left-out images: dicts with impath, label, classname and reason (JSON-ready).
        self.skipped: list[dict[str, Any]] = []
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
        for item in items:
            reason = _verify(item.impath)
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
        return kept

    def _load(self, item: Datum) -> Image.Image:
        try:
            with Image.open(item.impath) as image:
                return image.convert("RGB")
        except FileNotFoundError as err:
            raise DatasetError(f"image {item.impath} (label {item.label}) is missing. {SKIP_ADVICE}") from err
        except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, ... for broken files
            if self.on_error == "skip":
                advice = "It passed the check of loader.on_error=skip but cannot be decoded: delete or replace it."
            else:
                advice = SKIP_ADVICE
            raise DatasetError(
                f"image {item.impath} (label {item.label}) is corrupt or unreadable: {err!r}. {advice}"
            ) from err


def _verify(path: str) -> str | None:
    """None if `path` looks like a readable image, else the reason it is not."""
    try:
        with Image.open(path) as image:
            image.verify()
    except FileNotFoundError:
        return "missing"
    except Exception as err:  # any PIL failure means the file cannot be used
        return f"unreadable ({err!r})"
    return None


def _require_files_exist(items: Sequence[Datum]) -> None:
    missing = [item.impath for item in items if not os.path.isfile(item.impath)]
    if missing:
        raise DatasetError(
            f"{len(missing)} of {len(items)} listed image(s) are missing, e.g. {missing[0]}. Check the "
            f"dataset folder (paths.data_root). {SKIP_ADVICE}"
        )
