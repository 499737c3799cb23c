"""promptlab-interpret: nearest vocabulary words of learned context vectors (cosine and Euclidean)."""

from __future__ import annotations

import json

import pytest
import torch

from promptlab.config.registry import plain
from promptlab.interpret import interpret_learner, main, nearest_tokens
from promptlab.methods import CoOpPrompts
from promptlab.models import load_clip_from_config
from tests.runs import compose_cfg, random_checkpoint


def first_words(result, key="ctx", metric="cosine"):
    return [slot[metric][0]["word"] for slot in result["tensors"][key]]


def test_context_from_known_words_reads_back_as_those_words(random_clip):
    learner = CoOpPrompts(random_clip, n_ctx=4, ctx_init="a photo of a")
    result = interpret_learner(random_clip, learner, topk=3)
    assert first_words(result, metric="cosine") == ["a", "photo", "of", "a"]
    assert first_words(result, metric="euclidean") == ["a", "photo", "of", "a"]
    first = result["tensors"]["ctx"][1]
    assert first["euclidean"][0]["score"] == pytest.approx(0.0, abs=1e-3)  # cdist's matmul path: ~1e-4 round-off
    assert first["cosine"][0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert first["euclidean"][1]["score"] > 0 and len(first["cosine"]) == 3


def test_euclidean_ranking_is_the_reference_interpreters():
    gen = torch.Generator().manual_seed(0)
    table, ctx = torch.randn(50, 8, generator=gen), torch.randn(3, 8, generator=gen)
    _, ids = nearest_tokens(ctx, table, topk=5)["euclidean"]
    # CoOp interpret_prompt.py: torch.argsort(torch.cdist(ctx, token_embedding), dim=1)[:, :topk]
    assert torch.equal(ids, torch.argsort(torch.cdist(ctx, table), dim=1)[:, :5])
    sims, cos_ids = nearest_tokens(ctx * torch.tensor([10.0, 1, 1, 1, 1, 1, 1, 1]), table, topk=5)["cosine"]
    assert torch.all(sims[:, :-1] >= sims[:, 1:])


def test_class_specific_contexts_are_read_per_class(random_clip):
    learner = CoOpPrompts(random_clip, n_ctx=2, csc=True, num_classes=3, init_seed=0)
    words = random_clip.embed_tokens(random_clip.tokenize(["dog cat"]))[0, 1:3]
    with torch.no_grad():
        learner.ctx[1] = words
    result = interpret_learner(random_clip, learner, topk=2)
    slots = result["tensors"]["ctx"]
    assert len(slots) == 6 and [s["class_index"] for s in slots] == [0, 0, 1, 1, 2, 2]
    assert [s["cosine"][0]["word"] for s in slots[2:4]] == ["dog", "cat"]


def test_cli_reads_a_prompt_file_and_checks_its_backbone(tmp_path, capsys):
    model_cfg = compose_cfg([f"model.weights_file={random_checkpoint(tmp_path / 'clip.pt')}"]).model
    clip = load_clip_from_config(model_cfg)
    learner = CoOpPrompts(clip, n_ctx=4, ctx_init="a photo of a")
    payload = {"backbone": dict(clip.fingerprint), "state_dict": learner.state_dict(), "model": plain(model_cfg),
               "method": {"name": "coop"}, "dataset": "toyworld", "train_classnames": []}
    torch.save(payload, tmp_path / "prompt_learner.pt")
    assert main([str(tmp_path), "--topk", "2"]) == 0
    written = json.loads((tmp_path / "prompt_words.json").read_text())
    assert first_words(written, metric="euclidean") == ["a", "photo", "of", "a"]
    assert "photo" in capsys.readouterr().out
    payload["backbone"] = {"architecture": "ViT-B-16", "weights": "openai"}
    torch.save(payload, tmp_path / "other.pt")
    with pytest.raises(SystemExit):
        main([str(tmp_path / "other.pt")])
    assert "another backbone" in capsys.readouterr().err


def test_analysis_gets_the_words_of_learners_with_a_context(random_clip):
    from promptlab.interpret import prompt_words
    from promptlab.methods import ZeroShotPrompts

    learner = CoOpPrompts(random_clip, n_ctx=4, ctx_init="a photo of a")
    assert first_words(prompt_words(random_clip, learner)) == ["a", "photo", "of", "a"]
    assert prompt_words(random_clip, ZeroShotPrompts(random_clip, templates=["a photo of a {}."])) is None
