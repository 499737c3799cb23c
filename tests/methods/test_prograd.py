"""ProGrad (methods/prograd.py): the projection rule, the distillation term, the reference's initialisation, the
surrogate that Lightning back-propagates, and a short toy-world run through the CLI."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from promptlab.config import compose
from promptlab.errors import ConfigError
from promptlab.methods.base import logits_from_features
from promptlab.methods.prograd import (
    PROGRAD_TEMPLATES,
    ProGradPrompts,
    distillation_loss,
    project_conflicting,
    zero_padded_context,
)
from promptlab.train import run
from tests.runs import compose_cfg, run_cli, tiny_overrides, workspace_overrides


def reference_rule(a: torch.Tensor, b: torch.Tensor, lambda_: float) -> torch.Tensor:
    """Dassl.ProGrad.pytorch trainer.py::prograd_backward_and_update, written as the reference writes it."""
    b_norm = b / torch.linalg.norm(b)
    a_norm = a / torch.linalg.norm(a)
    if torch.dot(a_norm.flatten(), b_norm.flatten()) < 0:
        return a - lambda_ * torch.dot(a.flatten(), b_norm.flatten()) * b_norm
    return a


def test_projection_matches_a_hand_computed_example():
    g_ce, g_kl = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])
    # g_ce . g_kl = -1 < 0; projection coefficient -1 / |g_kl|^2 = -1/2.
    assert torch.allclose(project_conflicting(g_ce, g_kl, 1.0), torch.tensor([0.5, 0.5]))
    assert torch.dot(project_conflicting(g_ce, g_kl, 1.0), g_kl).abs() < 1e-7  # lambda 1: orthogonal to g_kl
    assert torch.allclose(project_conflicting(g_ce, g_kl, 0.5), torch.tensor([0.75, 0.25]))


def test_non_conflicting_and_degenerate_gradients_are_untouched():
    g_ce = torch.tensor([[1.0, 2.0], [0.5, -1.0]])
    agreeing = torch.tensor([[1.0, 0.0], [0.0, 0.0]])  # dot 1 > 0
    orthogonal = torch.tensor([[2.0, -1.0], [0.0, 0.0]])  # dot 0: not a conflict
    for g_kl in (agreeing, orthogonal, torch.zeros(2, 2)):
        assert torch.equal(project_conflicting(g_ce, g_kl), g_ce)
    assert torch.equal(project_conflicting(torch.zeros(2, 2), -g_ce), torch.zeros(2, 2))


def test_projection_equals_the_reference_formula_on_random_tensors():
    gen = torch.Generator().manual_seed(0)
    seen_conflict = seen_agree = False
    for _ in range(50):
        a, b = torch.randn(4, 8, generator=gen), torch.randn(4, 8, generator=gen)
        conflict = bool(torch.dot(a.flatten(), b.flatten()) < 0)
        seen_conflict |= conflict
        seen_agree |= not conflict
        for lambda_ in (1.0, 0.8):
            assert torch.allclose(project_conflicting(a, b, lambda_), reference_rule(a, b, lambda_), atol=1e-6)
    assert seen_conflict and seen_agree


def test_distillation_term_is_the_references_and_has_the_kl_gradient():
    student = torch.tensor([[0.0, torch.log(torch.tensor(3.0)).item()]], requires_grad=True)
    teacher = torch.zeros(1, 2)
    # softmax(teacher) = [1/2, 1/2]; log_softmax(student) = [log 1/4, log 3/4].
    expected = -(0.5 * torch.log(torch.tensor(0.25)) + 0.5 * torch.log(torch.tensor(0.75)))
    assert torch.allclose(distillation_loss(student, teacher), expected)
    gen = torch.Generator().manual_seed(1)
    s = torch.randn(5, 7, generator=gen, requires_grad=True)
    t = torch.randn(5, 7, generator=gen)
    for temperature in (1.0, 2.0):
        (ours,) = torch.autograd.grad(distillation_loss(s, t, temperature), s)
        kl = F.kl_div(F.log_softmax(s / temperature, -1), F.softmax(t / temperature, -1), reduction="batchmean")
        (theirs,) = torch.autograd.grad(kl * temperature**2, s)
        assert torch.allclose(ours, theirs, atol=1e-6)


def test_zero_padded_init_puts_the_phrase_last(random_clip):
    vectors, text = zero_padded_context(random_clip, 6, "a photo of a")
    words = random_clip.embed_tokens(random_clip.tokenize(["a photo of a"]))[0, 1:5]
    assert torch.equal(vectors[:2], torch.zeros(2, random_clip.ctx_dim))
    assert torch.allclose(vectors[2:], words)
    assert text == "X X a photo of a"
    with pytest.raises(ConfigError, match="n_ctx=3"):
        zero_padded_context(random_clip, 3, "a photo of a")


def test_words_split_keeps_the_references_leftover_token_fixed(random_clip):
    phrase = "a type of pet, a photo of a"  # 8 space-separated words, 9 BPE tokens ("pet" ",")
    embedded = random_clip.embed_tokens(random_clip.tokenize([phrase + " cat."]))[0]
    learner = ProGradPrompts(random_clip, templates=["a photo of a {}."], n_ctx=16, ctx_init=phrase,
                             reference_templates=False)
    learner.set_classnames(random_clip, ["cat"])
    assert torch.allclose(learner.ctx[8:], embedded[1:9])  # 8 learned tokens, zeros before them
    assert torch.equal(learner.ctx[:8], torch.zeros(8, random_clip.ctx_dim))
    # The 9th phrase token ("a") stays a fixed word right after the 16 slots, before the class name.
    assert torch.allclose(learner.suffix[0, 0], embedded[9])
    tokens = ProGradPrompts(random_clip, templates=["a photo of a {}."], n_ctx=16, ctx_init=phrase,
                            reference_templates=False, init_split="tokens")
    assert torch.allclose(tokens.ctx[7:], embedded[1:10])


def test_reference_templates_pick_the_datasets_prograd_prompt(random_clip):
    learner = ProGradPrompts(random_clip, templates=["a photo of a {}."], dataset="dtd", n_ctx=16)
    assert learner.templates == [PROGRAD_TEMPLATES["dtd"]] == ["a texture of {}."]
    assert learner.ctx_text.endswith("X a texture of")
    other = ProGradPrompts(random_clip, templates=["a {}."], dataset="toyworld", n_ctx=4)
    assert other.templates == ["a {}."] and other.ctx_text == "a photo of a"


def test_surrogate_has_the_projected_gradient_and_the_losss_value(random_clip):
    classes = ["red circle", "blue square", "green star"]
    learner = ProGradPrompts(random_clip, templates=["a drawing of a {}."], n_ctx=4, ctx_init=None,
                             reference_templates=False, init_seed=0)
    learner.set_classnames(random_clip, classes)
    gen = torch.Generator().manual_seed(3)
    feats = F.normalize(torch.randn(6, random_clip.embed_dim, generator=gen), dim=-1)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    seen = set()
    for lambda_ in (1.0, 0.3):
        learner.prograd_lambda = lambda_
        for _ in range(3):  # a few random contexts: conflicting and agreeing steps both occur
            with torch.no_grad():
                learner.ctx.normal_(std=0.5, generator=gen)
            logits = logits_from_features(feats, learner(random_clip), random_clip.logit_scale())
            ce = F.cross_entropy(logits, labels)
            (g_ce,) = torch.autograd.grad(ce, learner.ctx, retain_graph=True)
            teacher = random_clip.logit_scale() * feats @ learner.zeroshot_features.t()
            (g_kl,) = torch.autograd.grad(distillation_loss(logits, teacher), learner.ctx, retain_graph=True)
            surrogate, logs = learner.gradient_surgery(random_clip, feats, logits, labels, ce)
            learner.ctx.grad = None
            surrogate.backward()
            assert torch.allclose(surrogate.detach(), ce.detach())
            assert torch.allclose(learner.ctx.grad, reference_rule(g_ce, g_kl, lambda_), atol=1e-6, rtol=1e-4)
            seen.add(bool(torch.dot(g_ce.flatten(), g_kl.flatten()) < 0))
            assert float(logs["conflict"]) == float(torch.dot(g_ce.flatten(), g_kl.flatten()) < 0)
    assert seen == {True, False}


def test_prograd_composes_with_the_references_settings(tmp_path):
    # compose(check=True): 16 slots around a 4-token phrase pass the range checks (zeros before the phrase).
    cfg = compose([*workspace_overrides(tmp_path), "method=prograd", "dataset=oxford_pets"])
    learner, optim = cfg.method.learner, cfg.method.optim
    assert (learner.n_ctx, learner.ctx_init, learner.prograd_lambda, learner.temperature) == (16, "a photo of a", 1, 1)
    assert learner.dataset == "oxford_pets" and learner.reference_templates
    assert (optim.lr, optim.epochs, optim.warmup_epochs, cfg.method.loader.batch_size) == (0.002, None, 1, 32)


def test_prograd_trains_on_the_toy_world(tmp_path):
    record = run(compose_cfg([*tiny_overrides(tmp_path), "method=prograd", "method.optim.epochs=2", "run_name=pg"]))
    assert record["status"] == "complete" and 0 <= record["metrics"]["hm"] <= 100


@pytest.mark.slow
def test_prograd_runs_on_the_toy_world_through_the_cli(tmp_path):
    out = tmp_path / "run"
    proc = run_cli([*tiny_overrides(tmp_path), "method=prograd", "method.optim.epochs=2", "logger=csv",
                    f"hydra.run.dir={out}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((out / "metrics.json").read_text())
    assert record["status"] == "complete"
    assert 0 <= record["metrics"]["hm"] <= 100
    metrics = next(out.rglob("metrics.csv")).read_text()
    assert "train/kl" in metrics and "train/conflict" in metrics
