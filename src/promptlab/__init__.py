"""promptlab: prompt learning (zero-shot CLIP, CoOp, CoCoOp, KgCoOp) on frozen CLIP models."""

__version__ = "0.1.0"
