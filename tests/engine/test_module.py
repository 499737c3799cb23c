"""The LightningModule: reference schedule, non-finite loss guard, learned-only state, precision."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from promptlab.engine.datamodule import FeatureDataset
from promptlab.engine.module import NonFiniteLossError, PromptLearningModule, warmup_cosine_factor
from promptlab.methods import CoCoOpPrompts, CoOpPrompts


def dassl_schedule(base_lr: float, max_epochs: int, warmup_epochs: int, warmup_lr: float) -> list[float]:
    """Replays Dassl's ConstantWarmupScheduler(CosineAnnealingLR(T_max=max_epoch)) epoch by epoch."""
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=base_lr)
    successor = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max_epochs)
    lrs, last_epoch = [], 0
    for group in opt.param_groups:  # the warm-up scheduler sets the constant lr at construction
        group["lr"] = warmup_lr if warmup_epochs > 0 else base_lr
    for _ in range(max_epochs):
        lrs.append(opt.param_groups[0]["lr"])
        # end of epoch: Dassl steps the successor only once last_epoch >= warmup_epoch
        if last_epoch >= warmup_epochs:
            successor.step()
        else:
            last_epoch += 1
            if last_epoch >= warmup_epochs:
                for group in opt.param_groups:
                    group["lr"] = successor.get_last_lr()[0]
    return lrs


@pytest.mark.parametrize("max_epochs,warmup", [(10, 1), (5, 1), (200, 1), (7, 0)])
def test_schedule_matches_dassl(max_epochs, warmup):
    expected = dassl_schedule(0.002, max_epochs, warmup, 1e-5)
    got = [0.002 * warmup_cosine_factor(e, max_epochs, warmup, 1e-5, 0.002) for e in range(max_epochs)]
    assert got == pytest.approx(expected, rel=1e-9, abs=1e-12)
    if warmup:
        assert got[0] == pytest.approx(1e-5) and got[1] == pytest.approx(0.002)


def _train(module: PromptLearningModule, feats, labels, epochs=1, **trainer_kwargs):
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_checkpointing=False, enable_model_summary=False, **trainer_kwargs)
    trainer.fit(module, DataLoader(FeatureDataset(feats, labels), batch_size=8))
    return trainer


def _data(clip, n=32, classes=4):
    torch.manual_seed(0)
    feats = torch.nn.functional.normalize(torch.randn(n, clip.embed_dim), dim=-1)
    return feats, torch.randint(classes, (n,))


def test_non_finite_loss_stops_with_the_run_name(random_clip):
    learner = CoOpPrompts(random_clip, n_ctx=4, ctx_init="a photo of a")
    learner.set_classnames(random_clip, ["a", "b", "c", "d"])
    with torch.no_grad():
        learner.ctx.fill_(float("nan"))
    module = PromptLearningModule(random_clip, learner, run_name="coop_toy_seed7")
    with pytest.raises(NonFiniteLossError, match="coop_toy_seed7.*non-finite"):
        _train(module, *_data(random_clip))


def test_training_moves_only_the_learner_and_state_is_learned_only(random_clip):
    learner = CoCoOpPrompts(random_clip, n_ctx=4, ctx_init="a photo of a", init_seed=0)
    learner.set_classnames(random_clip, ["a", "b", "c", "d"])
    frozen_before = {k: v.clone() for k, v in random_clip.state_dict().items()}
    ctx_before = learner.ctx.detach().clone()
    module = PromptLearningModule(random_clip, learner, lr=0.5, warmup_epochs=0, max_epochs=2)
    _train(module, *_data(random_clip), epochs=2)
    assert not torch.equal(ctx_before, learner.ctx.detach())
    for key, value in random_clip.state_dict().items():
        assert torch.equal(value, frozen_before[key]), key
    assert not random_clip.model.training  # Lightning's .train() does not unfreeze the backbone
    state = module.state_dict()
    assert set(state) == {f"learner.{k}" for k in learner.state_dict()}
    assert sum(v.numel() for v in state.values()) < 10_000


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])  # 16-mixed: bf16 on CPU (Lightning)
def test_mixed_precision_trains_finite(random_clip, precision):
    learner = CoOpPrompts(random_clip, n_ctx=4, ctx_init="a photo of a")
    learner.set_classnames(random_clip, ["a", "b", "c", "d"])
    module = PromptLearningModule(random_clip, learner, lr=0.1, warmup_epochs=0, max_epochs=1)
    trainer = _train(module, *_data(random_clip), precision=precision)
    assert torch.isfinite(trainer.callback_metrics["train/loss_epoch"])
    assert learner.ctx.dtype == torch.float32  # master weights stay fp32


def _fit_prompts(clip, learner, epochs=3, lr=0.5):
    torch.manual_seed(0)
    learner.set_classnames(clip, ["red circle", "blue square", "green star", "pink heart"])
    module = PromptLearningModule(clip, learner, lr=lr, warmup_epochs=0, max_epochs=epochs)
    L.seed_everything(0, verbose=False)
    _train(module, *_data(clip), epochs=epochs)
    with torch.no_grad():
        return learner(clip)


def test_kgcoop_with_zero_weight_trains_exactly_like_coop(random_clip):
    from promptlab.methods import KgCoOpPrompts

    coop = CoOpPrompts(random_clip, n_ctx=4, ctx_init="a photo of a")
    kg = KgCoOpPrompts(random_clip, templates=["a photo of a {}."], kg_weight=0.0, n_ctx=4, ctx_init="a photo of a")
    torch.testing.assert_close(_fit_prompts(random_clip, kg), _fit_prompts(random_clip, coop))
    torch.testing.assert_close(kg.ctx, coop.ctx)


def test_kgcoop_with_large_weight_stays_closer_to_zero_shot(random_clip):
    from promptlab.methods import KgCoOpPrompts, ZeroShotPrompts

    zs = ZeroShotPrompts(random_clip, ["a photo of a {}."])
    zs.set_classnames(random_clip, ["red circle", "blue square", "green star", "pink heart"])
    coop = _fit_prompts(random_clip, CoOpPrompts(random_clip, n_ctx=4, ctx_init="a photo of a"), epochs=5, lr=0.5)
    kg = _fit_prompts(random_clip, KgCoOpPrompts(random_clip, templates=["a photo of a {}."], kg_weight=50.0,
                                                 ctx_init="a photo of a"), epochs=5, lr=0.5)
    zero = zs(random_clip)
    cos_coop = (coop * zero).sum(-1).mean()
    cos_kg = (kg * zero).sum(-1).mean()
    assert cos_coop < 0.999  # CoOp did move away from the template
    # Measured on this tiny random CLIP: CoOp 0.34, KgCoOp(lambda=50) 0.68.
    assert cos_kg > cos_coop + 0.2


def test_class_counts_top5_and_mean_per_class_by_hand() -> None:
    from promptlab.engine.module import ClassCounts

    # 3 classes, 6 images. Top-1 hits: images 0, 1, 3 -> class 0: 2/3, class 1: 1/2, class 2: 0/1.
    logits = torch.tensor([
        [9.0, 1, 0, 0, 0, 0, 0], [9.0, 1, 0, 0, 0, 0, 0], [1.0, 9, 0, 0, 0, 0, 0],
        [1.0, 9, 0, 0, 0, 0, 0], [9.0, 8, 7, 6, 5, 4, 3], [9.0, 8, 7, 6, 5, 4, 3],
    ])
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    metric = ClassCounts(7)
    metric.update(logits[:3], labels[:3])  # two batches: the counts add up
    metric.update(logits[3:], labels[3:])
    out = metric.compute()
    # Top-5: image 2 (label 0 ranked 2nd), image 4 (label 1 ranked 2nd), image 5 (label 2 ranked 3rd) also hit.
    assert out["n_correct_top5"] == 6 and out["top5_acc"] == 100.0
    assert out["mean_per_class_acc"] == pytest.approx(100.0 * (2 / 3 + 1 / 2 + 0) / 3)  # classes with no image ignored


def _test_counts(clip, learner, feats, labels, batch_size):
    module = PromptLearningModule(clip, learner)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.test(module, dataloaders=DataLoader(FeatureDataset(feats, labels), batch_size=batch_size), verbose=False)
    return {k: module.last_eval[k] for k in ("n_correct", "n_images", "n_correct_top5", "mean_per_class_acc")}


def test_static_text_learners_score_cached_features_in_large_batches_with_the_same_counts(random_clip):
    from promptlab.engine.datamodule import STATIC_TEXT_FEATURE_BATCH, feature_batch_size
    from promptlab.methods.linear_probe import LinearProbe
    from promptlab.methods.zeroshot import ZeroShotPrompts

    coop = CoOpPrompts(random_clip, n_ctx=4, ctx_init="a photo of a", init_seed=0)
    cocoop = CoCoOpPrompts(random_clip, n_ctx=4, ctx_init="a photo of a", init_seed=0)
    assert feature_batch_size(coop, 100) == STATIC_TEXT_FEATURE_BATCH
    assert feature_batch_size(ZeroShotPrompts(random_clip, ["a photo of a {}."]), 100) == STATIC_TEXT_FEATURE_BATCH
    assert feature_batch_size(coop, 10_000) == 10_000  # never below the configured batch
    assert feature_batch_size(cocoop, 100) == 100  # per-image prompts: text passes per row
    assert feature_batch_size(LinearProbe(random_clip), 100) == 100  # scores by itself
    names = [f"class {i}" for i in range(12)]
    coop.set_classnames(random_clip, names)
    gen = torch.Generator().manual_seed(0)
    feats = torch.nn.functional.normalize(torch.randn(700, random_clip.embed_dim, generator=gen), dim=-1)
    labels = torch.randint(len(names), (700,), generator=gen)
    small = _test_counts(random_clip, coop, feats, labels, batch_size=7)
    large = _test_counts(random_clip, coop, feats, labels, batch_size=feature_batch_size(coop, 100))
    assert small == large and small["n_images"] == 700
