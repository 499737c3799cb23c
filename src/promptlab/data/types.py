"""Plain containers shared by every dataset reader."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Datum:
    """One labelled image: absolute path, integer label, human-readable class name."""

    impath: str
    label: int
    classname: str


@dataclass
class DatasetSplits:
    """A dataset as read from disk: train/val/test items and the class names indexed by label.

    `classnames[label]` is the name used in prompts (underscores already replaced by spaces).
    `notes` collects non-fatal findings (e.g. classes with fewer images than requested shots)
    so that they end up in the run record. `class_source` is the file the class list was read from (the
    split file, the class-name file), named in messages about it.
    """

    name: str
    dataset_dir: Path
    train: list[Datum]
    val: list[Datum]
    test: list[Datum]
    classnames: list[str]
    notes: list[str] = field(default_factory=list)
    class_source: Path | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classnames)


@dataclass
class EvalSet:
    """One evaluation of a protocol: a test set scored among its own class list."""

    name: str  # "base", "novel", "all", or a target dataset's name
    dataset: str
    subset: str
    classnames: list[str]
    items: list[Datum]
    skipped: list[dict] = field(default_factory=list)
