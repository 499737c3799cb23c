"""cross_dataset (CoCoOp): learn on a source dataset (all classes), test the same prompt on each target
dataset's own classes."""

from __future__ import annotations

from promptlab.protocols.registry import register_protocol
from promptlab.protocols.transfer import TransferProtocol


@register_protocol
class CrossDataset(TransferProtocol):
    name = "cross_dataset"
    order = 30

