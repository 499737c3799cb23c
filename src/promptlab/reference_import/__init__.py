"""The reference repositories' artefacts in promptlab: Dassl prompt checkpoints (CoOp, CoCoOp, KgCoOp) and Dassl
few-shot selections, read through a restricted unpickler (docs/reference_artefacts.md)."""
