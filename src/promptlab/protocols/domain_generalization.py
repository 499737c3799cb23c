"""domain_generalization (CoOp): learn on ImageNet, test on its variants (V2, Sketch, A, R: the same
classes or subsets of them, other image distributions)."""

from __future__ import annotations

from promptlab.protocols.registry import register_protocol
from promptlab.protocols.transfer import TransferProtocol


@register_protocol
class DomainGeneralization(TransferProtocol):
    name = "domain_generalization"
    order = 40

