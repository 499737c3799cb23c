"""fewshot (CoOp): train and test on all classes of the dataset; one accuracy."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from promptlab.protocols.base import (
    Protocol,
    ProtocolData,
    accuracies,
    checked,
    eval_sets,
    read_source,
    record_metric,
    register,
    require,
    target_eval_sets,
)


class FewShot(Protocol):
    name = "fewshot"
    average_rows = True  # the Average row is the mean of the per-dataset means
    column_titles = {"acc": "Acc."}

    def build_data(
        self,
        protocol_cfg: Mapping[str, Any],
        dataset_cfg: Mapping[str, Any],
        data_root: Path,
        shots: int,
        seed: int,
        fewshot_cache_dir: Path | None = None,
    ) -> ProtocolData:
        source, few = read_source(dataset_cfg, data_root, shots, seed, fewshot_cache_dir)
        sets = eval_sets(source, dataset_cfg["name"], ["all"], name="all")
        # protocol.targets is empty in conf/protocol/fewshot.yaml; extra targets are evaluated if given.
        sets += target_eval_sets(protocol_cfg, data_root)
        data = ProtocolData(train_items=few.train, train_classnames=few.classnames, eval_sets=sets,
                            notes=list(few.notes), source_splits=source, val_items=few.val)
        return checked(data, dataset_cfg)

    def metrics(self, evaluations: Sequence[Mapping[str, Any]]) -> dict[str, float]:
        (acc,) = require(accuracies(evaluations), self.name, "all")
        return {"acc": acc}

    def values(self, record: Mapping[str, Any]) -> dict[str, float]:
        return {"acc": record_metric(record, "acc")}

    def value_columns(self, values: Sequence[Mapping[str, float]]) -> list[str]:
        return ["acc"]


PROTOCOL = register(FewShot())
