"""Deep / multi-modal prompts (VPT, IVLP, MaPLe, PromptSRC): the token surgery against a literal re-implementation
of the reference's block loop, the CoOp limit, the coupling, the losses, GPA, the exact text speed-ups, the
image-through-learner module path and one toy-world run per method."""

from __future__ import annotations

import math
from pathlib import Path

import hydra
import lightning as L
import open_clip
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from promptlab.engine.module import PromptLearningModule
from promptlab.errors import ConfigError
from promptlab.methods import CoOpPrompts, ZeroShotPrompts
from promptlab.methods.ivlp import IVLPPrompts
from promptlab.methods.maple import MaPLePrompts
from promptlab.methods.promptsrc import (
    GaussianPromptAggregation,
    PromptSRCPrompts,
    gpa_weights,
    self_regulating_losses,
    teacher_text_embeddings,
)
from promptlab.methods.vpt import VPTPrompts
from promptlab.models.frozen import FrozenCLIP
from promptlab.train import run
from tests.conftest import make_random_clip
from tests.runs import TINY_WORLD, compose_cfg, run_cli, workspace_overrides

NAMES = ["cat", "dog", "red car", "sea_lion"]


# --------------------------------------------------------------------------- a literal reference loop
def _slow_block(block: torch.nn.Module, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """One CLIP residual block on a sequence-first [L, N, W] tensor, written out: x + attn(ln_1(x)), then
    x + mlp(ln_2(x)) with QuickGELU (clip/model.py ResidualAttentionBlock), attention by hand."""
    attn = block.attn
    length, n, width = x.shape
    heads = attn.num_heads
    h = block.ln_1(x)
    q, k, v = F.linear(h, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)

    def split(t: torch.Tensor) -> torch.Tensor:  # [L, N, W] -> [N, H, L, d]
        return t.reshape(length, n, heads, width // heads).permute(1, 2, 0, 3)

    scores = split(q) @ split(k).transpose(-1, -2) / math.sqrt(width // heads)
    if mask is not None:
        scores = scores + mask
    out = (scores.softmax(dim=-1) @ split(v)).permute(2, 0, 1, 3).reshape(length, n, width)
    x = x + F.linear(out, attn.out_proj.weight, attn.out_proj.bias)
    h = block.ln_2(x)
    h = F.linear(h, block.mlp.c_fc.weight, block.mlp.c_fc.bias)
    h = h * torch.sigmoid(1.702 * h)
    return x + F.linear(h, block.mlp.c_proj.weight, block.mlp.c_proj.bias)


def slow_image_features(model, images, shallow, deep):
    """VisionTransformer(_MaPLe).forward + ResidualAttentionBlock_IVLP of multimodal-prompt-learning, literally:
    prompts appended after + positional embedding and before ln_pre; blocks 1..len(deep) drop the last n tokens
    and append fresh ones; ln_post on the class token, @ proj."""
    visual = model.visual
    x = visual.conv1(images)
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    x = torch.cat([visual.class_embedding + torch.zeros(x.shape[0], 1, x.shape[-1]), x], dim=1)
    x = x + visual.positional_embedding
    if shallow is not None:
        x = torch.cat([x, shallow.expand(x.shape[0], -1, -1)], dim=1)
    x = visual.ln_pre(x).permute(1, 0, 2)  # NLD -> LND
    for i, block in enumerate(visual.transformer.resblocks):
        if 1 <= i <= len(deep):
            n = deep[i - 1].shape[0]
            x = torch.cat([x[: x.shape[0] - n], deep[i - 1].expand(x.shape[1], -1, -1).permute(1, 0, 2)], dim=0)
        x = _slow_block(block, x, None)
    x = x.permute(1, 0, 2)
    return visual.ln_post(x[:, 0, :]) @ visual.proj


def slow_text_features(model, prompts, eot, deep):
    """TextEncoder.forward + the text branch of ResidualAttentionBlock_IVLP/_MaPLe: all 77 positions, causal mask;
    blocks 1..len(deep) replace positions 1..n with fresh tokens; ln_final, the EOT feature, @ text_projection."""
    x = (prompts + model.positional_embedding).permute(1, 0, 2)
    for i, block in enumerate(model.transformer.resblocks):
        if 1 <= i <= len(deep):
            n = deep[i - 1].shape[0]
            fresh = deep[i - 1].expand(x.shape[1], -1, -1).permute(1, 0, 2)
            x = torch.cat([x[:1], fresh, x[1 + n :]], dim=0)
        x = _slow_block(block, x, model.attn_mask)
    x = model.ln_final(x.permute(1, 0, 2))
    return x[torch.arange(x.shape[0]), eot] @ model.text_projection


def deeper_clip() -> FrozenCLIP:
    """A random CLIP with 4 blocks per tower and different text (32) and image (64) widths."""
    torch.manual_seed(0)
    model = open_clip.model.CLIP(
        embed_dim=32, quick_gelu=True,
        vision_cfg=open_clip.model.CLIPVisionCfg(layers=4, width=64, patch_size=8, image_size=16),
        text_cfg=open_clip.model.CLIPTextCfg(context_length=77, vocab_size=49408, width=32, heads=1, layers=4))
    return FrozenCLIP(model, open_clip.get_tokenizer("ViT-B-32"), weights_id="random:deeper")


@pytest.fixture(scope="module")
def clip():
    return make_random_clip(0)


@pytest.fixture(scope="module")
def plain_clip():
    """The same weights with both exact text speed-ups off: the reference's 77-position path."""
    return make_random_clip(0, truncate_text=False, share_prefix=False)


def test_image_tower_with_prompts_equals_the_reference_block_loop_in_values_and_gradients(clip):
    torch.manual_seed(1)
    images = torch.randn(3, 3, 32, 32)
    shallow = (0.3 * torch.randn(2, 64)).requires_grad_()
    deep = [(0.3 * torch.randn(2, 64)).requires_grad_()]  # depth 2 of the 2-block tower
    fast = clip.encode_image_prompted(images, shallow, deep, normalize=False)
    slow = slow_image_features(clip.model, images, shallow, deep)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)
    weights = torch.randn_like(fast)
    grads_fast = torch.autograd.grad((fast * weights).sum(), [shallow, *deep])
    grads_slow = torch.autograd.grad((slow * weights).sum(), [shallow, *deep])
    for a, b in zip(grads_fast, grads_slow, strict=True):
        assert a.abs().sum() > 0
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    # Checkpointed blocks recompute the same graph.
    again = clip.encode_image_prompted(images, shallow, deep, normalize=False, recompute_blocks=True)
    grads_ckpt = torch.autograd.grad((again * weights).sum(), [shallow, *deep])
    for a, b in zip(grads_fast, grads_ckpt, strict=True):
        torch.testing.assert_close(a, b)


def test_text_tower_with_deep_prompts_equals_the_reference_block_loop(plain_clip):
    learner = IVLPPrompts(plain_clip, n_ctx=2, text_depth=2, vision_depth=0, init_seed=0)
    learner.set_classnames(plain_clip, NAMES)
    with torch.no_grad():
        learner.text_deep[0].normal_(std=0.5)
    fast = learner(plain_clip)
    deep, prompts = list(learner.text_deep), learner.prompt_embeddings()
    slow = F.normalize(slow_text_features(plain_clip.model, prompts, learner.eot_index, deep), dim=-1)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)
    weights = torch.randn_like(fast)
    params = [learner.ctx, learner.text_deep[0]]
    grads_fast = torch.autograd.grad((fast * weights).sum(), params)
    slow = F.normalize(slow_text_features(plain_clip.model, learner.prompt_embeddings(), learner.eot_index,
                                          list(learner.text_deep)), dim=-1)
    grads_slow = torch.autograd.grad((slow * weights).sum(), params)
    for a, b in zip(grads_fast, grads_slow, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * float(b.abs().max()))


@pytest.mark.parametrize("learner_cls", [IVLPPrompts, MaPLePrompts])
def test_text_speedups_with_deep_prompts_equal_the_plain_path(clip, plain_clip, learner_cls):
    """Truncation after the last EOT and the shared [SOS, context] prefix stay exact with deep text prompts: every
    deep slot precedes the class name."""
    kwargs = {"depth": 2} if learner_cls is MaPLePrompts else {"text_depth": 2, "vision_depth": 0}
    fast_learner = learner_cls(clip, init_seed=3, **kwargs)
    plain_learner = learner_cls(plain_clip, init_seed=3, **kwargs)
    for learner, backbone in ((fast_learner, clip), (plain_learner, plain_clip)):
        learner.set_classnames(backbone, NAMES)
    assert fast_learner.suffix.shape[1] < plain_learner.suffix.shape[1]  # really truncated
    fast, plain = fast_learner(clip), plain_learner(plain_clip)
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5)
    grad_fast = torch.autograd.grad(fast[:, 0].sum(), fast_learner.text_deep[0])[0]
    grad_plain = torch.autograd.grad(plain[:, 0].sum(), plain_learner.text_deep[0])[0]
    torch.testing.assert_close(grad_fast, grad_plain, rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------------------- limits and what changes
def test_ivlp_without_vision_prompts_and_depth_one_is_coop(clip):
    ivlp = IVLPPrompts(clip, n_ctx=4, ctx_init="a photo of a", text_depth=1, vision_depth=0)
    coop = CoOpPrompts(clip, n_ctx=4, ctx_init="a photo of a")
    for learner in (ivlp, coop):
        learner.set_classnames(clip, NAMES)
    assert not ivlp.encodes_images and list(ivlp.parameters())[0] is ivlp.ctx and len(list(ivlp.parameters())) == 1
    assert torch.equal(ivlp(clip), coop(clip))
    with torch.no_grad():
        for learner in (ivlp, coop):
            learner.ctx.add_(0.1 * torch.ones_like(learner.ctx))
    assert torch.equal(ivlp(clip), coop(clip))


def test_init_phrase_keeps_its_tail_as_fixed_words_like_the_reference(clip):
    """n_ctx=2 from "a photo of a": "a photo" are learned, "of a" stay in the prompt, so at init the prompts are
    exactly the zero-shot "a photo of a {name}." (the reference's token_suffix = embedding[:, 1 + n_ctx:])."""
    learner = IVLPPrompts(clip, n_ctx=2, ctx_init="a photo of a", text_depth=1, vision_depth=0)
    learner.set_classnames(clip, NAMES)
    zero_shot = ZeroShotPrompts(clip, templates=["a photo of a {}."])
    zero_shot.set_classnames(clip, NAMES)
    torch.testing.assert_close(learner(clip), zero_shot(clip), rtol=1e-5, atol=1e-6)
    assert learner.ctx.shape[0] == 2
    with pytest.raises(ConfigError, match="keep_init_tail"):
        IVLPPrompts(clip, n_ctx=2, ctx_init="a photo of a", text_depth=1, vision_depth=0, keep_init_tail=False)
    with pytest.raises(ConfigError, match="at most"):
        IVLPPrompts(clip, n_ctx=5, ctx_init="a photo of a", text_depth=1, vision_depth=0)


def test_zero_vision_prompts_change_the_image_feature_and_nothing_on_the_text_side(clip):
    """The reference appends its image tokens to the sequence every other token attends to: zero tokens are not a
    no-op (after ln_pre a zero token is ln_pre's bias, a key and a value like any other), so the image feature
    moves, by exactly the reference loop's amount. The text side of IVLP never sees them and the frozen tower
    (PromptSRC's teacher) is untouched. Block-0 tokens pass through ln_pre, which removes each token's mean and
    scale: any constant token, zero included, is the same token there, and p and 3p + 1 are the same prompt.
    Deep tokens enter the residual stream as they are: there, their values count."""
    torch.manual_seed(0)
    images = torch.randn(4, 3, 32, 32)
    learner = IVLPPrompts(clip, n_ctx=2, text_depth=2, vision_depth=2, n_ctx_vision=3, init_seed=0)
    learner.set_classnames(clip, NAMES)
    text_before = learner(clip)
    frozen = clip.encode_image(images)
    with torch.no_grad():
        learner.vision_ctx.zero_()
        learner.vision_deep[0].zero_()
    prompted = learner.encode_images(clip, images)
    assert not torch.allclose(prompted, frozen, atol=1e-3)
    zeros = torch.zeros(3, 64)
    expected = F.normalize(slow_image_features(clip.model, images, zeros, [zeros]), dim=-1)
    torch.testing.assert_close(prompted, expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(learner(clip), text_before)
    assert torch.equal(clip.encode_image(images), frozen)
    # Every read of the residual stream goes through a LayerNorm (ln_pre, ln_1, ln_2, ln_post), which removes a
    # shift by the same number in every coordinate: zero tokens are any constant tokens, deep or not.
    constant = torch.full((3, 64), 0.7)
    torch.testing.assert_close(clip.encode_image_prompted(images, constant, [constant]), prompted, rtol=1e-5,
                               atol=1e-6)
    # Block-0 tokens are read through ln_pre first, which also removes their scale: r and 3r + 1 are one prompt.
    # In this 2-block tower the fresh tokens of block 1 are read once, through ln_1, and dropped: the same holds.
    r, q = torch.randn(3, 64), torch.randn(3, 64)
    torch.testing.assert_close(clip.encode_image_prompted(images, r, [q]),
                               clip.encode_image_prompted(images, 3 * r + 1, [3 * q + 1]), rtol=1e-4, atol=1e-5)
    # Where later blocks carry them (4 blocks, depth 2), the residual stream adds block outputs to their raw
    # values: their scale counts there, and only there.
    deeper = deeper_clip()
    images_16 = images[:, :, :16, :16]
    r, q = torch.randn(3, deeper.vision_width), torch.randn(3, deeper.vision_width)
    carried = deeper.encode_image_prompted(images_16, r, [q])
    torch.testing.assert_close(deeper.encode_image_prompted(images_16, 3 * r + 1, [q]), carried, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(deeper.encode_image_prompted(images_16, r, [3 * q]), carried, atol=1e-4)


def test_depth_beyond_the_tower_is_refused_with_the_option_name(clip):
    with pytest.raises(ConfigError, match="method.learner.vision_depth=3"):
        VPTPrompts(clip, vision_depth=3)
    with pytest.raises(ConfigError, match="method.learner.depth=5"):
        MaPLePrompts(clip, depth=5)


def test_fp16_prompts_round_the_inserted_tokens_like_the_reference(clip):
    learner = IVLPPrompts(clip, n_ctx=2, text_depth=2, vision_depth=2, init_seed=0)
    rounding = IVLPPrompts(clip, n_ctx=2, text_depth=2, vision_depth=2, init_seed=0, fp16_prompts=True)
    for one in (learner, rounding):
        one.set_classnames(clip, NAMES)
    with torch.no_grad():
        for one in (learner, rounding):
            one.vision_ctx.copy_(torch.full_like(one.vision_ctx, 1 / 3) + torch.arange(64) / 7)
            one.text_deep[0].fill_(1 / 3)
    images = torch.randn(2, 3, 32, 32)
    rounded = rounding.encode_images(clip, images)
    assert not torch.equal(rounded, learner.encode_images(clip, images))
    expected = clip.encode_image_prompted(images, learner.vision_ctx.half().float(),
                                          [t.half().float() for t in learner.vision_deep])
    torch.testing.assert_close(rounded, expected, rtol=0, atol=0)
    torch.testing.assert_close(rounding(clip), clip.encode_prefix_suffix(
        torch.cat([learner.prefix[:1], learner.ctx.unsqueeze(0)], dim=1), learner.suffix, learner.eot_index,
        deep=[learner.text_deep[0].half().float()])[0], rtol=0, atol=0)


def test_image_prompts_refuse_a_training_feature_cache(clip):
    from promptlab.config.method import Augment, MethodLoaderConf, TrainCache
    from promptlab.engine.datamodule import PromptDataModule

    with pytest.raises(ConfigError, match="train_cache=on"):
        PromptDataModule(clip, [], [], MethodLoaderConf(augment=Augment.none, train_cache=TrainCache.on),
                         encodes_images=True)


# --------------------------------------------------------------------------- MaPLe coupling
def test_maple_coupling_against_hand_computed_projections(clip):
    learner = MaPLePrompts(clip, n_ctx=2, depth=2, init_seed=0)
    assert len(learner.vision_deep_proj) == 1 and learner.vision_proj.out_features == clip.vision_width
    with torch.no_grad():
        learner.ctx.copy_(torch.arange(2 * 64, dtype=torch.float32).view(2, 64) / 100)
        learner.text_deep[0].fill_(0.5)
        learner.vision_proj.weight.copy_(torch.eye(64) * 2.0)
        learner.vision_proj.bias.fill_(1.0)
        learner.vision_deep_proj[0].weight.zero_()
        learner.vision_deep_proj[0].weight[:, 0] = 3.0
        learner.vision_deep_proj[0].bias.fill_(-1.0)
    shallow, deep = learner.vision_prompts()
    torch.testing.assert_close(shallow, 2.0 * learner.ctx + 1.0)  # W = 2 I, b = 1
    torch.testing.assert_close(deep[0], torch.full((2, 64), 3.0 * 0.5 - 1.0))  # column 0 of 3s, b = -1
    # Gradients reach the text tokens through the image tower (the coupling is what MaPLe trains).
    images = torch.randn(2, 3, 32, 32)
    learner.encode_images(clip, images).sum().backward()
    assert learner.text_deep[0].grad is not None and learner.text_deep[0].grad.abs().sum() > 0


def test_maple_deep_projections_start_identical_and_vision_proj_apart():
    """The reference deep-copies ONE Linear for blocks 1..J-1 (_get_clones) and initialises `proj` on its own."""
    deeper = deeper_clip()
    learner = MaPLePrompts(deeper, n_ctx=2, depth=4, init_seed=0)
    clones = [proj.weight for proj in learner.vision_deep_proj]
    assert len(clones) == 3 and learner.vision_proj.weight.shape == (64, 32)
    assert all(torch.equal(c, clones[0]) for c in clones)
    assert not torch.equal(clones[0], learner.vision_proj.weight)
    assert torch.equal(MaPLePrompts(deeper, n_ctx=2, depth=4, init_seed=0).vision_proj.weight,
                       learner.vision_proj.weight)  # seeded
    assert not torch.equal(MaPLePrompts(deeper, n_ctx=2, depth=4, init_seed=1).vision_proj.weight,
                           learner.vision_proj.weight)


# --------------------------------------------------------------------------- PromptSRC
def test_promptsrc_losses_against_hand_computed_values():
    text = F.normalize(torch.tensor([[1.0, 0.0], [0.6, 0.8]]), dim=-1)
    teacher_text = F.normalize(torch.tensor([[0.8, 0.6], [0.0, 1.0]]), dim=-1)
    image = F.normalize(torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 1.0]]), dim=-1)
    teacher_image = F.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 1.0]]), dim=-1)
    logits = torch.tensor([[2.0, 0.0], [1.0, 1.0], [0.0, 3.0]])
    teacher_logits = torch.tensor([[0.0, 1.0], [2.0, 0.0], [1.0, 1.0]])
    terms = self_regulating_losses(text, teacher_text, image, teacher_image, logits, teacher_logits, 25.0, 10.0, 1.0)
    def mean_abs(a: torch.Tensor, b: torch.Tensor) -> float:
        pairs = [(x, y) for ra, rb in zip(a.tolist(), b.tolist(), strict=True) for x, y in zip(ra, rb, strict=True)]
        return sum(abs(x - y) for x, y in pairs) / len(pairs)

    l1_text, l1_image = mean_abs(text, teacher_text), mean_abs(image, teacher_image)
    kl = 0.0
    for student, teacher in zip(logits.tolist(), teacher_logits.tolist(), strict=True):
        zs, zt = (sum(math.exp(v) for v in row) for row in (student, teacher))
        for s, t in zip(student, teacher, strict=True):
            p_t = math.exp(t) / zt
            kl += p_t * (math.log(p_t) - math.log(math.exp(s) / zs))
    kl /= 3 * 2  # divided by B x C, not by B
    assert terms["l1_text"].item() == pytest.approx(25.0 * l1_text, rel=1e-6)
    assert terms["l1_image"].item() == pytest.approx(10.0 * l1_image, rel=1e-6)
    assert terms["kl_logits"].item() == pytest.approx(kl, rel=1e-6)


def test_promptsrc_teacher_averages_unnormalised_template_features(clip):
    templates = ["a photo of a {}.", "a drawing of the {}.", "{}"]
    teacher = teacher_text_embeddings(clip, templates, NAMES)
    raw = [clip.adapter.encode_tokens(clip.tokenize([t.format(n.replace("_", " ")) for n in NAMES]), truncate=False)
           for t in templates]
    expected = F.normalize(sum(raw) / 3, dim=-1)
    torch.testing.assert_close(teacher, expected, rtol=1e-5, atol=1e-6)
    normalised_first = F.normalize(sum(F.normalize(r, dim=-1) for r in raw), dim=-1)
    assert not torch.allclose(teacher, normalised_first, atol=1e-4)  # the reference's order matters
    learner = PromptSRCPrompts(clip, text_depth=2, vision_depth=2)
    assert len(learner.teacher_templates) == 60 and "a photo of a {}." in learner.teacher_templates


def test_gpa_weights_are_the_normalised_gaussian_over_epochs():
    weights = gpa_weights(15.0, 1.0, 20)
    density = [math.exp(-0.5 * (e - 15.0) ** 2) for e in range(1, 21)]
    expected = [d / sum(density) for d in density]
    assert weights.tolist() == pytest.approx(expected, rel=1e-12)
    assert int(weights.argmax()) == 14 and weights[13] == pytest.approx(weights[15])
    with pytest.raises(ConfigError):
        gpa_weights(15.0, 0.0, 20)


class _Images(Dataset):
    def __init__(self, n: int = 8, classes: int = 4) -> None:
        generator = torch.Generator().manual_seed(0)
        self.images = torch.randn(n, 3, 32, 32, generator=generator)
        self.labels = torch.arange(n) % classes

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "label": int(self.labels[i])}


class _Recorder(L.Callback):
    """The learned tensors at each epoch end (what GPA adds up)."""

    def __init__(self) -> None:
        self.states: list[dict[str, torch.Tensor]] = []

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.states.append({k: p.detach().clone() for k, p in pl_module.learner.named_parameters()})


def _trainer(epochs: int, callbacks=None) -> L.Trainer:
    return L.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                     limit_val_batches=0, enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks)


def test_promptsrc_trains_through_the_image_tower_and_ends_on_the_gpa_sum(clip):
    learner = PromptSRCPrompts(clip, text_depth=2, vision_depth=2, gpa_mean=2.0, gpa_std=1.0, init_seed=0)
    learner.set_classnames(clip, NAMES)
    frozen = {k: v.clone() for k, v in clip.state_dict().items()}
    module = PromptLearningModule(clip, learner, lr=0.05, max_epochs=3, warmup_epochs=0)
    recorder = _Recorder()
    _trainer(3, [recorder]).fit(module, DataLoader(_Images(), batch_size=4))
    weights = gpa_weights(2.0, 1.0, 3)
    for name, param in learner.named_parameters():
        expected = sum(w * state[name].double() for w, state in zip(weights.tolist(), recorder.states, strict=True))
        torch.testing.assert_close(param.detach().double(), expected, rtol=1e-6, atol=1e-7)
        assert not torch.equal(param.detach(), recorder.states[-1][name])  # not simply the last epoch
    assert not torch.equal(recorder.states[0]["vision_deep.0"], recorder.states[-1]["vision_deep.0"])  # trained
    assert all(torch.equal(v, frozen[k]) for k, v in clip.state_dict().items())
    assert set(module.state_dict()) == {f"learner.{k}" for k, _ in learner.named_parameters()}
    assert isinstance(module.configure_callbacks()[0], GaussianPromptAggregation)


def test_gpa_state_survives_a_resume():
    """An in-run checkpoint restores the callback before training starts again: the sums continue."""
    from types import SimpleNamespace

    saved = GaussianPromptAggregation(2.0, 1.0)
    saved.load_state_dict({"sums": {"ctx": torch.ones(2)}, "epochs_added": 1})
    saved.on_train_start(SimpleNamespace(max_epochs=3), None)
    assert saved.epochs_added == 1 and torch.equal(saved.sums["ctx"], torch.ones(2))
    saved.on_train_start(SimpleNamespace(max_epochs=3), None)  # a fresh fit starts from nothing
    assert saved.epochs_added == 0 and saved.sums == {}


def test_evaluation_encodes_each_test_image_once_with_static_text(clip):
    learner = VPTPrompts(clip, n_ctx_vision=2, vision_depth=2, init_seed=0)
    learner.set_classnames(clip, NAMES)
    module = PromptLearningModule(clip, learner, lr=0.01, max_epochs=1, warmup_epochs=0)
    seen, text_calls = [], []
    encode, forward = learner.encode_images, learner.forward

    def counting_encode(backbone, images):
        seen.append(images.shape[0])
        return encode(backbone, images)

    def counting_forward(backbone, image_features=None):
        text_calls.append(1)
        return forward(backbone, image_features)

    learner.encode_images, learner.forward = counting_encode, counting_forward
    data = _Images(n=10)
    _trainer(1).test(module, DataLoader(data, batch_size=3), verbose=False)
    assert sum(seen) == len(data) and len(text_calls) == 1
    expected = (F.normalize(slow_image_features(clip.model, data.images, learner.vision_ctx, list(learner.vision_deep)),
                            dim=-1) @ learner.text_features.t()).argmax(dim=-1)
    assert module.last_eval["n_correct"] == int((expected == data.labels).sum())


# --------------------------------------------------------------------------- toy-world runs
METHOD_RUNS = ["vpt", "ivlp", "ivlp_language", "maple", "promptsrc"]


@pytest.fixture(scope="module")
def toy_workspace(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("deep_prompts_toy")  # one small toy world for the runs below


@pytest.mark.parametrize("method", METHOD_RUNS)
def test_short_toy_world_run_per_method(toy_workspace: Path, method: str):
    """The shipped configs (toy-world depths of conf/method_dataset) on the toy CLIP: one short run each."""
    record = run(compose_cfg([*workspace_overrides(toy_workspace), *TINY_WORLD, "shots=2", f"method={method}",
                              "method.optim.epochs=1", f"run_name={method}"]))
    assert record["status"] == "complete"
    assert set(record["metrics"]) >= {"base_acc", "novel_acc", "hm"}
    assert all(e["n_images"] == 18 * 6 for e in record["evaluations"])


def test_saved_maple_prompt_reloads_and_classifies_through_its_image_tokens(toy_workspace: Path):
    import promptlab

    overrides = [*workspace_overrides(toy_workspace), *TINY_WORLD, "shots=2", "method=maple", "method.optim.epochs=1",
                 "run_name=maple_api"]
    record = run(compose_cfg(overrides))
    classifier = promptlab.load_prompt(toy_workspace / "outputs" / "runs" / "maple_api" / "prompt_learner.pt")
    base = next(e for e in promptlab.build_run(overrides).data.eval_sets if e.name == "base")
    predicted = classifier.classify([item.impath for item in base.items])
    correct = sum(p == item.classname for p, item in zip(predicted, base.items, strict=True))
    assert correct == next(e for e in record["evaluations"] if e["name"] == "base")["n_correct"]


@pytest.mark.parametrize("method,depths", [
    ("maple", ["method.learner.depth=2"]),
    ("promptsrc", ["method.learner.text_depth=2", "method.learner.vision_depth=2"]),
])
def test_runs_on_a_coop_layout_tree_with_an_openai_format_checkpoint(toy_workspace: Path, method, depths):
    """A real dataset config (random resized crop + flip, the reference's) on a fixture tree in the CoOp layout, with
    an OpenAI-format state dict (a random 2-block CLIP, hence the depths)."""
    from tests.dataset_fixtures import build_fixture
    from tests.runs import random_checkpoint

    data = toy_workspace / "coop_tree"
    if not (data / "oxford_pets").exists():
        build_fixture("oxford_pets", data, counts={"train": 3, "val": 2, "test": 3})
    record = run(compose_cfg([*workspace_overrides(toy_workspace), f"paths.data_root={data}", "dataset=oxford_pets",
                              "dataset.num_classes=5", f"model.weights_file={random_checkpoint(data / 'clip.pt')}",
                              f"method={method}", *depths, "method.optim.epochs=1", "shots=2",
                              f"run_name={method}_pets"]))
    assert record["status"] == "complete" and record["config"]["method"]["loader"]["augment"] == "coop"
    assert [e["n_images"] for e in record["evaluations"]] == [3 * 3, 2 * 3]


@pytest.mark.slow
def test_every_deep_prompt_method_runs_through_the_cli(tmp_path: Path):
    proc = run_cli(["-m", f"method={','.join(METHOD_RUNS)}", *workspace_overrides(tmp_path), *TINY_WORLD, "shots=2",
                    "method.optim.epochs=1", "sweep_name=deep"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = sorted((tmp_path / "outputs" / "sweeps" / "deep").glob("*/metrics.json"))
    assert len(records) == len(METHOD_RUNS)


@pytest.mark.slow
def test_reference_defaults_on_a_vit_b16_give_the_reference_parameter_counts():
    """The reference's base-to-novel defaults on ViT-B/16's shapes (random weights): the learned tensors count as
    in the reference (MaPLe ctx 1,024 + 9 Linear(512, 768) + 8 deep text prompts; IVLP 2+2 at depth 12; PromptSRC
    4+4 at depth 9; VPT 8 x 12), and MaPLe's prompts reach the 768-wide image tower."""
    from promptlab.config.schema import IVLPLearnerConf, MaPLeLearnerConf, PromptSRCLearnerConf, VPTLearnerConf

    model = open_clip.create_model("ViT-B-16-quickgelu", pretrained=None)
    vit = FrozenCLIP(model, open_clip.get_tokenizer("ViT-B-16"), weights_id="random:vit-b-16")

    def count(learner: torch.nn.Module) -> int:
        return sum(p.numel() for p in learner.parameters())

    def build(conf_cls: type) -> torch.nn.Module:  # the schema's defaults, as a run passes them
        from omegaconf import OmegaConf

        from promptlab.engine.build import learner_options

        kwargs = learner_options(OmegaConf.create({"learner": OmegaConf.structured(conf_cls)}))
        return hydra.utils.get_class(conf_cls._target_)(vit, **kwargs)

    maple = build(MaPLeLearnerConf)
    assert count(maple) == 2 * 512 + 9 * (512 * 768 + 768) + 8 * 2 * 512
    assert count(build(IVLPLearnerConf)) == 12 * 2 * 512 + 12 * 2 * 768
    assert count(build(PromptSRCLearnerConf)) == 9 * 4 * 512 + 9 * 4 * 768
    assert count(build(VPTLearnerConf)) == 12 * 8 * 768
    maple.set_classnames(vit, ["cat", "dog"])
    features = maple.encode_images(vit, torch.randn(1, 3, 224, 224))
    features.sum().backward()
    assert features.shape == (1, 512) and maple.vision_deep_proj[8 - 1].weight.grad is not None
