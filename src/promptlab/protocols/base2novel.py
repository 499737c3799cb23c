"""base2novel (CoCoOp): train on the base half of the classes, test base among base and novel among novel,
report their harmonic mean (HM)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from promptlab.data.types import DatasetSplits
from promptlab.protocols.base import (
    Protocol,
    ProtocolData,
    accuracies,
    eval_sets,
    not_applicable,
    record_label,
    record_metric,
    require,
)
from promptlab.protocols.registry import register_protocol
from promptlab.results.metrics import harmonic_mean


@register_protocol
class Base2Novel(Protocol):
    name = "base2novel"
    order = 10
    figure = "base_novel"
    average_rows = True
    column_titles = {"base": "Base", "novel": "Novel", "hm": "HM"}
    table_notes = (
        "HM column: mean of the per-seed HMs. Average rows: base and novel are the means of the "
        "per-dataset means; HM = harmonic mean of those two averages.",
    )

    def split(
        self,
        protocol_cfg: Mapping[str, Any],
        dataset_cfg: Mapping[str, Any],
        data_root: Path,
        source: DatasetSplits,
        few: DatasetSplits,
    ) -> ProtocolData:
        from promptlab.data.base_novel import subsample_classes

        # The few-shot draw covers all classes; training keeps its base half, tests split the test set.
        train = subsample_classes(few, "base")
        data = ProtocolData(train_items=train.train, train_classnames=train.classnames,
                            eval_sets=eval_sets(source, dataset_cfg["name"], ["base", "novel"]),
                            notes=list(few.notes), source_splits=source, val_items=train.val)
        return data

    def metrics(self, evaluations: Sequence[Mapping[str, Any]]) -> dict[str, float]:
        accs = accuracies(evaluations)
        if "novel" in not_applicable(evaluations):
            # A learner that cannot name novel classes (linear probe): base only, no made-up novel or HM.
            (base,) = require(accs, self.name, "base")
            return {"base_acc": base}
        base, novel = require(accs, self.name, "base", "novel")
        return {"base_acc": base, "novel_acc": novel, "hm": harmonic_mean(base, novel)}

    def values(self, record: Mapping[str, Any]) -> dict[str, float]:
        if "novel" in not_applicable(record):
            return {"base": record_metric(record, "base_acc")}  # novel and HM show as missing, with a note
        base, novel = record_metric(record, "base_acc"), record_metric(record, "novel_acc")
        # Recomputed, not read from metrics["hm"], so every HM in a table comes from the one formula.
        return {"base": base, "novel": novel, "hm": harmonic_mean(base, novel)}

    def value_columns(self, values: Sequence[Mapping[str, float]]) -> list[str]:
        return ["base", "novel", "hm"]

    def value_notes(self, record: Mapping[str, Any]) -> list[str]:
        reason = not_applicable(record).get("novel")
        if reason is None:
            return []
        return [f"{record_label(record)}: Novel and HM not applicable (shown as –): {reason}."]

    def average(self, means: Mapping[str, Sequence[float]]) -> dict[str, float]:
        out = super().average(means)
        out.pop("hm", None)  # never the mean of the per-dataset HMs (the papers' tables do not average HMs)
        if "base" not in out or "novel" not in out:
            # Without both averages there is no HM, and a lone base or novel average would not compare.
            out.pop("base", None)
            out.pop("novel", None)
            return out
        out["hm"] = harmonic_mean(out["base"], out["novel"])
        return out

