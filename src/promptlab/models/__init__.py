"""Frozen CLIP models through open_clip."""

from promptlab.models.frozen import FrozenCLIP
from promptlab.models.loading import ClipLoadError, load_clip, load_clip_from_config

__all__ = ["ClipLoadError", "FrozenCLIP", "load_clip", "load_clip_from_config"]
