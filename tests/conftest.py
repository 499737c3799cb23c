"""Shared fixtures: a tiny random CLIP (no asset needed) and single-threaded torch for steady tests."""

from __future__ import annotations

import os

import open_clip
import pytest
import torch

from promptlab.models.frozen import FrozenCLIP

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)


def make_random_clip(seed: int = 0, truncate_text: bool = True, share_prefix: bool = True) -> FrozenCLIP:
    """A randomly initialised CLIP with the toy architecture (ViT width 64, text width 64)."""
    torch.manual_seed(seed)
    model = open_clip.model.CLIP(
        embed_dim=64,
        vision_cfg=open_clip.model.CLIPVisionCfg(layers=2, width=64, patch_size=8, image_size=32),
        text_cfg=open_clip.model.CLIPTextCfg(context_length=77, vocab_size=49408, width=64, heads=1, layers=2),
        quick_gelu=True,
    )
    return FrozenCLIP(model, open_clip.get_tokenizer("ViT-B-32"), weights_id=f"random:{seed}",
                      truncate_text=truncate_text, share_prefix=share_prefix)


@pytest.fixture(scope="session")
def random_clip() -> FrozenCLIP:
    return make_random_clip()
