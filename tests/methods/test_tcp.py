"""TCP (promptlab/methods/tcp.py) against its reference, htyao89/Textual-based_Class-aware_prompt_tuning @ bd97bec:
layout and parameter count on a ViT-B/16-sized text tower, the class-aware tokens against a hand-built MLP, the
loss terms, the reference module's own outputs (REFERENCE, from tests/methods/tcp_reference_values.py), novel classes,
and a toy-world run."""

from __future__ import annotations

import math
from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from promptlab.errors import ConfigError
from promptlab.methods.base import TrainingStep, logits_from_features
from promptlab.methods.tcp import TCPLearnerConf, TCPPrompts
from promptlab.models.frozen import FrozenCLIP
from promptlab.train import run
from tests.conftest import make_random_clip
from tests.runs import TINY_WORLD, compose_cfg, workspace_overrides

CLASSNAMES = ["abyssinian", "basset_hound", "great pyrenees"]
TEMPLATE = "a photo of a {}, a type of pet."  # CUSTOM_TEMPLATES_ori["OxfordPets"], promptlab's oxford_pets template
IMAGE_FEATURES = torch.randn(2, 512, generator=torch.Generator().manual_seed(2))  # un-normalised, as an encoder's
LABELS = torch.tensor([0, 2])


def reference_sized_model() -> open_clip.model.CLIP:
    """Random open_clip CLIP whose text tower has ViT-B/16's widths (512 wide, 12 blocks, 8 heads, 77 positions,
    embed 512) and a tiny image tower (TCP never touches it): the reference hard-codes 512 and block 8."""
    torch.manual_seed(0)
    return open_clip.model.CLIP(
        embed_dim=512, quick_gelu=True,
        vision_cfg=open_clip.model.CLIPVisionCfg(layers=1, width=64, patch_size=32, image_size=224),
        text_cfg=open_clip.model.CLIPTextCfg(context_length=77, vocab_size=49408, width=512, heads=8, layers=12))


def fill_learned(params: dict[str, torch.nn.Parameter]) -> None:
    """Give the learned tensors (ctx, meta_net.*; same names and shapes in the reference) fixed values, by name."""
    generator = torch.Generator().manual_seed(1)
    for name in sorted(params):
        params[name].copy_(0.05 * torch.randn(params[name].shape, generator=generator))


# python tests/methods/tcp_reference_values.py <checkout of htyao89/Textual-based_Class-aware_prompt_tuning @ bd97bec6>
# (torch 2.x, open_clip 3.3.0, CPU, fp32): the reference's PromptLearner / TextEncoder / CustomCLIP on the case above.
REFERENCE: dict = {
    "n_params": 331904,
    "param_shapes": {"ctx": [4, 512], "meta_net.linear1.weight": [128, 512], "meta_net.linear1.bias": [128],
        "meta_net.linear2.weight": [2048, 128], "meta_net.linear2.bias": [2048]},
    "suffix_len": 72,
    "eot": [14, 14, 13],
    "frozen": [[-0.024155209, -0.0036027627, 0.0041065123, -0.02083029], [-0.026232775, -0.0091350237, 0.0095627718,
        -0.011497073], [-0.055777207, -0.017215068, 0.017595626, -0.041817471]],
    "class_tokens": [[[-0.20098442, 0.046796728, 0.04109364], [0.041791346, 0.0092016738, 0.076304726]],
        [[-0.19592682, 0.05483824, 0.038383603], [0.036797337, 0.0095265415, 0.078358822]], [[-0.18572408,
        0.049205605, 0.033973616], [0.039114486, -0.0037188455, 0.068260416]]],
    "logits": [[0.093817711, -0.03702563, 0.34803429], [-0.53388196, -0.53829008, -0.16666347]],
    "loss": 3.3687274,
    "ce": 1.0103886,
    "grad_norm": {"ctx": 7.1547856, "meta_net.linear1.weight": 0.40942955, "meta_net.linear1.bias": 0.40799329,
        "meta_net.linear2.weight": 0.62077081, "meta_net.linear2.bias": 1.4374282},
    "grad_ctx_0": [-0.13254146, -0.095169552, -0.15782195, -0.09427315],
}


@pytest.fixture(scope="module")
def vit_clip() -> FrozenCLIP:
    return FrozenCLIP(reference_sized_model(), open_clip.get_tokenizer("ViT-B-16"), weights_id="random:tcp-b16")


def build(clip: FrozenCLIP, **overrides) -> TCPPrompts:
    options = {"templates": [TEMPLATE], "dataset": "oxford_pets", "init_seed": 0, **overrides}
    return TCPPrompts(clip, **options)


def test_reference_defaults_give_the_reference_layout_and_parameter_count(vit_clip):
    """4 context vectors, an MLP 512 -> 128 -> 4 x 512 with biases (meta_net.linear1/linear2 as the reference),
    tokens before block 8; the prompt text "X X X X <name>, a type of pet." (CUSTOM_TEMPLATES)."""
    defaults = TCPLearnerConf()
    assert (defaults.n_ctx, defaults.ctx_init, defaults.insert_layer, defaults.kg_weight) == (4, None, 8, 8.0)
    learner = build(vit_clip)
    shapes = {k: tuple(p.shape) for k, p in learner.named_parameters()}
    assert shapes == {"ctx": (4, 512), "meta_net.linear1.weight": (128, 512), "meta_net.linear1.bias": (128,),
                      "meta_net.linear2.weight": (2048, 128), "meta_net.linear2.bias": (2048,)}
    assert sum(p.numel() for p in learner.parameters()) == 4 * 512 + 512 * 128 + 128 + 128 * 2048 + 2048 == 331_904
    assert learner.ctx_text == "X X X X" and learner.prompt_suffix == "{}, a type of pet."
    # Random context N(0, 0.02); nn.Linear's own init (|w| <= 1/sqrt(fan_in)).
    assert abs(float(learner.ctx.detach().std()) - 0.02) < 0.003
    assert float(learner.meta_net.linear2.weight.detach().abs().max()) <= 1 / math.sqrt(128)
    learner.set_classnames(vit_clip, CLASSNAMES)
    assert learner.class_tokens().shape == (3, 4, 512)
    assert learner(vit_clip).shape == (3, 512)
    assert not any(k in learner.state_dict() for k in ("prefix", "suffix", "zeroshot_features"))


def test_class_tokens_are_the_hand_built_mlp_of_the_frozen_template_embeddings(vit_clip):
    learner = build(vit_clip)
    learner.set_classnames(vit_clip, CLASSNAMES)
    frozen = F.normalize(vit_clip.encode_text([TEMPLATE.format(n.replace("_", " ")) for n in CLASSNAMES]), dim=-1)
    torch.testing.assert_close(learner.zeroshot_features, frozen)
    l1, l2 = learner.meta_net.linear1, learner.meta_net.linear2
    hidden = frozen @ l1.weight.t() + l1.bias
    hidden = hidden * torch.sigmoid(1.702 * hidden)  # QuickGELU
    expected = (hidden @ l2.weight.t() + l2.bias).view(3, 4, 512)
    torch.testing.assert_close(learner.class_tokens(), expected)


def slow_text_features(clip: FrozenCLIP, prompts: torch.Tensor, eot: torch.Tensor, tokens: torch.Tensor,
                       layer: int) -> torch.Tensor:
    """All 77 positions through open_clip's blocks one by one; before block `layer` positions 1..n are replaced by
    each class's own tokens (ResidualAttentionBlock_MaPLe with layers=[8], weights=[1.0])."""
    model = clip.model
    x = prompts + model.positional_embedding
    for i, block in enumerate(model.transformer.resblocks):
        if i == layer:
            x = torch.cat([x[:, :1], tokens, x[:, 1 + tokens.shape[1]:]], dim=1)
        x = block(x, attn_mask=model.attn_mask)
    x = model.ln_final(x)
    return x[torch.arange(x.shape[0]), eot] @ model.text_projection


def test_tokens_replace_the_context_slots_before_the_insert_layer_only(vit_clip):
    learner = build(vit_clip)
    full = FrozenCLIP(vit_clip.model, vit_clip.tokenizer, "random:tcp-b16", truncate_text=False, share_prefix=False)
    learner.set_classnames(full, CLASSNAMES)
    expected = F.normalize(slow_text_features(full, learner.prompt_embeddings(), learner.eot_index,
                                              learner.class_tokens(), 8), dim=-1)
    torch.testing.assert_close(learner(full), expected, atol=1e-5, rtol=1e-5)
    learner.set_classnames(vit_clip, CLASSNAMES)  # truncated after the longest EOT: the same features
    torch.testing.assert_close(learner(vit_clip), expected, atol=1e-5, rtol=1e-5)
    # The tokens matter, and only from block 8 on: zero MLP output changes the features.
    with torch.no_grad():
        learner.meta_net.linear2.weight.zero_()
        learner.meta_net.linear2.bias.zero_()
    assert not torch.allclose(learner(vit_clip), expected, atol=1e-4)


@pytest.mark.skipif(not REFERENCE, reason="REFERENCE not yet generated")
def test_outputs_loss_and_gradients_equal_the_reference_modules(vit_clip):
    learner = build(vit_clip)
    with torch.no_grad():
        fill_learned(dict(learner.named_parameters()))
    learner.set_classnames(vit_clip, CLASSNAMES)
    assert {k: list(p.shape) for k, p in learner.named_parameters()} == REFERENCE["param_shapes"]
    assert sum(p.numel() for p in learner.parameters()) == REFERENCE["n_params"]
    assert learner.eot_index.tolist() == REFERENCE["eot"]
    assert learner.suffix.shape[1] <= REFERENCE["suffix_len"]  # truncated after the longest EOT here
    close = {"atol": 2e-5, "rtol": 1e-4}
    torch.testing.assert_close(learner.zeroshot_features[:, :4], torch.tensor(REFERENCE["frozen"]), **close)
    torch.testing.assert_close(learner.class_tokens()[:, :2, :3], torch.tensor(REFERENCE["class_tokens"]), **close)
    image = F.normalize(IMAGE_FEATURES, dim=-1)
    text = learner(vit_clip)
    logits = logits_from_features(image, text, vit_clip.logit_scale())
    torch.testing.assert_close(logits, torch.tensor(REFERENCE["logits"]), atol=1e-4, rtol=1e-4)
    loss = learner.training_loss(vit_clip, TrainingStep(None, image, text, logits, LABELS))
    assert set(loss.terms) == {"ce", "kg"}
    assert loss.terms["ce"].item() == pytest.approx(REFERENCE["ce"], abs=1e-5)
    assert loss.total.item() == pytest.approx(REFERENCE["loss"], abs=1e-5)
    loss.total.backward()
    for name, p in learner.named_parameters():
        assert float(p.grad.norm()) == pytest.approx(REFERENCE["grad_norm"][name], rel=1e-3), name
    torch.testing.assert_close(learner.ctx.grad[0, :4], torch.tensor(REFERENCE["grad_ctx_0"]), atol=1e-6, rtol=1e-3)


def test_loss_is_cross_entropy_plus_eight_times_one_minus_the_mean_cosine():
    clip = make_random_clip(0)
    learner = build(clip, insert_layer=1)
    learner.set_classnames(clip, CLASSNAMES)
    image = F.normalize(torch.randn(4, clip.embed_dim, generator=torch.Generator().manual_seed(3)), dim=-1)
    labels = torch.tensor([0, 1, 2, 1])
    text = learner(clip)
    logits = logits_from_features(image, text, clip.logit_scale())
    loss = learner.training_loss(clip, TrainingStep(None, image, text, logits, labels))
    cosine = F.cosine_similarity(text, learner.zeroshot_features, dim=-1, eps=1e-7)
    torch.testing.assert_close(loss.terms["ce"], F.cross_entropy(logits, labels))
    torch.testing.assert_close(loss.terms["kg"], 8.0 * (1.0 - cosine.mean()))
    torch.testing.assert_close(loss.total, loss.terms["ce"] + loss.terms["kg"])
    no_kg = build(clip, insert_layer=1, kg_weight=0.0)
    no_kg.set_classnames(clip, CLASSNAMES)
    assert set(no_kg.training_loss(clip, TrainingStep(None, image, text, logits, labels)).terms) == {"ce"}


def test_novel_classes_get_class_aware_tokens_from_their_own_names():
    clip = make_random_clip(0)
    learner = build(clip, insert_layer=1)
    assert learner.scores_unseen_classes
    learner.set_classnames(clip, CLASSNAMES)
    base = learner(clip)
    novel = ["bombay", "havanese"]
    learner.set_classnames(clip, novel)
    expected = learner.meta_net(F.normalize(clip.encode_text([TEMPLATE.format(n) for n in novel]), dim=-1))
    torch.testing.assert_close(learner.class_tokens(), expected.view(2, 4, -1))
    assert learner(clip).shape == (2, clip.embed_dim)
    learner.set_classnames(clip, CLASSNAMES)
    torch.testing.assert_close(learner(clip), base)  # back on the base classes: the same embeddings


def test_prompt_suffix_follows_the_reference_table_or_the_config():
    clip = make_random_clip(0)
    assert build(clip, insert_layer=1, dataset="dtd").prompt_suffix == "{} texture."
    assert build(clip, insert_layer=1, dataset="ucf101").prompt_suffix == "person doing {}."
    assert build(clip, insert_layer=1, dataset="toyworld").prompt_suffix == "{}."
    mine = build(clip, insert_layer=1, reference_prompts=False, prompt_suffix="{}, a pet.")
    assert mine.prompt_suffix == "{}, a pet." and mine.summary()["prompt_suffix_source"] == "config"
    mine.set_classnames(clip, ["cat"])
    tokens = clip.tokenize(["X X X X cat, a pet."])
    torch.testing.assert_close(mine.suffix, clip.embed_tokens(tokens)[:, 5 : int(clip.eot_index(tokens)[0]) + 1])


def test_insert_layer_outside_the_tower_is_refused_with_the_option_name():
    clip = make_random_clip(0)  # 2 text blocks
    for layer in (0, 2):
        with pytest.raises(ConfigError, match="method.learner.insert_layer"):
            build(clip, insert_layer=layer)
    problems = TCPPrompts.config_problems(OmegaConf.create({"n_ctx": 4, "ctx_init": None, "insert_layer": 0,
                                                            "reduction": 4}))
    assert problems and "insert_layer" in problems[0]


def test_method_preset_is_the_reference_schedule():
    cfg = compose_cfg(["method=tcp", "dataset=oxford_pets"])
    optim = cfg.method.optim
    assert optim.optimizer._target_ == "torch.optim.Adam"
    assert (optim.optimizer.eps, optim.optimizer.weight_decay, list(optim.optimizer.betas)) == (1e-3, 5e-4,
                                                                                               [0.9, 0.999])
    assert (optim.lr, optim.epochs, optim.warmup_epochs, optim.warmup_lr) == (0.002, 50, 1, 1e-5)
    assert cfg.method.loader.batch_size == 32 and cfg.method.learner.insert_layer == 8


def test_toy_world_run_writes_a_complete_record(tmp_path: Path):
    record = run(compose_cfg([*workspace_overrides(tmp_path), *TINY_WORLD, "shots=2", "method=tcp",
                              "method.optim.epochs=2", "run_name=tcp"]))
    assert record["status"] == "complete"
    assert set(record["metrics"]) >= {"base_acc", "novel_acc", "hm"}
    assert all(e["n_images"] == 18 * 6 for e in record["evaluations"])
    summary = record["summary"]
    assert (summary["method"], summary["n_ctx"], summary["insert_layer"], summary["prompt_suffix"]) == (
        "tcp", 4, 1, "{}.")
    assert Path(record["run_dir"], "prompt_learner.pt").is_file()
