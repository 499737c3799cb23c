"""CLAP (a zero-shot-initialised linear probe with class-wise constraints, CVPR 2024): the multipliers, the penalty,
the outer step and the schedule against numpy and against values the reference code produced, the loop against a
hand-computed one and against 300 epochs of the reference's own loop, the init is the zero-shot classifier, the
constraint pulls toward it, no validation read, and a toy-world run."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from promptlab.config import compose
from promptlab.errors import ConfigError
from promptlab.methods import FitFeatures
from promptlab.methods.clap import (
    CLAP,
    CLAPSchedule,
    batches_per_epoch,
    clap_logits,
    constraint_penalty,
    distances,
    epoch_lr,
    init_multipliers,
    outer_step,
    phr,
    train,
    zero_shot_prototypes,
)
from promptlab.methods.prompts import class_embeddings
from promptlab.train import run
from tests.methods.cached_features import Untouchable
from tests.runs import compose_cfg, tiny_overrides, top1_metrics

NAMES = ["red circle", "blue square", "green star"]
TEMPLATES = ["a photo of a {}.", "a drawing of a {}."]


def _toy(seed: int = 0, classes: int = 3, dim: int = 8, n: int = 6) -> tuple[np.ndarray, ...]:
    """Gaussian features per class, unnormalised "text" prototypes near the class means, and two moved copies of
    them (the prototypes after some training), from numpy's legacy RandomState (the reference ran on this draw)."""
    rs = np.random.RandomState(seed)
    means = rs.randn(classes, dim)
    x = np.concatenate([means[c] + rs.randn(n, dim) for c in range(classes)])
    y = np.repeat(np.arange(classes), n)
    text = 3.0 * (means + 0.8 * rs.randn(classes, dim))
    moved = text + 0.5 * rs.randn(classes, dim)
    moved2 = moved + 0.3 * rs.randn(classes, dim)
    return x, y, text, moved, moved2


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _unit(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


def test_the_multipliers_the_penalty_and_the_outer_step_are_the_reference_rules() -> None:
    x, y, text, moved, moved2 = _toy()
    logits = 100.0 * _unit(x) @ _unit(text).T
    probs = _softmax(logits)
    expected_lam = np.array([probs[y == c, c].mean() for c in range(3)])
    h = ((moved - text) ** 2).sum(axis=1)
    xt, yt, tt, mt = (torch.from_numpy(a) for a in (x, y, text, moved))
    np.testing.assert_allclose(clap_logits(xt, tt, 100.0).numpy(), logits, rtol=1e-12)
    lam = init_multipliers(clap_logits(xt, tt, 100.0), yt, 3)
    np.testing.assert_allclose(lam.numpy(), expected_lam, rtol=1e-12)
    assert float(constraint_penalty(mt, tt, lam)) == pytest.approx(np.mean(expected_lam * h), rel=1e-12)
    # PHR with rho > 0: value (x^2 - lambda^2) / (2 rho) and derivative x = lambda + rho h where x >= 0, else
    # -lambda^2 / (2 rho) and 0.
    rho = np.array([0.5, 2.0, 1.0])
    lam_neg = np.array([0.3, -5.0, 0.0])
    z = lam_neg + rho * h
    value, grad = phr(torch.from_numpy(h), torch.from_numpy(lam_neg), torch.from_numpy(rho))
    expected_value = np.where(z >= 0, (z**2 - lam_neg**2) / (2 * rho), -(lam_neg**2) / (2 * rho))
    np.testing.assert_allclose(value.numpy(), expected_value)
    np.testing.assert_allclose(grad.numpy(), np.where(z >= 0, z, 0.0))
    # The outer step: lambda <- max(0, lambda + rho h), rho <- h (the current distances); rho starts at 0.
    lam1, rho1 = outer_step(mt, tt, lam, torch.zeros(3, dtype=torch.float64))
    np.testing.assert_allclose(lam1.numpy(), expected_lam)
    np.testing.assert_allclose(rho1.numpy(), h)
    h2 = ((moved2 - text) ** 2).sum(axis=1)
    lam2, rho2 = outer_step(torch.from_numpy(moved2), tt, lam1, rho1)
    np.testing.assert_allclose(lam2.numpy(), expected_lam + h * h2, rtol=1e-12)
    np.testing.assert_allclose(rho2.numpy(), h2, rtol=1e-12)


# Produced by the reference, jusiro/CLAP at dbdf4095b3d824546474c725539b9f4efff3ca0e, trainers/adapters.py, on CPU in
# float32 on `_toy()`: AdapterMethod(cfg with INIT=ZS, CONSTRAINT=l2, a model whose logit_scale is log(100), the
# text prototypes `text`), CustomCLIP.forward_lp on the features (logits_zs),
# AdapterMethod.init_lagrangian_multipliers(labels, logits_zs), then the prototypes set to `moved`:
# zero_shot_constraint() and outer_step(), then set to `moved2`: outer_step() again (dassl's imports stubbed out; they
# are not used by these functions).
REFERENCE = {
    "logits_zs_row0": [83.21199798583984, 4.529697418212891, -9.917312622070312],
    "multipliers": [0.9997666478157043, 0.042795632034540176, 1.0],
    "penalty": 1.0459126234054565,
    "logits_moved_row0": [85.98479461669922, 6.521304607391357, -7.575105667114258],
    "outer1_multipliers": [0.9997666478157043, 0.042795632034540176, 1.0],
    "outer1_rho": [2.3522374629974365, 1.3504539728164673, 0.7282558083534241],
    "outer2_multipliers": [7.509714126586914, 3.009557008743286, 2.258995532989502],
    "outer2_rho": [2.7675552368164062, 2.19686222076416, 1.728781819343567],
}
# The same reference's schedule: dassl (KaiyangZhou/Dassl.pytorch at c61a1b570ac6333bd50fb5ae06aea59002fb20bb)
# dassl/optim/lr_scheduler.py::build_lr_scheduler with configs/trainers/SGD_lr1e-1_B256_ep300.yaml (cosine,
# MAX_EPOCH 300, one constant warm-up epoch at 1e-5, WARMUP_RECOUNT) on SGD lr 0.1: the rate of each epoch.
REFERENCE_LR = {0: 1e-05, 1: 0.1, 2: 0.09999725846827562, 3: 0.09998903417374229, 150: 0.0505235892058123,
                298: 2.4671981713419976e-05, 299: 1.096582625772501e-05}


def test_the_rules_reproduce_the_reference_code() -> None:
    x, y, text, moved, moved2 = (torch.from_numpy(a).float() for a in _toy())
    y = y.long()
    zs = clap_logits(x, text, 100.0)
    np.testing.assert_allclose(zs[0].numpy(), REFERENCE["logits_zs_row0"], rtol=1e-5)
    lam = init_multipliers(zs, y, 3)
    np.testing.assert_allclose(lam.numpy(), REFERENCE["multipliers"], rtol=1e-5)
    assert float(constraint_penalty(moved, text, lam)) == pytest.approx(REFERENCE["penalty"], rel=1e-5)
    np.testing.assert_allclose(clap_logits(x, moved, 100.0)[0].numpy(), REFERENCE["logits_moved_row0"], rtol=1e-5)
    lam1, rho1 = outer_step(moved, text, lam, torch.zeros(3))
    np.testing.assert_allclose(lam1.numpy(), REFERENCE["outer1_multipliers"], rtol=1e-5)
    np.testing.assert_allclose(rho1.numpy(), REFERENCE["outer1_rho"], rtol=1e-5)
    lam2, rho2 = outer_step(moved2, text, lam1, rho1)
    np.testing.assert_allclose(lam2.numpy(), REFERENCE["outer2_multipliers"], rtol=1e-5)
    np.testing.assert_allclose(rho2.numpy(), REFERENCE["outer2_rho"], rtol=1e-5)
    for epoch, lr in REFERENCE_LR.items():
        assert epoch_lr(epoch, 0.1, 300) == pytest.approx(lr, rel=1e-9)


def _loop_toy() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """20 views of 4 shots of 3 classes (views-major, as the flattened cache), float32: 240 samples, one batch."""
    rs = np.random.RandomState(5)
    means = rs.randn(3, 8)
    x = np.concatenate([np.concatenate([means[c] + rs.randn(4, 8) for c in range(3)]) for _ in range(20)])
    text = 3.0 * (means + 0.8 * rs.randn(3, 8))
    return (torch.from_numpy(x.astype(np.float32)), torch.from_numpy(np.tile(np.repeat(np.arange(3), 4), 20)),
            torch.from_numpy(text.astype(np.float32)))


# Produced by the reference's own loop, jusiro/CLAP at dbdf4095b3d824546474c725539b9f4efff3ca0e, on CPU in float32 on
# `_loop_toy()`: AdapterMethod (INIT=ZS, CONSTRAINT=l2, then l2_adaptative) and CustomCLIP.forward_lp,
# init_lagrangian_multipliers on the zero-shot logits of all 240 samples, then 300 x TrainerXCostume.run_epoch
# (ADAPTER.forward_backward, PREC fp32; len(train_loader_x) = 1 batch of 256) with torch.optim.SGD(lr 0.1, momentum 0.9,
# weight decay 0) and dassl's build_lr_scheduler for configs/trainers/SGD_lr1e-1_B256_ep300.yaml stepped after each
# epoch, and outer_step() after each epoch for l2_adaptative (dassl's trainer plumbing stubbed: logging, meters).
REFERENCE_LOOP = {
    "multipliers0": [0.9614030718803406, 0.8251283764839172, 0.9753325581550598],
    "l2_prototypes": [
        [1.168989658355713, 0.8918460011482239, 8.693246841430664, -1.478092074394226,
         -1.1346021890640259, 1.6303669214248657, 0.03675265610218048, -5.804174423217773],
        [-0.4272402822971344, -3.881742477416992, -5.292802810668945, -3.9143238067626953,
         -1.80985689163208, 3.2823147773742676, -6.9193267822265625, -2.7156262397766113],
        [3.546816825866699, 4.304081916809082, -0.6521169543266296, -0.7533410787582397,
         -4.563905239105225, -0.8139481544494629, -2.1724443435668945, -1.861289381980896],
    ],
    "adaptive_prototypes": [
        [1.1714603900909424, 0.8924548029899597, 8.690366744995117, -1.4763919115066528,
         -1.1338152885437012, 1.623199224472046, 0.04488009214401245, -5.810733318328857],
        [-0.47881096601486206, -3.9925379753112793, -5.276888370513916, -3.9926505088806152,
         -1.7139317989349365, 3.335693836212158, -6.857126712799072, -2.639073610305786],
        [3.500483751296997, 4.27337646484375, -0.6683470010757446, -0.7039669752120972,
         -4.580921173095703, -0.7651255130767822, -2.304658889770508, -1.8760075569152832],
    ],
    "adaptive_multipliers": [1.0820122957229614, 1.9185484647750854, 1.9505162239074707],
}


@pytest.mark.parametrize("adaptive", [False, True])
def test_300_epochs_reproduce_the_reference_loop(adaptive: bool) -> None:
    x, y, text = _loop_toy()
    lam = init_multipliers(clap_logits(x, text, 100.0), y, 3)
    np.testing.assert_allclose(lam.numpy(), REFERENCE_LOOP["multipliers0"], rtol=1e-6)
    got = train(x, y, text, lam, 100.0, CLAPSchedule(adaptive=adaptive), 12, torch.Generator().manual_seed(0))
    key = "adaptive" if adaptive else "l2"
    np.testing.assert_allclose(got.prototypes.numpy(), REFERENCE_LOOP[f"{key}_prototypes"], rtol=1e-5, atol=1e-5)
    expected_lam = REFERENCE_LOOP["adaptive_multipliers"] if adaptive else REFERENCE_LOOP["multipliers0"]
    np.testing.assert_allclose(got.multipliers.numpy(), expected_lam, rtol=1e-5)


def test_an_epoch_has_as_many_batches_as_the_support_images_fill() -> None:
    # Dassl's loader drops the last partial batch only when there is a full one.
    assert [batches_per_epoch(n, 256) for n in (1, 100, 255, 256, 511, 512, 1600)] == [1, 1, 1, 1, 1, 2, 6]


def test_the_loop_is_momentum_sgd_on_ce_plus_the_penalty_with_outer_steps() -> None:
    """Three epochs by hand, one full batch each: the gradient of the cross-entropy through the normalised prototypes
    plus 2 lambda_c (w_c - t_c) / C, SGD with momentum 0.9 at each epoch's rate, an outer step after each epoch."""
    x, y, text, _, _ = _toy(seed=1)
    xn, onehot, n, classes = _unit(x), np.eye(3)[y], len(x), 3
    schedule = CLAPSchedule(lr=0.5, epochs=3, batch_size=64, warmup_epochs=1, warmup_lr=0.05, adaptive=True)
    lam = np.array([0.9, 0.2, 0.6])
    w, v, rho = text.copy(), np.zeros_like(text), np.zeros(3)
    for epoch in range(3):
        lr = epoch_lr(epoch, 0.5, 3, 1, 0.05)
        norm = np.linalg.norm(w, axis=1, keepdims=True)
        u = w / norm
        err = (_softmax(10.0 * xn @ u.T) - onehot) / n
        gu = 10.0 * err.T @ xn
        grad = (gu - (gu * u).sum(axis=1, keepdims=True) * u) / norm + 2 * lam[:, None] * (w - text) / classes
        v = grad if epoch == 0 else 0.9 * v + grad
        w = w - lr * v
        h = ((w - text) ** 2).sum(axis=1)
        lam, rho = np.maximum(0.0, lam + rho * h), h
    got = train(torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(text),
                torch.tensor([0.9, 0.2, 0.6], dtype=torch.float64), 10.0, schedule, n_images=n,
                generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(got.prototypes.numpy(), w, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got.multipliers.numpy(), lam, rtol=1e-10)
    np.testing.assert_allclose(got.rho.numpy(), rho, rtol=1e-10)
    assert not np.allclose(w, text)


def test_a_strong_constraint_keeps_the_prototypes_at_their_init() -> None:
    """Labels that contradict the text (each class's images labelled as the next class): unconstrained, the probe
    must move far from the zero-shot init; with large multipliers the penalty holds every class near it."""
    x, y, text, _, _ = _toy(seed=2, n=10)
    xt, yt, tt = torch.from_numpy(x), torch.from_numpy((y + 1) % 3), torch.from_numpy(text)
    schedule = CLAPSchedule(lr=0.1, epochs=50, batch_size=256)
    free = train(xt, yt, tt, torch.zeros(3, dtype=torch.float64), 100.0, schedule, 30, torch.Generator().manual_seed(0))
    held = train(xt, yt, tt, torch.full((3,), 10.0, dtype=torch.float64), 100.0, schedule, 30,
                 torch.Generator().manual_seed(0))
    free_d, held_d = distances(free.prototypes, tt), distances(held.prototypes, tt)
    assert bool((held_d < free_d).all()) and float(held_d.max()) < 0.1 * float(free_d.min())


def _learner(clip, **kwargs) -> CLAP:
    learner = CLAP(clip, TEMPLATES, init_seed=0, **kwargs)
    learner.set_classnames(clip, NAMES)
    return learner


def _fit_data(dim: int, seed: int = 3, shots: int = 4) -> FitFeatures:
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(3, dim, generator=g)
    train = F.normalize(means.repeat_interleave(shots, 0) + torch.randn(3 * shots, dim, generator=g), dim=-1)
    val = F.normalize(means + torch.randn(3, dim, generator=g), dim=-1)
    return FitFeatures(train=train, train_labels=torch.arange(3).repeat_interleave(shots), val=val,
                       val_labels=torch.arange(3))


def test_the_init_is_the_zero_shot_classifier(random_clip) -> None:
    learner = _learner(random_clip)
    raw = torch.stack([random_clip.adapter.encode_tokens(random_clip.tokenize([t.format(n) for n in NAMES]),
                                                         truncate=random_clip.truncate_text).float()
                       for t in TEMPLATES]).mean(dim=0)
    assert torch.allclose(learner.text_features, raw)
    assert torch.equal(learner.text_features, zero_shot_prototypes(random_clip, TEMPLATES, NAMES))
    # One template: its normalised init is the zero-shot classifier itself.
    one = zero_shot_prototypes(random_clip, TEMPLATES[:1], NAMES)
    assert torch.allclose(F.normalize(one, dim=-1), class_embeddings(random_clip, TEMPLATES[:1], NAMES), atol=1e-6)
    # A fit whose only epoch is the warm-up at rate 0 leaves W at the init: it scores as zero-shot CLIP (raw mean).
    data = _fit_data(random_clip.embed_dim)
    still = _learner(random_clip, epochs=1, warmup_lr=0.0)
    still.fit_features(random_clip, data)
    assert torch.equal(still.prototypes, still.text_features)
    expected = random_clip.logit_scale() * data.val @ F.normalize(raw, dim=-1).t()
    assert torch.allclose(still.logits(random_clip, data.val), expected, atol=1e-4)


def test_the_fit_reads_no_validation_data_and_the_constraint_keeps_it_nearer(random_clip) -> None:
    data = _fit_data(random_clip.embed_dim)
    blind = FitFeatures(train=data.train, train_labels=data.train_labels, val=Untouchable(), val_labels=Untouchable())
    clap = _learner(random_clip, epochs=40)
    chosen = clap.fit_features(random_clip, blind)
    assert clap.tuned_values() == {} and "clap_val_acc" not in chosen
    assert chosen["clap_batches_per_epoch"] == 1 and chosen["clap_samples"] == 12
    assert any("no validation data read" in note for note in clap.notes())
    # The multipliers are the zero-shot rule on the support set; W is the loop run by hand from the learner's init.
    scale = float(random_clip.logit_scale())
    lam = init_multipliers(clap_logits(data.train, clap.text_features, scale), data.train_labels, 3)
    assert torch.allclose(clap.multipliers, lam)
    expected = train(F.normalize(data.train, dim=-1), data.train_labels, clap.text_features, lam, scale,
                     clap.schedule, 12, torch.Generator().manual_seed(0))
    assert torch.allclose(clap.prototypes, expected.prototypes, atol=1e-5)
    zslp = _learner(random_clip, epochs=40, constraint=False)
    zslp.fit_features(random_clip, blind)
    assert chosen["clap_distance_mean"] < zslp.fit_info["clap_distance_mean"]


def test_cached_views_are_samples_and_the_images_set_the_epoch(random_clip) -> None:
    data = _fit_data(random_clip.embed_dim)
    views = FitFeatures(train=torch.stack([data.train, data.train.flip(-1)]), train_labels=data.train_labels,
                        val=data.val, val_labels=data.val_labels)
    learner = _learner(random_clip, epochs=5, batch_size=4)
    chosen = learner.fit_features(random_clip, views)
    assert chosen["clap_samples"] == 24 and chosen["clap_batches_per_epoch"] == 3  # 12 images / 4, not 24 / 4
    flat = torch.cat([data.train, data.train.flip(-1)])
    lam = init_multipliers(clap_logits(flat, learner.text_features, float(random_clip.logit_scale())),
                           data.train_labels.repeat(2), 3)
    assert torch.allclose(learner.multipliers, lam)


def test_other_class_lists_are_refused_and_a_saved_fit_reloads(random_clip) -> None:
    learner = _learner(random_clip, epochs=10)
    learner.fit_features(random_clip, _fit_data(random_clip.embed_dim))
    assert not learner.scores_unseen_classes and learner.unseen_classes_reason
    with pytest.raises(ConfigError, match="fitted on 3 classes"):
        learner.set_classnames(random_clip, ["purple heart", "orange cross"])
    fresh = _learner(random_clip)
    fresh.load_state_dict(learner.state_dict())
    test = F.normalize(torch.randn(4, random_clip.embed_dim, generator=torch.Generator().manual_seed(3)), dim=-1)
    assert torch.equal(fresh.logits(random_clip, test), learner.logits(random_clip, test))


def test_bad_learner_values_are_refused_at_compose_time() -> None:
    with pytest.raises(ConfigError, match="method.learner.epochs"):
        compose(["method=clap", "method.learner.epochs=0"])
    with pytest.raises(ConfigError, match="needs constraint=true"):
        compose(["method=clap", "method.learner.adaptive=true", "method.learner.constraint=false"])


def test_clap_runs_base_to_novel_on_the_toy_world_and_writes_a_record(tmp_path) -> None:
    record = run(compose_cfg([*tiny_overrides(tmp_path), "method=clap", "run_name=clap",
                              "method.learner.epochs=20"]))
    assert record["status"] == "complete"
    assert top1_metrics(record["metrics"]) == {"base_acc"}  # novel: not applicable, with the reason
    novel = next(e for e in record["evaluations"] if e["name"] == "novel")
    assert novel["not_applicable"] == CLAP.unseen_classes_reason
    summary = record["summary"]
    assert record["tuning"] == {} and summary["tuned_on"] == "none"
    assert summary["clap_epochs"] == 20 and summary["clap_constraint"] is True
    fit = record["fit"]
    assert 0.0 < fit["clap_multiplier_init_mean"] <= 1.0 and math.isfinite(fit["clap_distance_mean"])
    assert "clap_distance_mean" not in summary  # a statistic of the fit: it would split the table by seed
    assert any("CLAP (class-wise constraint)" in note for note in record["notes"])
    saved = json.loads((tmp_path / "outputs" / "runs" / "clap" / "metrics.json").read_text())
    assert saved["metrics"] == record["metrics"]


def test_imagenet_gets_the_reference_templates() -> None:
    # CoOp's seven IMAGENET_TEMPLATES_SELECT and the dataset's template (conf/method_dataset/clap_imagenet.yaml).
    cfg = compose(["method=clap", "dataset=imagenet"])
    assert len(cfg.method.learner.templates) == 8 and cfg.method.learner.templates[-1] == "a photo of a {}."
    assert list(compose(["method=clap", "dataset=dtd"]).method.learner.templates) == ["{} texture."]
