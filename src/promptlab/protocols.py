"""The evaluation protocols of the prompt-learning papers, as data: what to train on, what to test on.

- base2novel (CoCoOp): train on the base half of the classes, test base among base and novel among
  novel, report the harmonic mean.
- fewshot (CoOp): train and test on all classes.
- cross_dataset (CoCoOp): train on a source dataset (all classes), test the same learned prompt on
  each target dataset's classes.
- domain_generalization (CoOp): train on ImageNet, test on its variants (same classes or subsets).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import promptlab.toy.reader  # noqa: F401  (registers the toy world's reader)
from promptlab.data.base_novel import subsample_classes
from promptlab.data.fewshot import fewshot_splits
from promptlab.data.readers import read_dataset
from promptlab.data.types import DatasetSplits, Datum, EvalSet
from promptlab.results.metrics import harmonic_mean

PROTOCOLS = ("base2novel", "fewshot", "cross_dataset", "domain_generalization")


@dataclass
class ProtocolData:
    train_items: list[Datum]
    train_classnames: list[str]
    eval_sets: list[EvalSet]
    notes: list[str] = field(default_factory=list)
    source_splits: DatasetSplits | None = None


def _eval_sets(splits: DatasetSplits, dataset_name: str, subsets: list[str], name_prefix: str = "") -> list[EvalSet]:
    sets = []
    for subset in subsets:
        part = subsample_classes(splits, subset)
        name = name_prefix or subset
        sets.append(EvalSet(name=name, dataset=dataset_name, subset=subset, classnames=part.classnames,
                            items=part.test))
    return sets


def build_protocol_data(
    protocol: Mapping[str, Any],
    dataset_cfg: Mapping[str, Any],
    data_root: Path,
    shots: int,
    seed: int,
    fewshot_cache_dir: Path | None = None,
) -> ProtocolData:
    """Read the source dataset (and targets), draw the few-shot split, and list the evaluations."""
    name = protocol["name"]
    if name not in PROTOCOLS:
        raise ValueError(f"protocol.name={name!r}; expected one of {PROTOCOLS}.")
    source = read_dataset(dataset_cfg, data_root)
    few = fewshot_splits(source, shots, seed, fewshot_cache_dir)
    notes = list(few.notes)
    if name == "base2novel":
        train = subsample_classes(few, "base")
        eval_sets = _eval_sets(source, dataset_cfg["name"], ["base", "novel"])
    else:
        train = few
        eval_sets = _eval_sets(source, dataset_cfg["name"], ["all"],
                               name_prefix="all" if name == "fewshot" else dataset_cfg["name"])
        for target_key, target_cfg in (protocol.get("targets") or {}).items():
            target = read_dataset(target_cfg, data_root)
            eval_sets += _eval_sets(target, target_cfg.get("name", target_key), ["all"],
                                    name_prefix=target_cfg.get("name", target_key))
    if not train.train:
        raise ValueError(f"{dataset_cfg['name']}: the training split is empty after few-shot sampling.")
    return ProtocolData(train_items=train.train, train_classnames=train.classnames, eval_sets=eval_sets,
                        notes=notes, source_splits=source)


def protocol_metrics(protocol: str, evaluations: list[dict[str, Any]]) -> dict[str, float]:
    """The run record's flat `metrics` of a protocol from its evaluations (see results/records.py)."""
    by_name = {e["name"]: e["acc"] for e in evaluations}
    if protocol == "base2novel":
        base, novel = by_name["base"], by_name["novel"]
        return {"base_acc": base, "novel_acc": novel, "hm": harmonic_mean(base, novel)}
    if protocol == "fewshot":
        return {"acc": by_name["all"]}
    metrics = {f"{e['name']}_acc": e["acc"] for e in evaluations}
    targets = [e["acc"] for e in evaluations[1:]]
    if targets:
        metrics["target_mean_acc"] = sum(targets) / len(targets)
    return metrics
