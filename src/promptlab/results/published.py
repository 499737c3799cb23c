"""The numbers the papers printed, shipped as data, and a table that puts a sweep's results next to them.

The data are CSV files in ``promptlab/results/published/`` (one per protocol, laid out as the papers' tables:
base2novel.csv with base / novel / hm per dataset and the 11-dataset Average; cross_dataset.csv and
domain_generalization.csv with the source, each target and the target average), each row citing the paper
table it was read from (``sources.csv``) and saying, in its ``checked`` column, in which readable copies of that
table every number of the row was found again (``checked_sources.csv``) or ``unverified``. Method and dataset
keys are promptlab's config names, column names the protocol tables' value columns, so a published value sits
exactly where a run's number does.

`compare_with_published(table, records)` gives, for each row of a sweep's table that has published numbers
for the same backbone and shot count, four lines: the run (mean ± std over seeds), the half-width of its 95 %
confidence interval, the paper's number, and the difference run - paper. The paper and difference lines of a
row whose published numbers are unverified are labelled with a trailing ``*`` and a note says why.
`promptlab-table --published` prints and writes it (table_<protocol>_published.md / .csv).
"""

from __future__ import annotations

import csv
import functools
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

from promptlab.errors import PromptlabError
from promptlab.results.table import AVERAGE, Cell, ResultTable, Row

#: Protocol -> the data file of its published numbers (in promptlab/results/published/).
DATA_FILES = {
    "base2novel": "base2novel.csv",
    "cross_dataset": "cross_dataset.csv",
    "domain_generalization": "domain_generalization.csv",
}
#: The readable copies the data rows were checked against (the keys of their `checked` column).
CHECKED_SOURCES_FILE = "checked_sources.csv"
#: The `checked` value of a row that no readable copy confirmed.
UNVERIFIED = "unverified"
#: Appended to the line label of a comparison against unverified numbers.
UNVERIFIED_MARK = " *"
#: The table note that explains the mark.
UNVERIFIED_NOTE = ("Lines marked * compare with published numbers not checked against a readable copy of the paper's "
                   "table (their data row says checked = unverified), so a typo in them would go unnoticed.")
# Columns of a data file that describe a row rather than hold a number.
_DESCRIPTIVE = ("method", "dataset", "backbone", "shots", "citation", "checked")
# Transfer files have one row per method; their table rows are the source dataset's.
_TRANSFER_SOURCE = "imagenet"

RUN, CI95, PAPER, DELTA = "run", "95% CI ±", "paper", "Δ run − paper"


class PublishedDataError(PromptlabError):
    """A published-numbers file that cannot be read (a broken install or a bad edit of the data)."""


@dataclass(frozen=True)
class Source:
    """Where published numbers were read: the paper and the table."""

    key: str
    paper: str
    table: str

    def __str__(self) -> str:
        return f"{self.paper}, {self.table}"


@dataclass(frozen=True)
class CheckedSource:
    """A readable copy of a published table that data rows were checked against, and what in it disagrees."""

    key: str
    copy: str
    location: str
    contents: str
    caveats: str

    def __str__(self) -> str:
        return f"{self.copy}; {self.location}"


@dataclass(frozen=True)
class PublishedValue:
    """One number a paper printed: `column` of the row (`dataset`, `method`) of a `protocol` table.

    `checked`: keys of the readable copies (`checked_sources()`) in which the whole row was found again;
    empty when none was found (the row's `checked` column says ``unverified``).
    """

    protocol: str
    method: str
    dataset: str
    column: str
    value: float
    backbone: str
    shots: int
    citation: str
    checked: tuple[str, ...] = ()

    @property
    def verified(self) -> bool:
        return bool(self.checked)


def _rows(name: str) -> list[dict[str, str]]:
    text = resources.files("promptlab.results").joinpath("published", name).read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    return list(csv.DictReader(lines))


@functools.cache
def sources() -> dict[str, Source]:
    """Citation key -> `Source`, from published/sources.csv."""
    return {row["key"]: Source(row["key"], row["paper"], row["table"]) for row in _rows("sources.csv")}


@functools.cache
def checked_sources() -> dict[str, CheckedSource]:
    """Check key -> `CheckedSource`, from published/checked_sources.csv."""
    return {row["key"]: CheckedSource(row["key"], row["copy"], row["location"], row["contents"], row["caveats"])
            for row in _rows(CHECKED_SOURCES_FILE)}


def _checked(name: str, line: int, text: str | None) -> tuple[str, ...]:
    """The check keys of one data row's `checked` cell (empty for ``unverified``)."""
    where = f"published/{name}, data row {line}"
    if not text or not text.strip():
        raise PublishedDataError(f"{where}: no `checked` value; give the keys of published/{CHECKED_SOURCES_FILE} "
                                 f"whose copies show the row, or {UNVERIFIED!r}.")
    if text.strip() == UNVERIFIED:
        return ()
    keys = tuple(k.strip() for k in text.split(";"))
    unknown = [k for k in keys if k not in checked_sources()]
    if unknown:
        raise PublishedDataError(f"{where}: checked {unknown} not in published/{CHECKED_SOURCES_FILE}; add the copy "
                                 f"there or write {UNVERIFIED!r}.")
    return keys


@functools.cache
def _all_values() -> tuple[PublishedValue, ...]:
    known = sources()
    values = []
    for protocol, name in DATA_FILES.items():
        for line, row in enumerate(_rows(name), start=1):
            if row["citation"] not in known:
                raise PublishedDataError(f"published/{name}, data row {line}: citation {row['citation']!r} is not in "
                                         "published/sources.csv; add it there.")
            checked = _checked(name, line, row.get("checked"))
            dataset = row.get("dataset") or _TRANSFER_SOURCE
            for column, text in row.items():
                if column in _DESCRIPTIVE or not text:
                    continue  # an empty cell: the paper printed no such number
                try:
                    value = float(text)
                except ValueError:
                    raise PublishedDataError(f"published/{name}, data row {line}: {column}={text!r} is not a "
                                             "number.") from None
                values.append(PublishedValue(protocol, row["method"], dataset, column, value, row["backbone"],
                                             int(row["shots"]), row["citation"], checked))
    return tuple(values)


def published_values(protocol: str | None = None) -> list[PublishedValue]:
    """Every published number shipped with promptlab (of one protocol when given)."""
    return [v for v in _all_values() if protocol is None or v.protocol == protocol]


def published_lookup(protocol: str) -> dict[tuple[str, str, str], PublishedValue]:
    """(dataset, method, column) -> the published number of that cell of the protocol's table."""
    return {(v.dataset, v.method, v.column): v for v in published_values(protocol)}


def _normalized(backbone: Any) -> str:
    """"ViT-B/16", "ViT-B-16" and "vit_b16" are one backbone."""
    return re.sub(r"[^a-z0-9]", "", str(backbone).lower())


def _settings(records: Sequence[Mapping[str, Any]], row: Row, split_columns: Sequence[str]) -> set[tuple[str, Any]]:
    """(backbone, shots) of the records behind a table row (every dataset of the method for an Average row)."""
    found = set()
    for record in records:
        summary = record.get("summary", {})
        if summary.get("method") != row.keys.get("method"):
            continue
        if not row.is_average and summary.get("dataset") != row.keys.get("dataset"):
            continue
        if any(str(summary.get(k)) != str(row.keys.get(k)) for k in split_columns):
            continue
        found.add((_normalized(summary.get("backbone")), summary.get("shots")))
    return found


def compare_with_published(table: ResultTable, records: Iterable[Mapping[str, Any]]) -> ResultTable:
    """`table` with the papers' numbers beside the runs (see the module docstring).

    A row is compared only when its runs used the paper's backbone and shot count (from the records' summaries);
    otherwise a note says why not. An Average row over fewer datasets than the paper's is not compared.
    """
    records = list(records)
    lookup = published_lookup(table.protocol)
    rows: list[Row] = []
    notes = list(table.notes)
    cited: dict[str, None] = {}
    checked: dict[str, None] = {}
    unverified = False
    for row in table.rows:
        rows.append(Row({**row.keys, "line": RUN}, {**row.labels, "line": RUN}, dict(row.cells), row.n_seeds,
                        row.is_average, list(row.runs)))
        intervals = {c: Cell(cell.ci95) for c, cell in row.cells.items() if cell is not None and cell.ci95 is not None}
        if intervals:
            rows.append(Row({**row.keys, "line": CI95}, {**row.labels, "line": CI95}, intervals, row.n_seeds,
                            row.is_average))
        dataset = AVERAGE if row.is_average else str(row.keys.get("dataset"))
        published = {c: lookup[(dataset, str(row.keys.get("method")), c)] for c in table.value_columns
                     if (dataset, str(row.keys.get("method")), c) in lookup}
        if not published:
            continue
        where = f"{row.labels.get('method')} on {row.labels.get('dataset')}"
        if row.is_average:
            averaged = {str(r.get("summary", {}).get("dataset")) for r in records
                        if r.get("summary", {}).get("method") == row.keys.get("method")}
            in_paper = {v.dataset for v in published_values(table.protocol)
                        if v.method == row.keys.get("method") and v.dataset != AVERAGE}
            if averaged != in_paper:
                notes.append(f"{where}: not compared with the paper's average, which is over {len(in_paper)} "
                             f"datasets (this one: {len(averaged)}).")
                continue
        first = next(iter(published.values()))
        wanted = (_normalized(first.backbone), first.shots)
        ran = _settings(records, row, table.split_columns)
        if ran != {wanted}:
            settings = ", ".join(f"{b or '?'} {s} shots" for b, s in sorted(ran, key=str)) or "unknown settings"
            notes.append(f"{where}: not compared with the paper ({first.backbone}, {first.shots} shots): the runs "
                         f"used {settings}.")
            continue
        paper = {c: Cell(v.value) for c, v in published.items()}
        delta = {c: Cell(row.cells[c].mean - v.value) for c, v in published.items()  # type: ignore[union-attr]
                 if row.cells.get(c) is not None}
        # The mark goes on the label only: keys keep PAPER / DELTA, so lookups by line are unaffected.
        mark = "" if all(v.verified for v in published.values()) else UNVERIFIED_MARK
        unverified = unverified or bool(mark)
        rows.append(Row({**row.keys, "line": PAPER}, {**row.labels, "line": PAPER + mark}, paper, (3,),
                        row.is_average))
        rows.append(Row({**row.keys, "line": DELTA}, {**row.labels, "line": DELTA + mark}, delta, row.n_seeds,
                        row.is_average))
        cited.update(dict.fromkeys(v.citation for v in published.values()))
        checked.update(dict.fromkeys(k for v in published.values() for k in v.checked))
    known = sources()
    notes.append("run: mean ± std over seeds; 95% CI ±: half-width of the 95 % confidence interval of the mean, "
                 "t(0.975, n - 1) * s / sqrt(n) with the sample std s; paper: the published mean of 3 seeds; "
                 "Δ = run mean - paper.")
    notes += [f"paper numbers [{key}]: {known[key]}" for key in cited]
    copies = checked_sources()
    notes += [f"paper numbers checked against [{key}]: {copies[key]}" for key in checked]
    if unverified:
        notes.append(UNVERIFIED_NOTE)
    if not cited:
        notes.append("no row of this table has published numbers for the same dataset, method, backbone and shots.")
    titles = {**table.titles, "line": ""}
    return ResultTable(table.protocol, [*table.label_columns, "line"], list(table.value_columns), rows, titles, notes,
                       list(table.split_columns))
