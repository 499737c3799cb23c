"""Prompt learners: hand-written (zero-shot), CoOp context, CoCoOp meta-net, KgCoOp."""

from promptlab.methods.base import PromptLearner, logits_from_features
from promptlab.methods.cocoop import CoCoOpPrompts
from promptlab.methods.coop import CoOpPrompts
from promptlab.methods.kgcoop import KgCoOpPrompts
from promptlab.methods.zeroshot import ZeroShotPrompts

__all__ = [
    "CoCoOpPrompts", "CoOpPrompts", "KgCoOpPrompts", "PromptLearner", "ZeroShotPrompts", "logits_from_features",
]
