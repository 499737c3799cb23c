"""cross_dataset (CoCoOp): learn on a source dataset (all classes), test the same prompt on each target
dataset's own classes."""

from __future__ import annotations

from promptlab.protocols.base import register
from promptlab.protocols.transfer import TransferProtocol


class CrossDataset(TransferProtocol):
    name = "cross_dataset"


PROTOCOL = register(CrossDataset())
