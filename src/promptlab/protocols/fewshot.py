"""fewshot (CoOp): train and test on all classes of the dataset; one accuracy."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from promptlab.data.types import DatasetSplits
from promptlab.protocols.base import (
    Protocol,
    ProtocolData,
    accuracies,
    all_classes_data,
    record_metric,
    require,
)
from promptlab.protocols.registry import register_protocol


@register_protocol
class FewShot(Protocol):
    name = "fewshot"
    order = 20
    # Tested on its training classes only (conf/protocol/fewshot.yaml has no targets).
    evaluates_other_classes = False
    plots_shots = True  # CoOp's Figure 3: accuracy versus shots
    average_rows = True  # the Average row is the mean of the per-dataset means
    column_titles = {"acc": "Acc."}

    def split(
        self,
        protocol_cfg: Mapping[str, Any],
        dataset_cfg: Mapping[str, Any],
        data_root: Path,
        source: DatasetSplits,
        few: DatasetSplits,
    ) -> ProtocolData:
        # protocol.targets is empty in conf/protocol/fewshot.yaml; extra targets are evaluated if given.
        return all_classes_data(protocol_cfg, dataset_cfg, data_root, source, few, source_name="all")

    single_evaluation_prefix = ""  # one evaluation ("all"): top5_acc, mean_class_acc

    def metrics(self, evaluations: Sequence[Mapping[str, Any]]) -> dict[str, float]:
        (acc,) = require(accuracies(evaluations), self.name, "all")
        return {"acc": acc}

    def values(self, record: Mapping[str, Any]) -> dict[str, float]:
        return {"acc": record_metric(record, "acc")}

    def value_columns(self, values: Sequence[Mapping[str, float]]) -> list[str]:
        return ["acc"]

