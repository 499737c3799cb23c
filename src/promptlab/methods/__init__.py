"""Prompt learners: hand-written (zero-shot), CoOp context, CoCoOp meta-net, KgCoOp, ProGrad; the deep and
multi-modal prompts (VPT, IVLP and its deep-language variant, MaPLe, PromptSRC); and the few-shot baselines that
share their interface: linear probe, Tip-Adapter, Tip-Adapter-F."""

from promptlab.methods.base import FitFeatures, PromptLearner, logits_from_features
from promptlab.methods.cocoop import CoCoOpPrompts
from promptlab.methods.coop import CoOpPrompts
from promptlab.methods.deep_prompts import DeepPromptLearner
from promptlab.methods.ivlp import IVLPPrompts
from promptlab.methods.kgcoop import KgCoOpPrompts
from promptlab.methods.linear_probe import LinearProbe
from promptlab.methods.maple import MaPLePrompts
from promptlab.methods.prograd import ProGradPrompts
from promptlab.methods.promptsrc import GaussianPromptAggregation, PromptSRCPrompts
from promptlab.methods.tip_adapter import TipAdapter, TipAdapterF
from promptlab.methods.vpt import VPTPrompts
from promptlab.methods.zeroshot import ZeroShotPrompts

__all__ = [
    "CoCoOpPrompts", "CoOpPrompts", "DeepPromptLearner", "FitFeatures", "GaussianPromptAggregation", "IVLPPrompts",
    "KgCoOpPrompts", "LinearProbe", "MaPLePrompts", "ProGradPrompts", "PromptLearner", "PromptSRCPrompts",
    "TipAdapter", "TipAdapterF", "VPTPrompts", "ZeroShotPrompts", "logits_from_features",
]
