"""What cross_dataset and domain_generalization share: learn on a source dataset (all classes), then
evaluate the same prompt on the source and on each target dataset."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from promptlab.data.types import DatasetSplits
from promptlab.protocols.base import (
    Protocol,
    ProtocolData,
    all_classes_data,
    evaluation_accuracy,
    not_applicable,
    record_metric,
)


class TransferProtocol(Protocol):
    """Evaluations: the source first, then one per target, each named after its dataset.

    Record metrics: "<dataset>_acc" for each evaluation plus target_mean_acc, the mean of the targets'
    accuracies. Table columns: source, each target, target average; no Average rows (the datasets are
    the columns).
    """

    column_titles = {"source": "Source", "target_mean": "Target avg."}

    def split(
        self,
        protocol_cfg: Mapping[str, Any],
        dataset_cfg: Mapping[str, Any],
        data_root: Path,
        source: DatasetSplits,
        few: DatasetSplits,
    ) -> ProtocolData:
        return all_classes_data(protocol_cfg, dataset_cfg, data_root, source, few, source_name=dataset_cfg["name"])

    def metrics(self, evaluations: Sequence[Mapping[str, Any]]) -> dict[str, float]:
        if not evaluations:
            raise ValueError(f"{self.name} metrics need at least the source evaluation; got none.")
        # Targets recorded as not applicable (a learner that cannot score their classes) have no accuracy.
        scored = [e for e in evaluations if not e.get("not_applicable")]
        metrics = {f"{e['name']}_acc": evaluation_accuracy(e) for e in scored}
        targets = [evaluation_accuracy(e) for e in scored if e is not evaluations[0]]  # evaluations[0]: the source
        if targets:
            metrics["target_mean_acc"] = statistics.fmean(targets)
        return metrics

    def values(self, record: Mapping[str, Any]) -> dict[str, float]:
        source, targets = self.datasets(record)
        values = {"source": record_metric(record, f"{source}_acc")}
        for target in targets:
            values[target] = record_metric(record, f"{target}_acc")
        if "target_mean_acc" in record["metrics"]:
            values["target_mean"] = record_metric(record, "target_mean_acc")
        elif targets:
            values["target_mean"] = statistics.fmean(values[t] for t in targets)
        return values

    def value_columns(self, values: Sequence[Mapping[str, float]]) -> list[str]:
        columns = super().value_columns(values)
        if "target_mean" in columns:  # the summary column goes last, after every target
            columns.remove("target_mean")
            columns.append("target_mean")
        return columns

    @staticmethod
    def datasets(record: Mapping[str, Any]) -> tuple[str, list[str]]:
        """(source, targets) of a record: its evaluations' datasets, the source first."""
        skipped = not_applicable(record)
        names = [str(e["dataset"]) for e in record.get("evaluations", [])
                 if "dataset" in e and str(e.get("name")) not in skipped]
        source = str(record["summary"].get("dataset", names[0] if names else "?"))
        return source, [n for n in names if n != source]
