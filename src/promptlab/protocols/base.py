"""The contract of an evaluation protocol and the helpers the protocols share (the registry: registry.py).

A protocol is one object (see `Protocol`) that knows the three things that differ between the papers'
evaluations: which data a run trains and is tested on (`build_data`), which flat metrics its run record
carries (`metrics`), and how its table is filled (`value_columns`, `values`, `average`).

Layering: this package may import `promptlab.data.*`, `promptlab.toy.reader`, `promptlab.results.metrics` and
`promptlab.errors` only; the tables (`promptlab.results.table`) ask it, never the other way round.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from promptlab.data.types import DatasetSplits, Datum, EvalSet
from promptlab.results.metrics import accuracy_percent


@dataclass
class ProtocolData:
    """What a run trains on and the evaluations it runs afterwards (source first)."""

    train_items: list[Datum]
    train_classnames: list[str]
    eval_sets: list[EvalSet]
    notes: list[str] = field(default_factory=list)
    source_splits: DatasetSplits | None = None
    # The few-shot validation split of the training classes (labels as train_items'): what a learner may
    # choose hyper-parameters on (linear probe's C, Tip-Adapter's alpha/beta), never the test split.
    val_items: list[Datum] = field(default_factory=list)


class MissingMetricError(KeyError):
    """A complete record without a metric its protocol's table needs (the table skips that record)."""


class Protocol:
    """One evaluation protocol. Subclasses set `name` and override what differs from these defaults.

    The defaults describe a table of every numeric metric of the records, without Average rows; they
    are what a record of an unregistered protocol gets (`table_protocol`).
    """

    name: str = ""
    # Position of its tables among the protocols' (and of its name in `protocol_names()`): lower first; equal
    # orders keep the order of registration. The shipped protocols take 10-40 (the papers' order).
    order: int = 100
    # Whether a run is tested on classes it did not train on (novel classes, other datasets): a learner that
    # cannot score such classes (a class-specific context) is refused at compose time unless this is False.
    evaluates_other_classes: bool = True
    # The figure of its tables (promptlab.results.plots): "bars" (grouped bars of the value columns) or
    # "base_novel" (base and novel bars with the HM marked; needs the value columns base, novel and hm).
    figure: str = "bars"
    # Whether a table whose rows hold several shot counts is drawn as accuracy versus shots instead.
    plots_shots: bool = False
    # Whether a table gets one Average row per method (and split-key values) over its datasets.
    average_rows: bool = False
    # Column titles of this protocol's value columns (anything not listed shows its key).
    column_titles: Mapping[str, str] = {}
    # Notes appended to every table of this protocol (after the notes about the data).
    table_notes: tuple[str, ...] = ()

    # ----------------------------------------------------------------- running
    def build_data(
        self,
        protocol_cfg: Mapping[str, Any],
        dataset_cfg: Mapping[str, Any],
        data_root: Path,
        shots: int,
        seed: int,
        fewshot_cache_dir: Path | None = None,
        *,
        on_error: str = "raise",
        save_fewshot: bool = True,
    ) -> ProtocolData:
        """Read the source dataset (and targets), draw the few-shot split, and list the evaluations.

        `on_error`: loader.on_error, what a missing source image does (raise, or skip it); `save_fewshot=False`
        for runs that do not train: the selection is drawn but no file is written."""
        source, few = read_source(dataset_cfg, data_root, shots, seed, fewshot_cache_dir, on_error=on_error,
                                  save_fewshot=save_fewshot)
        return checked(self.split(protocol_cfg, dataset_cfg, data_root, source, few), dataset_cfg)

    def split(
        self,
        protocol_cfg: Mapping[str, Any],
        dataset_cfg: Mapping[str, Any],
        data_root: Path,
        source: DatasetSplits,
        few: DatasetSplits,
    ) -> ProtocolData:
        """What a run trains on and evaluates, from the source dataset and its few-shot draw."""
        raise NotImplementedError(f"protocol {self.name!r} cannot build run data; it only reads tables.")

    def metrics(self, evaluations: Sequence[Mapping[str, Any]]) -> dict[str, float]:
        """The run record's flat `metrics` from its evaluations (accuracies from the integer counts)."""
        return {f"{e['name']}_acc": evaluation_accuracy(e) for e in evaluations}

    #: Prefix of the extra accuracies of a protocol with one evaluation ("" -> top5_acc), else None (per name).
    single_evaluation_prefix: str | None = None

    def extra_metrics(self, evaluations: Sequence[Mapping[str, Any]]) -> dict[str, float]:
        """Top-5 and mean-per-class accuracy of each scored evaluation, beside the micro top-1 of `metrics`:
        `<evaluation>_top5_acc` and `<evaluation>_mean_class_acc` (the result tables show them as columns)."""
        out: dict[str, float] = {}
        for e in evaluations:
            if e.get("not_applicable") or "top5_acc" not in e:
                continue
            prefix = self.single_evaluation_prefix if self.single_evaluation_prefix is not None else f"{e['name']}_"
            out[f"{prefix}top5_acc"] = float(e["top5_acc"])
            out[f"{prefix}mean_class_acc"] = float(e["mean_per_class_acc"])
        return out

    # ----------------------------------------------------------------- tables
    def values(self, record: Mapping[str, Any]) -> dict[str, float]:
        """The numbers one complete record contributes to its table row; MissingMetricError when it lacks one."""
        return {
            k: float(v) for k, v in record["metrics"].items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        }

    def value_columns(self, values: Sequence[Mapping[str, float]]) -> list[str]:
        """The table's value columns, given what every usable record contributed (`values` of each)."""
        columns: dict[str, None] = {}
        for v in values:
            columns.update(dict.fromkeys(v))
        return list(columns)

    def value_notes(self, record: Mapping[str, Any]) -> list[str]:
        """Table notes a record brings (why a value is missing): one per evaluation recorded as not applicable."""
        return [f"{record_label(record)}: {name} not applicable (shown as –): {reason}."
                for name, reason in not_applicable(record).items()]

    def average(self, means: Mapping[str, Sequence[float]]) -> dict[str, float]:
        """An Average row's numbers from the per-dataset means of each column (only columns every averaged
        row has). Columns left out of the result show as missing. Default: the mean of the means."""
        return {column: statistics.fmean(values) for column, values in means.items()}

    def __repr__(self) -> str:
        return f"<protocol {self.name}>"


class GenericProtocol(Protocol):
    """Stand-in for a record whose protocol is not registered: a table of all its numeric metrics."""

    def __init__(self, name: str) -> None:
        self.name = name


# --------------------------------------------------------------------------- shared helpers


def evaluation_accuracy(evaluation: Mapping[str, Any]) -> float:
    """Top-1 accuracy in percent of one evaluation, from its integer counts.

    The counts are the measurement; a float `acc` next to them may carry rounding from the device, so
    every recorded accuracy is recomputed here (2 of 5 is exactly 40.0).
    """
    name = evaluation.get("name", "?")
    try:
        n_correct, n_images = evaluation["n_correct"], evaluation["n_images"]
    except KeyError as exc:
        raise ValueError(
            f"evaluation {name!r} has no {exc.args[0]!r}; each evaluation must carry the integer counts "
            "n_correct and n_images."
        ) from None
    for key, value in (("n_correct", n_correct), ("n_images", n_images)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"evaluation {name!r}: {key} must be an integer count, got {value!r}.")
    return accuracy_percent(n_correct, n_images)


def accuracies(evaluations: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Accuracy (percent, from the counts) of each evaluation, by evaluation name; evaluations recorded as not
    applicable (see `not_applicable`) have none and are left out."""
    return {str(e["name"]): evaluation_accuracy(e) for e in evaluations if not e.get("not_applicable")}


def not_applicable(record_or_evaluations: Any) -> dict[str, str]:
    """Evaluation name -> the reason it was not run (a learner that cannot score those classes), of a record
    or a list of evaluations."""
    evaluations = record_or_evaluations
    if isinstance(record_or_evaluations, Mapping):
        evaluations = record_or_evaluations.get("evaluations", [])
    return {str(e["name"]): str(e["not_applicable"]) for e in evaluations if e.get("not_applicable")}


def require(accs: Mapping[str, float], protocol: str, *names: str) -> list[float]:
    """The accuracies of the named evaluations, with an error naming what is missing."""
    missing = [n for n in names if n not in accs]
    if missing:
        raise ValueError(
            f"{protocol} metrics need the evaluations {list(names)}; missing {missing} (got {sorted(accs)})."
        )
    return [accs[n] for n in names]


def record_label(record: Mapping[str, Any]) -> str:
    summary = record.get("summary", {})
    method = summary.get("method_display", summary.get("method", "?"))
    return f"{method} on {summary.get('dataset_display', summary.get('dataset', '?'))}"


def record_metric(record: Mapping[str, Any], key: str) -> float:
    """A numeric metric of a record; MissingMetricError when absent or not a number."""
    value = record["metrics"].get(key)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise MissingMetricError(f"metric {key!r} missing or not a number")
    return float(value)


def read_source(
    dataset_cfg: Mapping[str, Any], data_root: Path, shots: int, seed: int, fewshot_cache_dir: Path | None,
    on_error: str = "raise", save_fewshot: bool = True,
) -> tuple[DatasetSplits, DatasetSplits]:
    """(the source dataset, its few-shot split)."""
    # Imported here, not at the top: tables import the protocols, and reading a sweep must not load the
    # dataset readers or the toy world's generator. Importing promptlab.toy.reader registers its reader.
    import promptlab.toy.reader  # noqa: F401
    from promptlab.data.fewshot import fewshot_splits
    from promptlab.data.readers import read_dataset

    source = read_dataset(dataset_cfg, data_root, on_missing=on_error)
    return source, fewshot_splits(source, shots, seed, fewshot_cache_dir, save=save_fewshot)


def eval_sets(splits: DatasetSplits, dataset_name: str, subsets: Sequence[str], name: str = "") -> list[EvalSet]:
    """One evaluation per class subset ("base", "novel", "all") of the test split; `name` overrides the
    evaluation's name (default: the subset)."""
    from promptlab.data.base_novel import subsample_classes

    sets = []
    for subset in subsets:
        part = subsample_classes(splits, subset)
        sets.append(EvalSet(name=name or subset, dataset=dataset_name, subset=subset, classnames=part.classnames,
                            items=part.test))
    return sets


def target_eval_sets(protocol_cfg: Mapping[str, Any], data_root: Path) -> list[EvalSet]:
    """One evaluation on all classes of each target dataset in protocol.targets, named after the target."""
    from promptlab.data.readers import read_dataset

    sets = []
    for target_key, target_cfg in (protocol_cfg.get("targets") or {}).items():
        target_name = target_cfg.get("name", target_key)
        # A missing target image is only reported here; the loader then raises (before training) or skips it
        # as loader.on_error says.
        sets += eval_sets(read_dataset(target_cfg, data_root, on_missing="skip"), target_name, ["all"],
                          name=target_name)
    return sets


def checked(data: ProtocolData, dataset_cfg: Mapping[str, Any]) -> ProtocolData:
    if not data.train_items:
        raise ValueError(f"{dataset_cfg['name']}: the training split is empty after few-shot sampling.")
    return data


def all_classes_data(
    protocol_cfg: Mapping[str, Any],
    dataset_cfg: Mapping[str, Any],
    data_root: Path,
    source: DatasetSplits,
    few: DatasetSplits,
    source_name: str,
) -> ProtocolData:
    """Train on every class of the few-shot draw; evaluate the source's test set (named `source_name`), then
    each of protocol.targets."""
    sets = eval_sets(source, dataset_cfg["name"], ["all"], name=source_name)
    sets += target_eval_sets(protocol_cfg, data_root)
    return ProtocolData(train_items=few.train, train_classnames=few.classnames, eval_sets=sets,
                        notes=list(few.notes), source_splits=source, val_items=few.val)
