"""CLIP-Adapter: the residual bottleneck formula on a hand-built adapter, a training step, and a CLI run."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from promptlab.config import compose
from promptlab.errors import ConfigError
from promptlab.methods.base import TrainingStep
from promptlab.methods.clip_adapter import CLIPAdapter
from tests.runs import run_cli, tiny_overrides, top1_metrics

NAMES = ["red circle", "blue square", "green star"]
TEMPLATES = ["a photo of a {}."]


def _adapter(clip, **kwargs) -> CLIPAdapter:
    learner = CLIPAdapter(clip, TEMPLATES, init_seed=0, **kwargs)
    learner.set_classnames(clip, NAMES)
    return learner


def test_the_layout_is_the_reference_bottleneck(random_clip) -> None:
    learner = _adapter(random_clip)
    dim = random_clip.embed_dim
    assert learner.adapter.down.weight.shape == (dim // 4, dim) and learner.adapter.up.weight.shape == (dim, dim // 4)
    assert learner.adapter.down.bias is None and learner.adapter.up.bias is None
    assert [n for n, p in learner.named_parameters() if p.requires_grad] == ["adapter.down.weight",
                                                                             "adapter.up.weight"]
    # The run's init seed draws the (default PyTorch) init: the same seed, the same adapter.
    again, other = _adapter(random_clip), CLIPAdapter(random_clip, TEMPLATES, init_seed=1)
    assert torch.equal(again.adapter.down.weight, learner.adapter.down.weight)
    assert not torch.equal(other.adapter.down.weight, learner.adapter.down.weight)


def test_the_forward_formula_on_a_hand_built_adapter(random_clip) -> None:
    learner = _adapter(random_clip, ratio=0.2)
    dim, hidden = random_clip.embed_dim, random_clip.embed_dim // 4
    with torch.no_grad():  # W1 keeps the first `hidden` coordinates, W2 puts them back doubled
        learner.adapter.down.weight.copy_(torch.eye(dim)[:hidden])
        learner.adapter.up.weight.copy_(2.0 * torch.eye(dim)[:, :hidden])
    x = torch.randn(5, dim, generator=torch.Generator().manual_seed(0))
    # By hand: A(x) = 2 relu(x) on the first `hidden` coordinates, 0 elsewhere; x' = 0.2 A(x) + 0.8 x.
    mixed = 0.8 * x.clone()
    mixed[:, :hidden] += 0.4 * x[:, :hidden].clamp(min=0)
    expected = random_clip.logit_scale() * F.normalize(mixed, dim=-1) @ learner.text_features.t()
    assert torch.allclose(learner.logits(random_clip, x), expected, atol=1e-5)
    # No biases and ReLU: the adapter is positively homogeneous, so the feature's scale cancels.
    assert torch.allclose(learner.logits(random_clip, 3.0 * x), learner.logits(random_clip, x), atol=1e-4)


def test_ratio_zero_is_zero_shot_clip(random_clip) -> None:
    learner = _adapter(random_clip, ratio=0.0)
    x = F.normalize(torch.randn(4, random_clip.embed_dim), dim=-1)
    expected = random_clip.logit_scale() * x @ learner.text_features.t()
    assert torch.allclose(learner.logits(random_clip, x), expected, atol=1e-5)


def test_one_training_step_lowers_the_loss(random_clip) -> None:
    learner = _adapter(random_clip, ratio=0.5)
    generator = torch.Generator().manual_seed(1)
    feats = F.normalize(torch.randn(8, random_clip.embed_dim, generator=generator), dim=-1)
    labels = torch.randint(0, len(NAMES), (8,), generator=generator)

    def loss() -> torch.Tensor:
        step = TrainingStep(None, feats, None, learner.logits(random_clip, feats), labels)
        return learner.training_loss(random_clip, step).optimised

    optimizer = torch.optim.SGD([p for p in learner.parameters() if p.requires_grad], lr=0.01)
    before = loss()
    before.backward()
    optimizer.step()
    with torch.no_grad():
        after = loss()
    assert float(after) < float(before.detach())


def test_a_ratio_outside_the_unit_interval_is_refused_at_compose_time() -> None:
    with pytest.raises(ConfigError, match="method.learner.ratio=1.5"):
        compose(["method=clip_adapter", "method.learner.ratio=1.5"])


def test_the_cli_trains_clip_adapter_on_the_toy_world(tmp_path) -> None:
    out = tmp_path / "cli_run"
    proc = run_cli([*tiny_overrides(tmp_path), "method=clip_adapter", "method.optim.epochs=2", "run_name=ca",
                    f"hydra.run.dir={out}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((out / "metrics.json").read_text())
    assert record["status"] == "complete" and record["summary"]["method"] == "clip_adapter"
    assert top1_metrics(record["metrics"]) == {"base_acc", "novel_acc", "hm"}  # the adapter scores novel classes
    assert record["summary"]["adapter_ratio"] == 0.2 and record["summary"]["adapter_reduction"] == 4
    # The trained adapter is the saved prompt: it loads back into a CLIP-Adapter learner.
    import promptlab

    clf = promptlab.load_prompt(out / "prompt_learner.pt")
    assert isinstance(clf.learner, CLIPAdapter)
    assert clf.learner.adapter.down.out_features == record["summary"]["adapter_hidden"]
