"""`promptlab-data check`: is a dataset on disk what its config says, image by image?

For one dataset config and data root it reports, per split, how many images are listed, how many lead
outside the dataset folder, are absent, or do not decode (full decode, `promptlab.data.image_check`;
verdicts are shared with training through the cache folder); the class count against the config, class
names used twice, classes without training images; and whether each saved few-shot selection can be
reused. Problems make the check fail (exit status 1); warnings do not.

Training runs the cheap part of this (containment, existence, class count) on every run, in
`promptlab.data.readers.read_dataset`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from promptlab.data.errors import DatasetError
from promptlab.data.fewshot import check_selection, selection_files
from promptlab.data.image_check import CheckStats, DecodeVerdicts, find_missing, outside_folder
from promptlab.data.readers import read_listing
from promptlab.data.readers.common import display_name
from promptlab.data.types import DatasetSplits, Datum

SPLITS = ("train", "val", "test")
EXAMPLES = 3


@dataclass
class SplitCheck:
    """What was found in one split: counts, and up to EXAMPLES examples of each kind of bad image."""

    split: str
    listed: int = 0
    classes: int = 0
    outside: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    undecodable: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)

    @property
    def bad(self) -> int:
        return len(self.outside) + len(self.missing) + len(self.undecodable)


@dataclass
class DatasetCheck:
    """The result of `check_dataset`: `ok` is False when anything under `problems` was found."""

    dataset: str
    dataset_dir: Path | None = None
    num_classes: int | None = None
    expected_classes: int | None = None
    splits: list[SplitCheck] = field(default_factory=list)
    selections: list[tuple[Path, str | None]] = field(default_factory=list)  # (file, problem or None)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    decoded: bool = False
    stats: CheckStats = field(default_factory=CheckStats)

    @property
    def ok(self) -> bool:
        return not self.problems


def check_dataset(
    dataset_cfg: Mapping[str, Any],
    data_root: str | Path,
    decode: bool = True,
    cache_dir: Path | None = None,
    fewshot_dir: Path | None = None,
) -> DatasetCheck:
    """Check the dataset of `dataset_cfg` under `data_root` (see the module docstring).

    `decode=False` is the cheap form (containment, existence, classes, selections). `cache_dir`: where decode
    verdicts are kept (training reads them from `paths.cache_dir`).
    """
    name = display_name(dataset_cfg)
    report = DatasetCheck(dataset=name, expected_classes=dataset_cfg.get("num_classes"), decoded=decode)
    try:
        splits = read_listing(dataset_cfg, data_root)
    except DatasetError as err:  # the folder, the split file or the class count: nothing image-wise to check
        report.problems.append(str(err))
        return report
    report.dataset_dir, report.num_classes = Path(splits.dataset_dir), splits.num_classes
    report.warnings += splits.notes
    verdicts = DecodeVerdicts(cache_dir)
    for split in SPLITS:
        report.splits.append(_check_split(split, getattr(splits, split), splits.dataset_dir,
                                          verdicts if decode else None))
    report.stats = verdicts.stats
    for found in report.splits:
        if found.bad:
            report.problems.append(_describe(found))
    _check_classes(splits, report)
    for path in selection_files(splits, fewshot_dir):
        problem = check_selection(path, splits)
        report.selections.append((path, problem))
        if problem:
            report.problems.append(problem)
        elif path.suffix == ".pkl" and not path.with_suffix(".json").is_file():
            report.warnings.append(f"{path}: the reference's pickled selection, not read by promptlab, which would "
                                   f"draw its own; `promptlab-import shots {path.parent}` converts it to the JSON "
                                   f"selection promptlab reuses.")
    return report


def _check_split(split: str, items: list[Datum], dataset_dir: Path, verdicts: DecodeVerdicts | None) -> SplitCheck:
    found = SplitCheck(split, listed=len(items), classes=len({d.label for d in items}))
    outside = outside_folder(items, dataset_dir)
    found.outside = [d.impath for d in outside]
    inside = [d for d in items if d not in set(outside)] if outside else items
    missing = find_missing(inside)
    found.missing = [d.impath for d in missing]
    if verdicts is not None:
        gone = set(found.missing)
        problems = verdicts.problems([d.impath for d in inside if d.impath not in gone])
        found.undecodable = sorted(problems.items())
    return found


def _describe(found: SplitCheck) -> str:
    parts = []
    for what, paths in (("outside the dataset folder (never opened)", found.outside), ("absent", found.missing),
                        ("not decodable", [f"{p}: {r}" for p, r in found.undecodable])):
        if paths:
            more = f" and {len(paths) - EXAMPLES} more" if len(paths) > EXAMPLES else ""
            parts.append(f"{len(paths)} {what}, e.g. " + "; ".join(paths[:EXAMPLES]) + more)
    return f"{found.split}: {found.bad} of {found.listed} listed image(s) are bad: " + " | ".join(parts)


def _check_classes(splits: DatasetSplits, report: DatasetCheck) -> None:
    twice = [name for name, n in Counter(splits.classnames).items() if n > 1]
    if twice:
        report.problems.append(f"class name(s) used by more than one label: {twice[:EXAMPLES]}; their prompts would "
                               f"be identical. Fix the class list ({splits.class_source or splits.dataset_dir}).")
    if splits.train:
        present = {d.label for d in splits.train}
        empty = [f"{label} ({name!r})" for label, name in enumerate(splits.classnames) if label not in present]
        if empty:
            report.warnings.append(f"{len(empty)} class(es) have no training image: {', '.join(empty[:EXAMPLES])}"
                                   + (" ..." if len(empty) > EXAMPLES else ""))


def print_check(report: DatasetCheck, console: Any = None) -> None:
    """The report as rich tables (splits, selections) followed by the problems and warnings."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = console or Console()
    status = "[green]ok[/green]" if report.ok else f"[red]{len(report.problems)} problem(s)[/red]"
    classes = "" if report.num_classes is None else (
        f", {report.num_classes} classes (config: {report.expected_classes})")
    title = f"{escape(report.dataset)}: {status}{classes}"
    if report.splits:
        table = Table(title=title)
        for column in ("split", "images", "classes", "outside", "absent", "undecodable" if report.decoded else
                       "decoded"):
            table.add_column(column, justify="left" if column == "split" else "right")
        for found in report.splits:
            last = str(len(found.undecodable)) if report.decoded else "not checked"
            table.add_row(found.split, str(found.listed), str(found.classes), str(len(found.outside)),
                          str(len(found.missing)), last)
        console.print(table)
        if report.decoded:
            console.print(f"decode check: {report.stats.describe()}")
    else:
        console.print(title)
    if report.selections:
        table = Table(title="few-shot selections")
        table.add_column("file")
        table.add_column("status")
        for path, problem in report.selections:
            table.add_row(escape(str(path)), "ok" if problem is None and path.suffix == ".json" else
                          ("not used" if problem is None else "[red]invalid[/red]"))
        console.print(table)
    for problem in report.problems:
        console.print(f"[red]problem:[/red] {escape(problem)}", highlight=False, soft_wrap=True)
    for warning in report.warnings:
        console.print(f"[yellow]warning:[/yellow] {escape(warning)}", highlight=False, soft_wrap=True)
