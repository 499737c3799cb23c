"""Frozen CLIP models through open_clip (adapter.py is the only module that reads open_clip's internals)."""

from promptlab.models.adapter import UnsupportedBackboneError
from promptlab.models.frozen import BackboneMismatchError, FrozenCLIP
from promptlab.models.loading import ClipLoadError, load_clip, load_clip_from_config

__all__ = [
    "BackboneMismatchError",
    "ClipLoadError",
    "FrozenCLIP",
    "UnsupportedBackboneError",
    "load_clip",
    "load_clip_from_config",
]
