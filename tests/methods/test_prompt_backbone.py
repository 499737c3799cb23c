"""A prompt saved on one backbone is refused on another (same width, other weights) unless not strict."""

import pytest
import torch
from omegaconf import OmegaConf

from promptlab.engine.build import load_learner, save_learner
from promptlab.methods.coop import CoOpPrompts
from promptlab.models import BackboneMismatchError, load_clip
from promptlab.models.loading import BUILTIN_WEIGHTS


def test_prompt_from_another_backbone_is_refused_unless_not_strict(tmp_path):
    toy = load_clip(weights_file="builtin:toyclip")
    state = torch.load(BUILTIN_WEIGHTS["toyclip"], weights_only=True)
    other_path = tmp_path / "other.pt"
    torch.save({k: v * 1.01 if v.is_floating_point() else v for k, v in state.items()}, other_path)
    other = load_clip(weights_file=str(other_path))
    learner = CoOpPrompts(toy, n_ctx=4, init_seed=0)
    learner.set_classnames(toy, ["a", "b"])
    cfg = OmegaConf.create({"method": {"name": "coop"}, "model": {"name": "toyclip"}, "dataset": {"name": "toy"}})
    path = tmp_path / "prompt_learner.pt"
    save_learner(path, learner, cfg, clip=toy)
    fresh = CoOpPrompts(toy, n_ctx=4, init_seed=1)
    fresh.set_classnames(toy, ["a", "b"])
    load_learner(path, fresh, clip=toy)
    torch.testing.assert_close(fresh.ctx, learner.ctx)
    with pytest.raises(BackboneMismatchError, match="load_prompt=.*another backbone.*load_prompt_strict=false"):
        load_learner(path, fresh, clip=other)
    load_learner(path, fresh, clip=other, strict=False)
