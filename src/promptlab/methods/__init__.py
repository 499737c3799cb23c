"""Prompt learners: hand-written (zero-shot), CoOp context, CoCoOp meta-net, KgCoOp; and the few-shot
baselines that share their interface: linear probe, Tip-Adapter, Tip-Adapter-F."""

from promptlab.methods.base import FitFeatures, PromptLearner, logits_from_features
from promptlab.methods.cocoop import CoCoOpPrompts
from promptlab.methods.coop import CoOpPrompts
from promptlab.methods.kgcoop import KgCoOpPrompts
from promptlab.methods.linear_probe import LinearProbe
from promptlab.methods.prograd import ProGradPrompts
from promptlab.methods.tip_adapter import TipAdapter, TipAdapterF
from promptlab.methods.zeroshot import ZeroShotPrompts

__all__ = [
    "CoCoOpPrompts", "CoOpPrompts", "FitFeatures", "KgCoOpPrompts", "LinearProbe", "ProGradPrompts", "PromptLearner",
    "TipAdapter", "TipAdapterF", "ZeroShotPrompts", "logits_from_features",
]
