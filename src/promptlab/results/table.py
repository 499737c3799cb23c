"""Tables from run records: one `ResultTable` per protocol, rendered as markdown, CSV, LaTeX or rich.

Aggregation rules (the same as the papers' tables, so numbers can be compared with them):

- A row is one (dataset, method) pair plus every summary key that takes several values inside some
  (dataset, method) pair (e.g. ``shots`` 1 vs 16): such keys split rows. Summary keys that vary
  among the records only from one (dataset, method) pair to another (``n_ctx`` per method,
  ``epochs`` per dataset) are shown as columns without splitting. ``seed`` is the replicate axis.
- A cell is "mean ± std" over the row's runs (seeds), std being the population standard deviation
  (ddof=0, numpy.std's default), as CoOp's ``parse_test_res.py`` reports it. The CSV and `to_records` add
  the half-width of the 95 % confidence interval of the mean (Student's t with n - 1 degrees of freedom
  and the sample std, `Cell.ci95`).
- Top-5 and mean-per-class accuracies (record metrics ending in ``top5_acc`` / ``mean_class_acc``, e.g.
  ``base_top5_acc``) become extra value columns next to the protocol's micro top-1 ones when runs have them.
What differs between protocols comes from the protocol object (``promptlab.protocols``): its value
columns, how a record's values are read, and how an Average row is made:

- base2novel: the HM column is the mean (± std) of the per-seed harmonic means. The "Average" row of
  a method averages the per-dataset means of base and of novel, and its HM is
  ``harmonic_mean(average base, average novel)``, as the CoCoOp and KgCoOp tables compute it
  (docs/reference.md, "Evaluation"); it is not the mean of the per-dataset HMs.
- fewshot: one accuracy column; the "Average" row is the mean of the per-dataset means.
- cross_dataset / domain_generalization: columns source, each target, target average (the mean of
  the per-seed ``target_mean_acc``); no Average rows.
Average rows are added when a table has at least two datasets.

A `ResultTable` renders itself (``to_markdown``, ``to_csv``, ``to_latex``) and hands its numbers out as
plain data (``to_records``, ``to_pandas``).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from promptlab.errors import RecordError
from promptlab.protocols import MissingMetricError, Protocol, protocol_names, table_protocol

log = logging.getLogger(__name__)

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
# Text-prompt learners, then the deep / multi-modal ones (docs/deep_prompts.md), then the few-shot baselines.
_METHOD_ORDER = ("zeroshot", "zero_shot", "zsclip", "coop", "cocoop", "kgcoop", "tcp", "prograd", "vpt", "ivlp",
                 "ivlp_language", "maple", "promptsrc", "linear_probe", "clip_adapter", "tip_adapter",
                 "tip_adapter_f", "gda", "lp_pp", "proker", "clap")
_DATASET_ORDER = (
    "imagenet", "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101",
    "fgvc_aircraft", "sun397", "dtd", "eurosat", "ucf101",
    "imagenet_v2", "imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r",
)
# Titles of the label columns; value columns take theirs from the protocol (ResultTable.titles).
_TITLES = {"dataset": "Dataset", "method": "Method"}
STD_NOTE = "mean ± std over seeds; std is the population std (ddof=0), as CoOp's parse_test_res.py."


# --------------------------------------------------------------------------- data classes


@dataclass(frozen=True)
class Cell:
    """One value: the mean over runs with its population std, or a derived number (std None).

    `n`: how many numbers the mean is over: runs for a dataset row, per-dataset means for an Average row.
    """

    mean: float
    std: float | None = None
    n: int | None = None

    @property
    def ci95(self) -> float | None:
        """Half-width of the 95 % confidence interval of the mean over the `n` runs: t(0.975, n - 1) * s / sqrt(n),
        s the sample std (ddof 1, from the stored population std). None for a derived number or a single run."""
        if self.std is None or self.n is None or self.n < 2:
            return None
        from scipy.stats import t  # scipy comes with scikit-learn; imported only here

        sample_std = self.std * math.sqrt(self.n / (self.n - 1))
        return float(t.ppf(0.975, self.n - 1)) * sample_std / math.sqrt(self.n)

    def text(self, digits: int = 2, pm: str = "±") -> str:
        if self.std is None:
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} {pm} {self.std:.{digits}f}"


@dataclass(frozen=True)
class RunValues:
    """The numbers one run (record) contributed to a row, with its seed and run dir."""

    seed: Any
    run_dir: str | None
    values: dict[str, float]


@dataclass
class Row:
    """A table row. `keys` holds the raw summary values, `labels` the text shown for them.

    `n_seeds` has one entry per group behind the row: one for a dataset row, one per dataset for an
    Average row. `runs` lists what each run of a dataset row contributed, in record order (empty for
    Average rows), for per-seed comparisons the cells' mean and std cannot give.
    """

    keys: dict[str, Any]
    labels: dict[str, str]
    cells: dict[str, Cell | None]
    n_seeds: tuple[int, ...]
    is_average: bool = False
    runs: list[RunValues] = field(default_factory=list)

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
        """Machine-readable columns: labels, `<col>_mean`, `<col>_std`, `<col>_ci95` (empty when derived), n_seeds."""
        columns = list(self.label_columns)
        for col in self.value_columns:
            columns += [f"{col}_mean", f"{col}_std", f"{col}_ci95"]
        columns.append("n_seeds")
        data = []
        for row in self.rows:
            values: list[Any] = [row.labels.get(c, "") for c in self.label_columns]
            for col in self.value_columns:
                cell = row.cells.get(col)
                values += [None] * 3 if cell is None else [round(cell.mean, 4), _round(cell.std), _round(cell.ci95)]
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

    # ----------------------------------------------------------------- renderers and plain data
    def to_markdown(self, digits: int = 2, with_notes: bool = True) -> str:
        """A GitHub-flavoured markdown table, preceded by the protocol name and followed by its notes."""
        header = self.header()
        lines = [f"## {self.protocol}", ""]
        lines.append("| " + " | ".join(_md_escape(h) for h in header) + " |")
        n_labels = len(self.label_columns)
        lines.append("|" + "|".join(":---" if i < n_labels else "---:" for i in range(len(header))) + "|")
        for cells in self.text_rows(digits):
            lines.append("| " + " | ".join(_md_escape(c) for c in cells) + " |")
        if with_notes and self.notes:
            lines.append("")
            lines += [f"- {_md_escape(note)}" for note in self.notes]
        return "\n".join(lines) + "\n"

    def to_csv(self) -> str:
        """CSV with separate mean and std columns (see `tabular`)."""
        columns, data = self.tabular()
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([["" if v is None else v for v in row] for row in data])
        return buffer.getvalue()

    def to_latex(self, digits: int = 2) -> str:
        """A booktabs `tabular` (needs \\usepackage{booktabs}); Average rows follow a \\midrule."""
        n_labels = len(self.label_columns)
        spec = "l" * n_labels + "r" * (len(self.value_columns) + 1)
        lines = [f"% promptlab {latex_escape(self.protocol)} table; {latex_escape(STD_NOTE)}"]
        lines += [rf"\begin{{tabular}}{{{spec}}}", r"\toprule"]
        lines.append(" & ".join(latex_escape(h) for h in self.header()) + r" \\")
        lines.append(r"\midrule")
        previous_average = False
        for row, cells in zip(self.rows, self.text_rows(digits, pm="$\\pm$"), strict=True):
            if row.is_average and not previous_average:
                lines.append(r"\midrule")
            previous_average = row.is_average
            escaped = [latex_escape(c) for c in cells[:n_labels]] + [
                c if "$\\pm$" in c else latex_escape(c) for c in cells[n_labels:]
            ]
            lines.append(" & ".join(escaped) + r" \\")
        lines += [r"\bottomrule", r"\end{tabular}"]
        return "\n".join(lines) + "\n"

    def record_columns(self) -> list[str]:
        """The keys of every `to_records` dict, in order."""
        columns = [*self.label_columns, "is_average"]
        for col in self.value_columns:
            columns += [f"{col}_mean", f"{col}_std", f"{col}_ci95", f"{col}_n"]
        return [*columns, "n_runs"]

    def to_records(self) -> list[dict[str, Any]]:
        """One plain dict per row (JSON-ready, unrounded): the label columns' raw summary values (dataset
        "Average" on Average rows), is_average, `<col>_mean` / `<col>_std` / `<col>_n` per value column
        (None when missing; std None for derived numbers such as the Average rows'), `<col>_ci95` (`Cell.ci95`),
        and n_runs, the runs behind the row."""
        records = []
        for row in self.rows:
            record: dict[str, Any] = {c: row.keys.get(c) for c in self.label_columns}
            record["is_average"] = row.is_average
            for col in self.value_columns:
                cell = row.cells.get(col)
                record[f"{col}_mean"] = None if cell is None else cell.mean
                record[f"{col}_std"] = None if cell is None else cell.std
                record[f"{col}_ci95"] = None if cell is None else cell.ci95
                record[f"{col}_n"] = None if cell is None else cell.n
            record["n_runs"] = sum(row.n_seeds)
            records.append(record)
        return records

    def to_pandas(self) -> Any:
        """The `to_records` rows as a pandas DataFrame (pandas is optional: imported only here)."""
        try:
            import pandas as pd
        except ImportError as exc:
            raise ImportError(
                "ResultTable.to_pandas needs pandas, which is not installed: pip install pandas "
                "(or use to_records() for plain dicts)."
            ) from exc
        return pd.DataFrame.from_records(self.to_records(), columns=self.record_columns())


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


# --------------------------------------------------------------------------- building


def build_tables(records: Iterable[dict[str, Any]], ignore_keys: Iterable[str] = (),
                 all_metrics: bool = False) -> list[ResultTable]:
    """One table per protocol found in the (complete) records: registered protocols in `protocol_names()` order,
    then unregistered ones A-Z.

    Raises ValueError when no protocol's records have the metrics its table needs.

    `ignore_keys`: extra summary keys that must not become columns (per-run bookkeeping). `all_metrics`: also
    the top-5 and mean-per-class accuracies the records have (promptlab-table --all-metrics); the papers' tables,
    and so the default, show micro top-1 only.
    """
    by_protocol: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        by_protocol.setdefault(str(record["summary"].get("protocol", "unknown")), []).append(record)
    known = protocol_names()
    order = sorted(by_protocol, key=lambda p: (known.index(p) if p in known else len(known), p))
    tables, problems = [], []
    for protocol in order:
        try:
            extra = extra_accuracy_metrics(by_protocol[protocol]) if all_metrics else []
            tables.append(build_table(by_protocol[protocol], protocol, ignore_keys, extra_metrics=extra))
        except ValueError as exc:  # one protocol without usable metrics must not hide the others
            problems.append(str(exc))
            log.warning("no %s table: %s", protocol, exc)
    if problems and not tables:
        raise RecordError("; ".join(problems))
    return tables


def build_table(
    records: Sequence[dict[str, Any]],
    protocol: str,
    ignore_keys: Iterable[str] = (),
    *,
    split_by: Sequence[str] = (),
    extra_metrics: Sequence[str] = (),
) -> ResultTable:
    """The table of one protocol (see the module docstring for the rules).

    `split_by`: summary keys that split rows (and are label columns) even where they do not vary within a
    (dataset, method) pair. `extra_metrics`: record metrics shown as extra value columns after the
    protocol's own, mean ± std over the runs that have them (a run without them still counts elsewhere).
    Raises ValueError when no record has the metrics the protocol's table needs.
    """
    proto = table_protocol(protocol)
    notes = [STD_NOTE]
    usable, values = [], []
    for record in records:
        try:
            values.append(_record_values(proto, record, extra_metrics))
            usable.append(record)
            notes += [note for note in proto.value_notes(record) if note not in notes]
        except MissingMetricError as exc:
            notes.append(f"skipped {record.get('run_dir', '?')}: {exc.args[0]}")
    if not usable:
        raise RecordError(f"no {protocol} record has the metrics this table needs: {'; '.join(notes[1:])}")

    skip = NON_COLUMN_KEYS | set(ignore_keys)
    # A summary key becomes a column only when it splits rows: it varies within one (dataset, method)
    # pair (shots 1 vs 16, n_ctx 4 vs 16, spurious 0 vs 1). Keys that only differ between methods
    # (each method's own lr or epochs) describe the method, not an experimental axis.
    varying = _varying_keys([r["summary"] for r in usable], skip)
    split_keys = _key_ordered({k for k in varying if _varies_within_pairs(usable, k)} | set(split_by))
    extra_keys = split_keys
    if split_keys:
        notes.append("rows split by the summary keys that vary within a dataset and method: " + ", ".join(split_keys))

    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, record in enumerate(usable):
        s = record["summary"]
        group_key = (s.get("dataset"), s.get("method"), *(_freeze(s.get(k)) for k in split_keys))
        groups.setdefault(group_key, []).append(i)

    value_columns = list(proto.value_columns(values))
    value_columns += [m for m in extra_metrics if m not in value_columns]
    rows = []
    for group_key in sorted(groups, key=_row_sort_key):
        members = groups[group_key]
        rows.append(_group_row([usable[i] for i in members], [values[i] for i in members],
                               extra_keys, value_columns, notes))

    if proto.average_rows:
        rows += _average_rows(proto, rows, extra_keys, split_keys, value_columns, notes)
    notes += proto.table_notes
    titles = {c: proto.column_titles.get(c, _extra_title(c)) for c in value_columns}
    label_columns = ["dataset", "method", *extra_keys]
    return ResultTable(protocol, label_columns, value_columns, rows, titles, notes, split_keys)


#: Record metrics shown beside the micro top-1 columns when runs have them: `<evaluation>_top5_acc` and
#: `<evaluation>_mean_class_acc` (mean of the per-class accuracies), e.g. base_top5_acc, novel_mean_class_acc.
EXTRA_ACCURACY_SUFFIXES = ("top5_acc", "mean_class_acc")


def extra_accuracy_metrics(records: Iterable[dict[str, Any]]) -> list[str]:
    """The top-5 / mean-per-class metrics some of the records have, sorted (base before novel by name)."""
    found = {key for record in records for key in record.get("metrics", {})
             if isinstance(key, str) and key.endswith(EXTRA_ACCURACY_SUFFIXES)}
    return sorted(found)


def _freeze(value: Any) -> Any:
    """A hashable, comparable stand-in for a summary value (lists/dicts compare by their JSON)."""
    return json.dumps(value, sort_keys=True) if isinstance(value, (list, dict)) else value


def _record_values(proto: Protocol, record: dict[str, Any], extra_metrics: Sequence[str]) -> dict[str, float]:
    values = proto.values(record)
    for key in extra_metrics:
        value = record["metrics"].get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            values.setdefault(key, float(value))
    return values


def _extra_title(column: str) -> str:
    """ "base_top5_acc" -> "Base top-5", "mean_class_acc" -> "mean/class"; other names unchanged."""
    for suffix, title in (("top5_acc", "top-5"), ("mean_class_acc", "mean/class")):
        if column.endswith(suffix):
            prefix = column[: -len(suffix)].rstrip("_")
            return f"{prefix.capitalize()} {title}" if prefix else title
    return column


def _key_ordered(keys: Iterable[str]) -> list[str]:
    return sorted(keys, key=lambda k: (_KEY_ORDER.index(k) if k in _KEY_ORDER else len(_KEY_ORDER), k))


def _varying_keys(summaries: Sequence[dict[str, Any]], skip: frozenset[str] | set[str]) -> list[str]:
    keys = {k for s in summaries for k in s} - set(skip)
    return _key_ordered(k for k in keys if len({_freeze(s.get(k)) for s in summaries}) > 1)


def _varies_within_pairs(records: Sequence[dict[str, Any]], key: str) -> bool:
    seen: dict[tuple[Any, Any], Any] = {}
    for record in records:
        s = record["summary"]
        pair, value = (s.get("dataset"), s.get("method")), _freeze(s.get(key))
        if seen.setdefault(pair, value) != value:
            return True
    return False


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
        cells[col] = Cell(statistics.fmean(present), statistics.pstdev(present), len(present)) if present else None
    runs = [RunValues(r["summary"].get("seed"), r.get("run_dir"), v) for r, v in zip(records, values, strict=True)]
    return Row(keys, labels, cells, (len(records),), runs=runs)


def _average_rows(
    proto: Protocol,
    rows: list[Row],
    extra_keys: list[str],
    split_keys: list[str],
    value_columns: list[str],
    notes: list[str],
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
        cells = _average_cells(proto, members, value_columns)
        keys = {**members[0].keys, "dataset": AVERAGE}
        labels = {**members[0].labels, "dataset": label}
        for k in extra_keys:  # show a key only when every averaged row agrees on it
            if len({_freeze(m.keys[k]) for m in members}) > 1:
                keys[k], labels[k] = None, "mixed"
        averages.append(Row(keys, labels, cells, tuple(n for m in members for n in m.n_seeds), True))
    return averages


def _average_cells(proto: Protocol, members: list[Row], value_columns: list[str]) -> dict[str, Cell | None]:
    # The protocol sees the per-dataset means of the columns every averaged row has; it decides what the
    # Average row shows (base2novel: HM of the averaged base and novel, not the mean of the HMs).
    means: dict[str, list[float]] = {}
    for col in value_columns:
        cells = [m.cells.get(col) for m in members]
        if all(c is not None for c in cells):
            means[col] = [c.mean for c in cells]  # type: ignore[union-attr]
    numbers: Mapping[str, float] = proto.average(means)
    return {c: Cell(numbers[c], None, len(members)) if c in numbers else None for c in value_columns}


# --------------------------------------------------------------------------- renderers


def to_markdown(table: ResultTable, digits: int = 2, with_notes: bool = True) -> str:
    """`ResultTable.to_markdown`."""
    return table.to_markdown(digits, with_notes)


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def to_csv(table: ResultTable) -> str:
    """`ResultTable.to_csv`."""
    return table.to_csv()


_LATEX_SPECIALS = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
}


def latex_escape(text: str) -> str:
    """Escape the characters LaTeX treats specially (underscores in dataset keys, % in titles ...)."""
    return "".join(_LATEX_SPECIALS.get(ch, ch) for ch in text)


def to_latex(table: ResultTable, digits: int = 2) -> str:
    """`ResultTable.to_latex`."""
    return table.to_latex(digits)


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
