"""Prompt learners: reference layout, zero-shot equivalence, batched CoCoOp, KgCoOp."""

from __future__ import annotations

import pytest
import torch

from promptlab.methods import CoCoOpPrompts, CoOpPrompts, KgCoOpPrompts, ZeroShotPrompts, logits_from_features
from tests.conftest import make_random_clip

CLASSNAMES = ["red circle", "golden_retriever", "a very long class name with many words", "x"]


def test_coop_from_template_words_equals_zero_shot(random_clip):
    coop = CoOpPrompts(random_clip, n_ctx=4, ctx_init="a photo of a")
    coop.set_classnames(random_clip, CLASSNAMES)
    zs = ZeroShotPrompts(random_clip, ["a photo of a {}."])
    zs.set_classnames(random_clip, CLASSNAMES)
    assert coop.n_ctx == 4
    with torch.no_grad():
        learned, fixed = coop(random_clip), zs(random_clip)
    torch.testing.assert_close(learned, fixed, atol=1e-5, rtol=1e-5)
    images = torch.nn.functional.normalize(torch.randn(5, learned.shape[1]), dim=-1)
    scale = random_clip.logit_scale()
    torch.testing.assert_close(logits_from_features(images, learned, scale),
                               logits_from_features(images, fixed, scale), atol=1e-4, rtol=1e-5)


def test_truncated_text_encoder_is_exact():
    full, cut = make_random_clip(truncate_text=False), make_random_clip(truncate_text=True)
    torch.testing.assert_close(full.encode_text(CLASSNAMES), cut.encode_text(CLASSNAMES), atol=1e-5, rtol=1e-5)
    a, b = CoOpPrompts(full, n_ctx=6, init_seed=0), CoOpPrompts(cut, n_ctx=6, init_seed=0)
    a.set_classnames(full, CLASSNAMES)
    b.set_classnames(cut, CLASSNAMES)
    assert a.prompt_embeddings().shape[1] == 77 and b.prompt_embeddings().shape[1] < 20
    with torch.no_grad():
        torch.testing.assert_close(a(full), b(cut), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("truncate", [True, False])
def test_shared_prefix_encoding_is_exact(truncate):
    shared = make_random_clip(truncate_text=truncate)
    plain = make_random_clip(truncate_text=truncate, share_prefix=False)
    assert shared.share_prefix and not plain.share_prefix
    images = torch.nn.functional.normalize(torch.randn(3, shared.vis_dim), dim=-1)
    for make in (lambda c: CoOpPrompts(c, n_ctx=7, init_seed=2), lambda c: CoCoOpPrompts(c, init_seed=2)):
        a, b = make(shared), make(plain)
        a.set_classnames(shared, CLASSNAMES)
        b.set_classnames(plain, CLASSNAMES)
        out_a, out_b = a(shared, images), b(plain, images)
        torch.testing.assert_close(out_a, out_b, atol=2e-5, rtol=1e-5)
        # and the gradients with respect to the context
        out_a.sum().backward()
        out_b.sum().backward()
        torch.testing.assert_close(a.ctx.grad, b.ctx.grad, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("position", ["end", "middle", "front"])
@pytest.mark.parametrize("csc", [False, True])
def test_prompt_layout_matches_reference(random_clip, position, csc):
    n_ctx = 5
    coop = CoOpPrompts(random_clip, n_ctx=n_ctx, csc=csc, class_token_position=position,
                       num_classes=len(CLASSNAMES), init_seed=1)
    coop.set_classnames(random_clip, CLASSNAMES)
    # Mark each context row with a unique value so its destination can be read back.
    marks = torch.arange(1, n_ctx + 1, dtype=torch.float32).view(-1, 1) * 1000.0
    ctx = marks.expand(n_ctx, random_clip.ctx_dim)
    if csc:
        ctx = ctx.unsqueeze(0).repeat(len(CLASSNAMES), 1, 1) + torch.arange(len(CLASSNAMES)).view(-1, 1, 1)
    prompts = coop.prompt_embeddings(ctx)
    tokens = random_clip.tokenize([f"{' '.join(['X'] * n_ctx)} {n.replace('_', ' ')}." for n in CLASSNAMES])
    embeddings = random_clip.embed_tokens(tokens)
    for c, name in enumerate(CLASSNAMES):
        name_len = random_clip.name_length(name.replace("_", " "))
        half = n_ctx // 2
        # Expected positions of the context rows and of the class-name tokens (reference trainers/coop.py).
        if position == "end":
            ctx_pos = list(range(1, 1 + n_ctx))
            name_pos = list(range(1 + n_ctx, 1 + n_ctx + name_len))
        elif position == "front":
            name_pos = list(range(1, 1 + name_len))
            ctx_pos = list(range(1 + name_len, 1 + name_len + n_ctx))
        else:
            ctx_pos = list(range(1, 1 + half)) + list(range(1 + half + name_len, 1 + n_ctx + name_len))
            name_pos = list(range(1 + half, 1 + half + name_len))
        expected_ctx = ctx[c] if csc else ctx
        torch.testing.assert_close(prompts[c, ctx_pos], expected_ctx)
        torch.testing.assert_close(prompts[c, name_pos], embeddings[c, 1 + n_ctx : 1 + n_ctx + name_len])
        torch.testing.assert_close(prompts[c, 0], embeddings[c, 0])  # SOS
        eot = int(coop.eot_index[c])
        assert eot == 1 + n_ctx + name_len + 1  # SOS, context, name, "." then EOT
        assert int(tokens[c].argmax()) == eot
        torch.testing.assert_close(prompts[c, eot], embeddings[c, eot])


def test_csc_cannot_be_moved_to_other_classes(random_clip):
    coop = CoOpPrompts(random_clip, n_ctx=4, csc=True, num_classes=2)
    coop.set_classnames(random_clip, ["a", "b"])
    with pytest.raises(ValueError, match="csc=false"):
        coop.set_classnames(random_clip, ["a", "b", "c"])


def test_cocoop_with_zero_meta_net_equals_coop(random_clip):
    cocoop = CoCoOpPrompts(random_clip, n_ctx=4, ctx_init="a photo of a", init_seed=0)
    torch.nn.init.zeros_(cocoop.meta_net.linear2.weight)
    torch.nn.init.zeros_(cocoop.meta_net.linear2.bias)
    coop = CoOpPrompts(random_clip, n_ctx=4, ctx_init="a photo of a")
    for learner in (cocoop, coop):
        learner.set_classnames(random_clip, CLASSNAMES)
    images = torch.nn.functional.normalize(torch.randn(3, random_clip.vis_dim), dim=-1)
    with torch.no_grad():
        per_image, static = cocoop(random_clip, images), coop(random_clip)
    assert per_image.shape == (3, len(CLASSNAMES), static.shape[1])
    for b in range(3):
        torch.testing.assert_close(per_image[b], static, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("chunk,ckpt", [(None, False), (3, False), (1, True)])
def test_batched_cocoop_equals_per_image_loop(random_clip, chunk, ckpt):
    cocoop = CoCoOpPrompts(random_clip, n_ctx=4, ctx_init="a photo of a", class_chunk=chunk, recompute_chunks=ckpt,
                           init_seed=3)
    cocoop.set_classnames(random_clip, CLASSNAMES)
    images = torch.nn.functional.normalize(torch.randn(4, random_clip.vis_dim), dim=-1)
    batched = cocoop(random_clip, images)
    looped = cocoop.reference_forward(random_clip, images)
    torch.testing.assert_close(batched, looped, atol=1e-5, rtol=1e-5)
    # Gradients agree too (the chunked/checkpointed path is used in training).
    labels = torch.tensor([0, 1, 2, 3])
    scale = random_clip.logit_scale()
    grads = []
    for feats in (cocoop(random_clip, images), cocoop.reference_forward(random_clip, images)):
        cocoop.zero_grad()
        torch.nn.functional.cross_entropy(logits_from_features(images, feats, scale), labels).backward()
        grads.append(cocoop.ctx.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-4)


def test_kgcoop_regularizer(random_clip):
    kg = KgCoOpPrompts(random_clip, templates=["a photo of a {}."], kg_weight=8.0, n_ctx=4, ctx_init="a photo of a")
    kg.set_classnames(random_clip, CLASSNAMES)
    with torch.no_grad():
        feats = kg(random_clip)
        # Initialised from the template words: learned == zero-shot, so the penalty is zero.
        assert float(kg.regularization(random_clip, feats)) == pytest.approx(0.0, abs=1e-5)
        kg.ctx.add_(torch.randn_like(kg.ctx))
        assert float(kg.regularization(random_clip, kg(random_clip))) > 0.0
    kg.kg_weight = 0.0
    assert kg.regularization(random_clip, feats) is None


def test_learner_state_dict_holds_only_learned_tensors(random_clip):
    coop = CoOpPrompts(random_clip, n_ctx=4, ctx_init="a photo of a")
    coop.set_classnames(random_clip, CLASSNAMES)
    assert list(coop.state_dict()) == ["ctx"]
    cocoop = CoCoOpPrompts(random_clip)
    cocoop.set_classnames(random_clip, CLASSNAMES)
    assert sorted(cocoop.state_dict()) == ["ctx", "meta_net.linear1.bias", "meta_net.linear1.weight",
                                           "meta_net.linear2.bias", "meta_net.linear2.weight"]
