"""Prompt learners: hand-written (zero-shot), CoOp context, CoCoOp meta-net, KgCoOp."""

from promptlab.prompts.base import PromptLearner, logits_from_features
from promptlab.prompts.cocoop import CoCoOpPrompts
from promptlab.prompts.coop import CoOpPrompts
from promptlab.prompts.kgcoop import KgCoOpPrompts
from promptlab.prompts.zeroshot import ZeroShotPrompts

__all__ = [
    "CoCoOpPrompts", "CoOpPrompts", "KgCoOpPrompts", "PromptLearner", "ZeroShotPrompts", "logits_from_features",
]
