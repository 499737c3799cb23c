"""The evaluation protocols of the prompt-learning papers, one object each (one module per protocol):

- base2novel (CoCoOp): train on the base half of the classes, test base among base and novel among
  novel, report the harmonic mean.
- fewshot (CoOp): train and test on all classes.
- cross_dataset (CoCoOp): train on a source dataset (all classes), test the same learned prompt on
  each target dataset's classes.
- domain_generalization (CoOp): train on ImageNet, test on its variants (same classes or subsets).

`get_protocol(name)` returns the object; it builds a run's data, turns its evaluations into the record's
metrics and fills its table (see `promptlab.protocols.base.Protocol`). Each module registers its protocol with
`@register_protocol` (registry.py) and is found by discovery, so a new protocol is one module here plus its
YAML in conf/protocol/ (docs/protocols.md); `protocol_names()` lists them in table order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from promptlab.protocols.base import MissingMetricError, Protocol, ProtocolData
from promptlab.protocols.registry import (
    get_protocol,
    protocol_names,
    register_protocol,
    table_protocol,
    unregister_protocol,
)

__all__ = [
    "MissingMetricError", "Protocol", "ProtocolData", "build_protocol_data", "get_protocol",
    "protocol_metrics", "protocol_names", "register_protocol", "table_protocol", "unregister_protocol",
]


def build_protocol_data(
    protocol: Mapping[str, Any],
    dataset_cfg: Mapping[str, Any],
    data_root: Path,
    shots: int,
    seed: int,
    fewshot_cache_dir: Path | None = None,
) -> ProtocolData:
    """Read the source dataset (and targets), draw the few-shot split, and list the evaluations.

    Same as `get_protocol(protocol["name"]).build_data(...)`; kept for the callers of the function.
    """
    return get_protocol(protocol["name"]).build_data(protocol, dataset_cfg, data_root, shots, seed,
                                                     fewshot_cache_dir)


def protocol_metrics(protocol: str, evaluations: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """The run record's flat `metrics` of a protocol from its evaluations (see results/records.py).

    Same as `get_protocol(protocol).metrics(evaluations)`; kept for the callers of the function.
    """
    return get_protocol(protocol).metrics(evaluations)
