"""Tables from run records: one `ResultTable` per protocol, rendered as markdown, CSV, LaTeX or rich.

Aggregation rules (the same as the papers' tables, so numbers can be compared with them):

- A row is one (dataset, method) pair plus every summary key that takes several values inside some
  (dataset, method) pair (e.g. ``shots`` 1 vs 16): such keys split rows. Summary keys that vary
  among the records only from one (dataset, method) pair to another (``n_ctx`` per method,
  ``epochs`` per dataset) are shown as columns without splitting. ``seed`` is the replicate axis.
- A cell is "mean ± std" over the row's runs (seeds), std being the population standard deviation
  (ddof=0, numpy.std's default), as CoOp's ``parse_test_res.py`` reports it.
- base2novel: the HM column is the mean (± std) of the per-seed harmonic means. The "Average" row of
  a method averages the per-dataset means of base and of novel, and its HM is
  ``harmonic_mean(average base, average novel)``, as the CoCoOp and KgCoOp tables compute it
  (DESIGN.md section 3); it is not the mean of the per-dataset HMs.
- fewshot: one accuracy column; the "Average" row is the mean of the per-dataset means.
- cross_dataset / domain_generalization: columns source, each target, target average (the mean of
  the per-seed ``target_mean_acc``).
Average rows are added when a table has at least two datasets.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from promptlab.results.metrics import harmonic_mean

log = logging.getLogger(__name__)

BASE2NOVEL = "base2novel"
FEWSHOT = "fewshot"
CROSS_DATASET = "cross_dataset"
DOMAIN_GENERALIZATION = "domain_generalization"
PROTOCOL_ORDER = (BASE2NOVEL, FEWSHOT, CROSS_DATASET, DOMAIN_GENERALIZATION)

AVERAGE = "Average"

# Summary keys that never become columns: the row identity, display names, the replicate axis, and
# per-run bookkeeping that differs between every pair of runs (it would split every row into seeds).
NON_COLUMN_KEYS = frozenset(
    {
        "protocol", "dataset", "method", "dataset_display", "method_display", "seed",
        "run_dir", "output_dir", "run_name", "run_id", "job_num", "job_id", "job_name",
        "timestamp", "start_time", "hostname", "wandb_run_id",
    }
)
# Varying keys named in the task of a sweep come first, in this order; other varying keys follow A-Z.
_KEY_ORDER = ("backbone", "shots", "n_ctx", "spurious")
# Rows follow the papers' order where the keys are known (CoOp's dataset config names), then A-Z.
_METHOD_ORDER = ("zeroshot", "zero_shot", "zsclip", "coop", "cocoop", "kgcoop", "maple", "promptsrc")
_DATASET_ORDER = (
    "imagenet", "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101",
    "fgvc_aircraft", "sun397", "dtd", "eurosat", "ucf101",
    "imagenet_v2", "imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r",
)
_TITLES = {
    "dataset": "Dataset", "method": "Method", "base": "Base", "novel": "Novel", "hm": "HM",
    "acc": "Acc.", "source": "Source", "target_mean": "Target avg.",
}
STD_NOTE = "mean ± std over seeds; std is the population std (ddof=0), as CoOp's parse_test_res.py."


# --------------------------------------------------------------------------- data classes


@dataclass(frozen=True)
class Cell:
    """One value: the mean over runs with its population std, or a derived number (std None)."""

    mean: float
    std: float | None = None

    def text(self, digits: int = 2, pm: str = "±") -> str:
        if self.std is None:
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} {pm} {self.std:.{digits}f}"


@dataclass
class Row:
    """A table row. `keys` holds the raw summary values, `labels` the text shown for them.

    `n_seeds` has one entry per group behind the row: one for a dataset row, one per dataset for an
    Average row.
    """

    keys: dict[str, Any]
    labels: dict[str, str]
    cells: dict[str, Cell | None]
    n_seeds: tuple[int, ...]
    is_average: bool = False

    @property
    def seeds_text(self) -> str:
        low, high = min(self.n_seeds), max(self.n_seeds)
        return str(low) if low == high else f"{low}-{high}"


@dataclass
class ResultTable:
    """All rows of one protocol. Label columns identify a row; value columns hold `Cell`s."""

    protocol: str
    label_columns: list[str]
    value_columns: list[str]
    rows: list[Row]
    titles: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    split_columns: list[str] = field(default_factory=list)  # varying keys that split rows (e.g. shots)

    def title_of(self, column: str) -> str:
        return self.titles.get(column, _TITLES.get(column, column))

    def header(self) -> list[str]:
        return [self.title_of(c) for c in self.label_columns + self.value_columns] + ["Seeds"]

    def text_rows(self, digits: int = 2, pm: str = "±") -> list[list[str]]:
        out = []
        for row in self.rows:
            labels = [row.labels.get(c, "") for c in self.label_columns]
            cells = [row.cells[c].text(digits, pm) if row.cells.get(c) else "–" for c in self.value_columns]
            out.append(labels + cells + [row.seeds_text])
        return out

    def tabular(self) -> tuple[list[str], list[list[Any]]]:
        """Machine-readable columns: labels, `<col>_mean`, `<col>_std` (empty when derived), n_seeds."""
        columns = list(self.label_columns)
        for col in self.value_columns:
            columns += [f"{col}_mean", f"{col}_std"]
        columns.append("n_seeds")
        data = []
        for row in self.rows:
            values: list[Any] = [row.labels.get(c, "") for c in self.label_columns]
            for col in self.value_columns:
                cell = row.cells.get(col)
                values += [None, None] if cell is None else [round(cell.mean, 4), _round(cell.std)]
            values.append(row.seeds_text)
            data.append(values)
        return columns, data

    def find(self, average: bool = False, **keys: Any) -> Row:
        """The single row whose raw keys match `keys` (compared as text), e.g. find(method="coop")."""
        hits = [
            r for r in self.rows
            if r.is_average == average and all(str(r.keys.get(k)) == str(v) for k, v in keys.items())
        ]
        if len(hits) != 1:
            raise KeyError(f"{len(hits)} rows of the {self.protocol} table match {keys} (average={average})")
        return hits[0]

    @property
    def series_columns(self) -> list[str]:
        """Columns that tell the compared settings apart (method and split keys): one plot series each."""
        return ["method", *self.split_columns]

    def series_label(self, row: Row) -> str:
        parts = [row.labels.get(self.series_columns[0], "")] if self.series_columns else []
        parts += [f"{self.title_of(c)}={row.labels.get(c, '')}" for c in self.series_columns[1:]]
        return ", ".join(parts)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


# --------------------------------------------------------------------------- per-protocol values


class _MissingMetric(KeyError):
    pass


def _metric(record: dict[str, Any], key: str) -> float:
    value = record["metrics"].get(key)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise _MissingMetric(f"metric {key!r} missing or not a number")
    return float(value)


def _base2novel_values(record: dict[str, Any]) -> dict[str, float]:
    base, novel = _metric(record, "base_acc"), _metric(record, "novel_acc")
    # Recomputed, not read from metrics["hm"], so every HM in a table comes from the one formula.
    return {"base": base, "novel": novel, "hm": harmonic_mean(base, novel)}


def _fewshot_values(record: dict[str, Any]) -> dict[str, float]:
    return {"acc": _metric(record, "acc")}


def _transfer_datasets(record: dict[str, Any]) -> tuple[str, list[str]]:
    """(source, targets) of a cross-dataset / domain-generalisation record: evaluations, source first."""
    names = [str(e["dataset"]) for e in record.get("evaluations", []) if "dataset" in e]
    source = str(record["summary"].get("dataset", names[0] if names else "?"))
    return source, [n for n in names if n != source]


def _transfer_values(record: dict[str, Any]) -> dict[str, float]:
    source, targets = _transfer_datasets(record)
    values = {"source": _metric(record, f"{source}_acc")}
    for target in targets:
        values[target] = _metric(record, f"{target}_acc")
    if "target_mean_acc" in record["metrics"]:
        values["target_mean"] = _metric(record, "target_mean_acc")
    elif targets:
        values["target_mean"] = statistics.fmean(values[t] for t in targets)
    return values


def _generic_values(record: dict[str, Any]) -> dict[str, float]:
    return {
        k: float(v) for k, v in record["metrics"].items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }


_VALUE_FUNCTIONS: dict[str, Callable[[dict[str, Any]], dict[str, float]]] = {
    BASE2NOVEL: _base2novel_values,
    FEWSHOT: _fewshot_values,
    CROSS_DATASET: _transfer_values,
    DOMAIN_GENERALIZATION: _transfer_values,
}


# --------------------------------------------------------------------------- building


def build_tables(records: Iterable[dict[str, Any]], ignore_keys: Iterable[str] = ()) -> list[ResultTable]:
    """One table per protocol found in the (complete) records, in PROTOCOL_ORDER then A-Z.

    `ignore_keys`: extra summary keys that must not become columns (per-run bookkeeping).
    """
    by_protocol: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        by_protocol.setdefault(str(record["summary"].get("protocol", "unknown")), []).append(record)
    order = sorted(by_protocol, key=lambda p: (PROTOCOL_ORDER.index(p) if p in PROTOCOL_ORDER else 99, p))
    tables, problems = [], []
    for protocol in order:
        try:
            tables.append(build_table(by_protocol[protocol], protocol, ignore_keys))
        except ValueError as exc:  # one protocol without usable metrics must not hide the others
            problems.append(str(exc))
            log.warning("no %s table: %s", protocol, exc)
    if problems and not tables:
        raise ValueError("; ".join(problems))
    return tables


def build_table(
    records: Sequence[dict[str, Any]], protocol: str, ignore_keys: Iterable[str] = ()
) -> ResultTable:
    """The table of one protocol (see the module docstring for the rules)."""
    value_fn = _VALUE_FUNCTIONS.get(protocol, _generic_values)
    notes = [STD_NOTE]
    usable, values = [], []
    for record in records:
        try:
            values.append(value_fn(record))
            usable.append(record)
        except _MissingMetric as exc:
            notes.append(f"skipped {record.get('run_dir', '?')}: {exc.args[0]}")
    if not usable:
        raise ValueError(f"no {protocol} record has the metrics this table needs: {'; '.join(notes[1:])}")

    skip = NON_COLUMN_KEYS | set(ignore_keys)
    # A summary key becomes a column only when it splits rows: it varies within one (dataset, method)
    # pair (shots 1 vs 16, n_ctx 4 vs 16, spurious 0 vs 1). Keys that only differ between methods
    # (each method's own lr or epochs) describe the method, not an experimental axis.
    split_keys = [k for k in _varying_keys([r["summary"] for r in usable], skip) if _varies_within_pairs(usable, k)]
    extra_keys = split_keys
    if split_keys:
        notes.append("rows split by the summary keys that vary within a dataset and method: " + ", ".join(split_keys))

    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, record in enumerate(usable):
        s = record["summary"]
        group_key = (s.get("dataset"), s.get("method"), *(_freeze(s.get(k)) for k in split_keys))
        groups.setdefault(group_key, []).append(i)

    value_columns = _value_columns(protocol, values)
    rows = []
    for group_key in sorted(groups, key=_row_sort_key):
        members = groups[group_key]
        rows.append(_group_row([usable[i] for i in members], [values[i] for i in members],
                               extra_keys, value_columns, notes))

    if protocol in (BASE2NOVEL, FEWSHOT):
        rows += _average_rows(protocol, rows, extra_keys, split_keys, notes)
        if protocol == BASE2NOVEL:
            notes.append(
                "HM column: mean of the per-seed HMs. Average rows: base and novel are the means of the "
                "per-dataset means; HM = harmonic mean of those two averages."
            )
    titles = {c: c for c in value_columns if c not in _TITLES}
    label_columns = ["dataset", "method", *extra_keys]
    return ResultTable(protocol, label_columns, value_columns, rows, titles, notes, split_keys)


def _freeze(value: Any) -> Any:
    """A hashable, comparable stand-in for a summary value (lists/dicts compare by their JSON)."""
    return json.dumps(value, sort_keys=True) if isinstance(value, (list, dict)) else value


def _varying_keys(summaries: Sequence[dict[str, Any]], skip: frozenset[str] | set[str]) -> list[str]:
    keys = {k for s in summaries for k in s} - set(skip)
    varying = [k for k in keys if len({_freeze(s.get(k)) for s in summaries}) > 1]
    return sorted(varying, key=lambda k: (_KEY_ORDER.index(k) if k in _KEY_ORDER else len(_KEY_ORDER), k))


def _varies_within_pairs(records: Sequence[dict[str, Any]], key: str) -> bool:
    seen: dict[tuple[Any, Any], Any] = {}
    for record in records:
        s = record["summary"]
        pair, value = (s.get("dataset"), s.get("method")), _freeze(s.get(key))
        if seen.setdefault(pair, value) != value:
            return True
    return False


def _value_columns(protocol: str, values: Sequence[dict[str, float]]) -> list[str]:
    if protocol == BASE2NOVEL:
        return ["base", "novel", "hm"]
    if protocol == FEWSHOT:
        return ["acc"]
    columns: dict[str, None] = {}
    for v in values:
        columns.update(dict.fromkeys(v))
    if "target_mean" in columns:  # the summary column goes last, after every target
        columns.pop("target_mean")
        columns["target_mean"] = None
    return list(columns)


def _order_value(value: Any) -> tuple[int, Any]:
    if isinstance(value, bool) or value is None:
        return (2, str(value))
    if isinstance(value, (int, float)):
        return (0, value)
    return (1, str(value))


def _ordered(key: Any, known: Sequence[str]) -> tuple[int, Any]:
    return (known.index(key), "") if key in known else (len(known), str(key))


def _row_sort_key(group_key: tuple[Any, ...]) -> tuple[Any, ...]:
    dataset, method, *splits = group_key
    return (_ordered(dataset, _DATASET_ORDER), _ordered(method, _METHOD_ORDER), *map(_order_value, splits))


def _text(value: Any) -> str:
    return "–" if value is None else str(value)


def _group_row(
    records: list[dict[str, Any]],
    values: list[dict[str, float]],
    extra_keys: list[str],
    value_columns: list[str],
    notes: list[str],
) -> Row:
    first = records[0]["summary"]
    keys = {"dataset": first.get("dataset"), "method": first.get("method")}
    keys.update({k: first.get(k) for k in extra_keys})
    labels = {
        "dataset": _text(first.get("dataset_display", first.get("dataset"))),
        "method": _text(first.get("method_display", first.get("method"))),
        **{k: _text(_freeze(first.get(k))) for k in extra_keys},
    }
    seeds = [r["summary"].get("seed") for r in records]
    duplicates = sorted({str(s) for s in seeds if seeds.count(s) > 1})
    where = ", ".join(f"{k}={v}" for k, v in keys.items())
    if duplicates:
        notes.append(f"{where}: seed(s) {', '.join(duplicates)} appear in several runs; all are averaged.")
    cells: dict[str, Cell | None] = {}
    for col in value_columns:
        present = [v[col] for v in values if col in v]
        if len(present) not in (0, len(values)):
            notes.append(f"{where}: {col} measured in {len(present)} of {len(values)} runs only.")
        cells[col] = Cell(statistics.fmean(present), statistics.pstdev(present)) if present else None
    return Row(keys, labels, cells, (len(records),))


def _average_rows(
    protocol: str, rows: list[Row], extra_keys: list[str], split_keys: list[str], notes: list[str]
) -> list[Row]:
    """One Average row per method (and split-key values) over the datasets that have it."""
    datasets = list(dict.fromkeys(r.keys["dataset"] for r in rows))
    if len(datasets) < 2:
        return []
    series: dict[tuple[Any, ...], list[Row]] = {}
    for row in rows:
        # Only split keys separate averages: the other columns may differ between datasets (epochs).
        series.setdefault((row.keys["method"], *(_freeze(row.keys[k]) for k in split_keys)), []).append(row)
    averages = []
    for method, *split in sorted(series, key=lambda k: _row_sort_key((None, *k))):
        members = series[(method, *split)]
        label = AVERAGE if len(members) == len(datasets) else f"{AVERAGE} ({len(members)} of {len(datasets)})"
        if len(members) < len(datasets):
            notes.append(f"{label} row of {members[0].labels['method']}: some datasets have no runs of it.")
        cells = _average_cells(protocol, members)
        keys = {**members[0].keys, "dataset": AVERAGE}
        labels = {**members[0].labels, "dataset": label}
        for k in extra_keys:  # show a key only when every averaged row agrees on it
            if len({_freeze(m.keys[k]) for m in members}) > 1:
                keys[k], labels[k] = None, "mixed"
        averages.append(Row(keys, labels, cells, tuple(n for m in members for n in m.n_seeds), True))
    return averages


def _average_cells(protocol: str, members: list[Row]) -> dict[str, Cell | None]:
    def mean_of(col: str) -> float | None:
        means = [m.cells[col].mean for m in members if m.cells.get(col) is not None]  # type: ignore[union-attr]
        return statistics.fmean(means) if len(means) == len(members) else None

    if protocol == BASE2NOVEL:
        base, novel = mean_of("base"), mean_of("novel")
        if base is None or novel is None:
            return {"base": None, "novel": None, "hm": None}
        return {"base": Cell(base), "novel": Cell(novel), "hm": Cell(harmonic_mean(base, novel))}
    acc = mean_of("acc")
    return {"acc": None if acc is None else Cell(acc)}


# --------------------------------------------------------------------------- renderers


def to_markdown(table: ResultTable, digits: int = 2, with_notes: bool = True) -> str:
    """A GitHub-flavoured markdown table, preceded by the protocol name and followed by its notes."""
    header = table.header()
    lines = [f"## {table.protocol}", ""]
    lines.append("| " + " | ".join(_md_escape(h) for h in header) + " |")
    n_labels = len(table.label_columns)
    lines.append("|" + "|".join(":---" if i < n_labels else "---:" for i in range(len(header))) + "|")
    for cells in table.text_rows(digits):
        lines.append("| " + " | ".join(_md_escape(c) for c in cells) + " |")
    if with_notes and table.notes:
        lines.append("")
        lines += [f"- {_md_escape(note)}" for note in table.notes]
    return "\n".join(lines) + "\n"


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def to_csv(table: ResultTable) -> str:
    """CSV with separate mean and std columns (see `ResultTable.tabular`)."""
    columns, data = table.tabular()
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows([["" if v is None else v for v in row] for row in data])
    return buffer.getvalue()


_LATEX_SPECIALS = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
}


def latex_escape(text: str) -> str:
    """Escape the characters LaTeX treats specially (underscores in dataset keys, % in titles ...)."""
    return "".join(_LATEX_SPECIALS.get(ch, ch) for ch in text)


def to_latex(table: ResultTable, digits: int = 2) -> str:
    """A booktabs `tabular` (needs \\usepackage{booktabs}); Average rows follow a \\midrule."""
    n_labels = len(table.label_columns)
    spec = "l" * n_labels + "r" * (len(table.value_columns) + 1)
    lines = [f"% promptlab {latex_escape(table.protocol)} table; {latex_escape(STD_NOTE)}"]
    lines += [rf"\begin{{tabular}}{{{spec}}}", r"\toprule"]
    lines.append(" & ".join(latex_escape(h) for h in table.header()) + r" \\")
    lines.append(r"\midrule")
    previous_average = False
    for row, cells in zip(table.rows, table.text_rows(digits, pm="$\\pm$"), strict=True):
        if row.is_average and not previous_average:
            lines.append(r"\midrule")
        previous_average = row.is_average
        escaped = [latex_escape(c) for c in cells[:n_labels]] + [
            c if "$\\pm$" in c else latex_escape(c) for c in cells[n_labels:]
        ]
        lines.append(" & ".join(escaped) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def print_table(table: ResultTable, console: Any = None, digits: int = 2) -> None:
    """Print the table (and its notes) to the terminal with rich."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    rich_table = Table(title=f"promptlab — {table.protocol}", title_justify="left")
    n_labels = len(table.label_columns)
    for i, title in enumerate(table.header()):
        rich_table.add_column(title, justify="left" if i < n_labels else "right", no_wrap=True)
    previous_average = False
    for row, cells in zip(table.rows, table.text_rows(digits), strict=True):
        if row.is_average and not previous_average:
            rich_table.add_section()
        previous_average = row.is_average
        rich_table.add_row(*cells, style="bold" if row.is_average else None)
    console.print(rich_table)
    for note in table.notes:
        console.print(f"  {note}", style="dim", markup=False, highlight=False)
