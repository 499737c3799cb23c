"""LP++ (a linear probe blended with zero-shot CLIP, CVPR 2024): the data-driven step sizes and init against numpy,
the training loop against a hand-computed gradient step and against values the reference code produced, the epoch
selection, no validation read when it is off, and a toy-world run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from promptlab.config import compose
from promptlab.errors import ConfigError
from promptlab.methods import FitFeatures
from promptlab.methods.lp_pp import (
    LPPlusPlus,
    LPPPState,
    blended_logits,
    class_sums,
    init_alpha,
    lr_alpha,
    lr_weight,
    train,
)
from promptlab.train import run
from tests.methods.cached_features import Untouchable, gaussian_classes
from tests.runs import compose_cfg, tiny_overrides, top1_metrics

NAMES = ["red circle", "blue square", "green star"]
TEMPLATES = ["a photo of a {}."]


def test_the_step_sizes_and_the_init_are_the_reference_rules() -> None:
    (x, y), _, _, text = gaussian_classes()
    z = x @ text.T
    expected_sums = np.stack([x[y == c].sum(axis=0) for c in range(3)])
    expected_alpha = 250.0 * np.mean([z[y == c, c].mean() for c in range(3)])
    expected_lr_w = 4 * len(x) / np.linalg.eigvalsh(x.T @ x).max()
    expected_lr_alpha = len(x) / (4 * (z**2).sum(axis=0).max())
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    np.testing.assert_allclose(class_sums(xt, yt, 3).numpy(), expected_sums, rtol=1e-12)
    assert init_alpha(xt @ torch.from_numpy(text).t(), yt, 3) == pytest.approx(expected_alpha, rel=1e-12)
    assert lr_weight(xt) == pytest.approx(expected_lr_w, rel=1e-10)
    assert lr_alpha(xt @ torch.from_numpy(text).t()) == pytest.approx(expected_lr_alpha, rel=1e-12)


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_the_loop_is_momentum_sgd_on_the_probe_and_an_accumulated_gradient_step_on_alpha() -> None:
    """Three epochs by hand: W, b take SGD-with-momentum steps on the mean cross-entropy; alpha's gradient is summed
    and never reset, and (every 2nd epoch here) alpha steps by the rate times that sum."""
    (x, y), _, _, text = gaussian_classes(seed=1)
    n, classes = len(x), 3
    onehot = np.eye(classes)[y]
    z = x @ text.T
    w, b, a = np.stack([x[y == c].sum(axis=0) for c in range(classes)]), np.array([0.1, -0.2, 0.05]), np.full(3, 20.0)
    lr_w, lr_a = 0.7, 0.3
    vw, vb, ga = np.zeros_like(w), np.zeros_like(b), np.zeros_like(a)
    for epoch in range(3):
        err = (_softmax(x @ w.T + b + a * z) - onehot) / n
        gw, gb = err.T @ x, err.sum(axis=0)
        ga = ga + (err * z).sum(axis=0)
        vw, vb = (gw, gb) if epoch == 0 else (0.9 * vw + gw, 0.9 * vb + gb)
        w, b = w - lr_w * vw, b - lr_w * vb
        if (epoch + 1) % 2 == 0:
            a = a - lr_a * ga
    start = LPPPState(torch.from_numpy(np.stack([x[y == c].sum(axis=0) for c in range(classes)])),
                      torch.tensor([0.1, -0.2, 0.05], dtype=torch.float64), torch.full((3,), 20.0, dtype=torch.float64))
    got = train(torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(text), start, 3, (lr_w, lr_a), alpha_every=2)
    np.testing.assert_allclose(got.weight.numpy(), w, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got.bias.numpy(), b, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got.alpha.numpy(), a, rtol=1e-10, atol=1e-12)
    assert not np.allclose(a, 20.0)  # alpha did move


# Produced by the reference, FereshteShakeri/FewShot-CLIP-Strong-Baseline at f81054f995b060f8348d20e7306e15889b70c786,
# methods/linear_probe_p2.py (LinearProbe_P2.forward, calculate_lr_w / calculate_lr_alpha / calculate_init_alpha) run on
# CPU on `gaussian_classes()` (train_epoch 300, shots 4; text weights passed as [D, C]; a model whose dtype is float64
# and whose encode_image is the identity; `.cuda()` made a no-op and the fp16 one-hot of methods/utils.get_one_hot cast
# to float64, so that it runs on CPU in float64), torch.manual_seed(0) before the call; bias0 is the default nn.Linear
# bias it drew, read back. The final tensors are those after the 300 epochs; val_history the accuracies it printed.
REFERENCE = {
    "lr_w": 12.933159808160017, "lr_alpha": 1.9277985044101498, "alpha_init": 44.88648847176403,
    "bias0": [-0.05698692053556442, 0.037410933524370193, 0.3201341927051544],
    "bias": [-8.913586141767555, 29.43672844460131, -20.222584097139862],
    "alpha": [53.078058918516476, 25.39179906325432, 26.12127659668813],
    "weight": [
        [12.602300473278307, -65.05114523455859, -2.5919780366777814, 30.112892361531586, 17.550843097159444,
         4.866296498042348, -5.714074346964145, -10.242542892035466],
        [16.703878397701377, -17.85630599608197, 8.778494519007436, -28.039702705796135, -28.080266127078357,
         -15.834964608214833, 12.696344227171883, 4.344066022918518],
        [-28.58840718598811, 84.0427666304254, -7.170148837238161, 0.6479836793345757, 11.698506501963845,
         11.345719767346786, -5.3149319669289845, 6.391445421097157]],
    # The printed val accuracies: the first ten epochs and the last; the best is 66.67 (epochs 1-3, it keeps 3).
    "val_first10": [66.66666666666666, 66.66666666666666, 66.66666666666666, 50.0, 41.66666666666667,
                    33.33333333333333, 25.0, 25.0, 25.0, 33.33333333333333],
    "val_last": 16.666666666666664, "selected_epoch": 3,
}


def test_training_reproduces_the_reference_code() -> None:
    (x, y), (xv, yv), _, text = gaussian_classes()
    xt, yt, tt = torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(text)
    z = xt @ tt.t()
    assert lr_weight(xt) == pytest.approx(REFERENCE["lr_w"], rel=1e-9)
    assert lr_alpha(z) == pytest.approx(REFERENCE["lr_alpha"], rel=1e-12)
    assert init_alpha(z, yt, 3) == pytest.approx(REFERENCE["alpha_init"], rel=1e-12)
    start = LPPPState(class_sums(xt, yt, 3), torch.tensor(REFERENCE["bias0"], dtype=torch.float64),
                      torch.full((3,), init_alpha(z, yt, 3), dtype=torch.float64))
    history: list[float] = []

    def val_acc(epoch: int, state: LPPPState) -> None:
        pred = blended_logits(torch.from_numpy(xv), tt, state).argmax(dim=-1).numpy()
        history.append(100.0 * float(np.mean(pred == yv)))

    got = train(xt, yt, tt, start, 300, (lr_weight(xt), lr_alpha(z)), after_epoch=val_acc)
    np.testing.assert_allclose(got.weight.numpy(), REFERENCE["weight"], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got.bias.numpy(), REFERENCE["bias"], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got.alpha.numpy(), REFERENCE["alpha"], rtol=1e-8)
    np.testing.assert_allclose(history[:10], REFERENCE["val_first10"])
    assert history[-1] == pytest.approx(REFERENCE["val_last"]) and len(history) == 300
    best = max(history)
    assert len(history) - history[::-1].index(best) == REFERENCE["selected_epoch"]  # the last best (>=)


def _learner(clip, **kwargs) -> LPPlusPlus:
    learner = LPPlusPlus(clip, TEMPLATES, init_seed=0, **kwargs)
    learner.set_classnames(clip, NAMES)
    return learner


def _fit_data(dim: int, seed: int = 2) -> FitFeatures:
    (x, y), (xv, yv), _, _ = gaussian_classes(seed=seed, dim=dim, scale=0.3)
    return FitFeatures(train=torch.from_numpy(x).float(), train_labels=torch.from_numpy(y),
                       val=torch.from_numpy(xv).float(), val_labels=torch.from_numpy(yv))


def test_without_epoch_selection_no_validation_data_is_read(random_clip) -> None:
    data = _fit_data(random_clip.embed_dim)
    blind = FitFeatures(train=data.train, train_labels=data.train_labels, val=Untouchable(), val_labels=Untouchable())
    learner = _learner(random_clip, select_epoch=False, epochs=30)
    chosen = learner.fit_features(random_clip, blind)
    assert learner.tuned_values() == {} and chosen["lp_pp_selected_epoch"] == 30 and "lp_pp_val_acc" not in chosen
    # The same as the loop run by hand from the learner's own start.
    x = F.normalize(data.train.double(), dim=-1)
    start = learner.initial_state(x, data.train_labels)
    z = x @ learner.text_features.t()
    expected = train(x, data.train_labels, learner.text_features, start, 30, (lr_weight(x), lr_alpha(z)))
    assert torch.allclose(learner.weight, expected.weight) and torch.allclose(learner.alpha, expected.alpha)
    assert any("no validation data read" in n for n in learner.notes())


def test_the_epoch_kept_is_the_last_with_the_best_val_accuracy(random_clip) -> None:
    data = _fit_data(random_clip.embed_dim)
    learner = _learner(random_clip, epochs=40)
    chosen = learner.fit_features(random_clip, data)
    history = learner.val_history
    best = max(history)
    assert chosen["lp_pp_selected_epoch"] == len(history) - history[::-1].index(best)
    assert chosen["lp_pp_val_acc"] == pytest.approx(best) and learner.tuned_values() == {"epoch": "few-shot val"}
    # The kept state scores val at that accuracy; the learner's logits are the blended formula.
    val = F.normalize(data.val.double(), dim=-1)
    pred = learner.logits(random_clip, val.float()).argmax(dim=-1)
    assert 100.0 * float((pred == data.val_labels).double().mean()) == pytest.approx(best)
    expected = val @ learner.weight.t() + learner.bias + learner.alpha * (val @ learner.text_features.t())
    assert torch.allclose(learner.logits(random_clip, val.float()).double(), expected, atol=1e-4)
    with pytest.raises(ConfigError, match="val split is empty"):
        _learner(random_clip).fit_features(random_clip, FitFeatures(data.train, data.train_labels,
                                                                    torch.empty(0, 64), torch.empty(0).long()))


def test_other_class_lists_are_refused_and_a_saved_fit_reloads(random_clip) -> None:
    learner = _learner(random_clip, epochs=20)
    learner.fit_features(random_clip, _fit_data(random_clip.embed_dim))
    assert not learner.scores_unseen_classes and learner.unseen_classes_reason
    with pytest.raises(ConfigError, match="fitted on 3 classes"):
        learner.set_classnames(random_clip, ["purple heart", "orange cross"])
    fresh = _learner(random_clip)
    fresh.load_state_dict(learner.state_dict())
    test = F.normalize(torch.randn(4, random_clip.embed_dim, generator=torch.Generator().manual_seed(3)), dim=-1)
    assert torch.equal(fresh.logits(random_clip, test), learner.logits(random_clip, test))


def test_cached_views_are_averaged(random_clip) -> None:
    data = _fit_data(random_clip.embed_dim)
    views = FitFeatures(train=torch.stack([data.train, data.train]), train_labels=data.train_labels, val=data.val,
                        val_labels=data.val_labels)
    a, b = _learner(random_clip, epochs=10), _learner(random_clip, epochs=10)
    a.fit_features(random_clip, data)
    b.fit_features(random_clip, views)
    assert torch.allclose(a.weight, b.weight) and torch.allclose(a.alpha, b.alpha)


def test_bad_learner_values_are_refused_at_compose_time() -> None:
    with pytest.raises(ConfigError, match="method.learner.epochs"):
        compose(["method=lp_pp", "method.learner.epochs=0"])


def test_lp_pp_runs_base_to_novel_on_the_toy_world_and_writes_a_record(tmp_path) -> None:
    record = run(compose_cfg([*tiny_overrides(tmp_path), "method=lp_pp", "run_name=lp_pp"]))
    assert record["status"] == "complete"
    assert top1_metrics(record["metrics"]) == {"base_acc"}  # novel: not applicable, with the reason
    novel = next(e for e in record["evaluations"] if e["name"] == "novel")
    assert novel["not_applicable"] == LPPlusPlus.unseen_classes_reason
    summary = record["summary"]
    assert summary["tuned_on"] == "few-shot val" and 1 <= record["fit"]["lp_pp_selected_epoch"] <= 300
    assert record["tuning"] == {"epoch": "few-shot val"}
    assert record["fit"]["lp_pp_lr_w"] > 0 and record["fit"]["lp_pp_lr_alpha"] > 0 and "lp_pp_lr_w" not in summary
    assert any("LP++: step sizes" in note for note in record["notes"])
    saved = json.loads((tmp_path / "outputs" / "runs" / "lp_pp" / "metrics.json").read_text())
    assert saved["metrics"] == record["metrics"]
