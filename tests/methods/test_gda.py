"""GDA (Gaussian discriminant analysis on frozen CLIP features, ICLR 2024): the estimates against numpy on small
Gaussian data, the alpha search, the synthesised classifier of classes without training features, and a run."""

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
from promptlab.methods.gda import (
    GDA,
    REFERENCE_ALPHA,
    REFERENCE_ALPHAS,
    class_covariance_precision,
    class_means,
    ks_precision,
    linear_classifier,
    search_alpha,
)
from promptlab.train import run
from tests.runs import compose_cfg, tiny_overrides, top1_metrics

NAMES = ["red circle", "blue square", "green star"]
TEMPLATES = ["a photo of a {}."]


def _gaussians(n_per_class: int, dim: int, seed: int, spread: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """Normalised features drawn around one fixed random centre per class (float64, numpy)."""
    centres = np.random.default_rng(123).normal(size=(len(NAMES), dim))
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(NAMES)), n_per_class)
    x = centres[labels] + spread * rng.normal(size=(labels.shape[0], dim))
    return x / np.linalg.norm(x, axis=1, keepdims=True), labels


def _numpy_ks(x: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Means and the KS precision D ((N - 1) S + tr(S) I)^+ written out with numpy."""
    n, dim = x.shape
    mu = np.stack([x[labels == c].mean(axis=0) for c in range(len(NAMES))])
    centred = x - mu[labels]
    scatter = centred.T @ centred  # (N - 1) S: the class-centred features have zero mean
    trace_s = np.trace(scatter) / (n - 1)
    return mu, dim * np.linalg.pinv(scatter + trace_s * np.eye(dim))


def _numpy_classifier(mu: np.ndarray, precision: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    w = mu @ precision
    b = np.array([math.log(1.0 / len(mu)) - 0.5 * mu[c] @ precision @ mu[c] for c in range(len(mu))])
    return w, b


def test_the_estimates_match_a_hand_computed_case_in_four_dimensions() -> None:
    x, labels = _gaussians(5, dim=4, seed=0)
    mu_np, precision_np = _numpy_ks(x, labels)
    w_np, b_np = _numpy_classifier(mu_np, precision_np)
    xt, lt = torch.from_numpy(x), torch.from_numpy(labels)
    mu = class_means(xt, lt, len(NAMES))
    precision = ks_precision(xt - mu[lt])
    weight, bias = linear_classifier(mu, precision)
    np.testing.assert_allclose(mu.numpy(), mu_np, rtol=1e-12)
    np.testing.assert_allclose(precision.numpy(), precision_np, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(weight.numpy(), w_np, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(bias.numpy(), b_np, rtol=1e-9, atol=1e-9)
    # The linear classifier is the Gaussian log-posterior up to a per-image constant: its differences between
    # classes equal those of -(x - mu_c) P (x - mu_c)^T / 2 (the quadratic term x P x^T is shared).
    quad = np.stack([-0.5 * np.einsum("nd,de,ne->n", x - mu_np[c], precision_np, x - mu_np[c])
                     for c in range(len(NAMES))], axis=1)
    lin = x @ w_np.T + b_np
    np.testing.assert_allclose(lin - lin[:, :1], quad - quad[:, :1], rtol=1e-8, atol=1e-8)


def test_the_class_covariance_estimate_is_the_pinv_of_the_mean_class_covariance() -> None:
    x, labels = _gaussians(6, dim=4, seed=1)
    expected = np.linalg.pinv(np.mean([np.cov(x[labels == c], rowvar=False) for c in range(len(NAMES))], axis=0))
    got = class_covariance_precision(torch.from_numpy(x), torch.from_numpy(labels), len(NAMES))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-9, atol=1e-9)


def test_the_alpha_search_keeps_the_first_strict_maximum_and_the_reference_start() -> None:
    labels = torch.tensor([0, 1])
    zero_shot = torch.tensor([[0.0, 2.0], [0.0, 2.0]])  # image 0 wrong, image 1 right
    gda = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # both right once alpha > 2
    alpha, correct = search_alpha(zero_shot, gda, labels, REFERENCE_ALPHAS)
    assert (alpha, correct) == (10.0, 2)  # 10 is the first grid value above 2
    assert search_alpha(zero_shot, torch.zeros(2, 2), labels, REFERENCE_ALPHAS) == (1e-4, 1)  # ties keep the first
    # No value gets an image right: the reference's starting alpha is kept.
    assert search_alpha(-gda, -gda, labels, REFERENCE_ALPHAS) == (REFERENCE_ALPHA, 0)


def _learner(clip, **kwargs) -> GDA:
    gda = GDA(clip, TEMPLATES, **kwargs)
    gda.set_classnames(clip, NAMES)
    return gda


def _fit_data(dim: int, views: int = 1) -> FitFeatures:
    x, labels = _gaussians(4 * views, dim=dim, seed=2)
    val, val_labels = _gaussians(3, dim=dim, seed=3)
    train = torch.from_numpy(x).float()
    train_labels = torch.from_numpy(labels)
    if views > 1:  # K views of the same images: [K, N, D], view-major
        order = torch.cat([torch.arange(v, len(labels), views) for v in range(views)])
        train, train_labels = train[order].reshape(views, -1, dim), train_labels[order][: len(labels) // views]
    return FitFeatures(train=train, train_labels=train_labels, val=torch.from_numpy(val).float(),
                       val_labels=torch.from_numpy(val_labels))


def test_the_learner_scores_zero_shot_plus_alpha_times_the_gaussian_classifier(random_clip) -> None:
    dim = random_clip.embed_dim
    data = _fit_data(dim)
    gda = _learner(random_clip, search=False, alpha=0.5)
    chosen = gda.fit_features(random_clip, data)
    assert chosen == {"gda_alpha": 0.5, "gda_precision": "ks"} and gda.classifier_source == "fitted"
    x = F.normalize(data.train.double(), dim=-1).numpy()
    w_np, b_np = _numpy_classifier(*_numpy_ks(x, data.train_labels.numpy()))
    test = F.normalize(torch.randn(5, dim, generator=torch.Generator().manual_seed(9)), dim=-1)
    text = gda.text_features.double().numpy()
    expected = 100.0 * test.double().numpy() @ text.T + 0.5 * (test.double().numpy() @ w_np.T + b_np)
    np.testing.assert_allclose(gda.logits(random_clip, test).double().numpy(), expected, rtol=1e-5, atol=1e-3)


def test_cached_views_are_each_a_sample(random_clip) -> None:
    dim = random_clip.embed_dim
    views = _fit_data(dim, views=2)
    flat = FitFeatures(train=views.train.reshape(-1, dim), train_labels=views.train_labels.repeat(2),
                       val=views.val, val_labels=views.val_labels)
    a, b = _learner(random_clip, search=False), _learner(random_clip, search=False)
    a.fit_features(random_clip, views)
    b.fit_features(random_clip, flat)
    assert a.train_features.shape[0] == 2 * views.train.shape[1]
    assert torch.allclose(a.weight, b.weight) and torch.allclose(a.bias, b.bias)


def test_alpha_is_searched_on_val_by_the_reference_rule(random_clip) -> None:
    data = _fit_data(random_clip.embed_dim)
    gda = _learner(random_clip)
    chosen = gda.fit_features(random_clip, data)
    assert chosen["gda_alpha"] in REFERENCE_ALPHAS and gda.fitted_values()["gda_alpha"] == chosen["gda_alpha"]
    best = None  # brute force over the grid: the first value with the most correct val images
    for alpha in REFERENCE_ALPHAS:
        gda.alpha = alpha
        correct = int((gda.logits(random_clip, data.val).argmax(dim=-1) == data.val_labels).sum())
        if best is None or correct > best[0]:
            best = (correct, alpha)
    assert chosen["gda_alpha"] == best[1] and chosen["gda_val_acc"] == pytest.approx(100.0 * best[0] / 9)
    with pytest.raises(Exception, match="val split is empty"):
        _learner(random_clip).fit_features(random_clip, FitFeatures(data.train, data.train_labels,
                                                                    torch.empty(0, 64), torch.empty(0).long()))


def test_classes_without_training_features_get_the_synthesised_classifier(random_clip) -> None:
    k, copies = 5, 16
    data = _fit_data(random_clip.embed_dim)
    gda = _learner(random_clip, search=False, novel_k=k, novel_text_copies=copies)
    gda.fit_features(random_clip, data)
    novel = ["purple heart", "orange cross"]
    gda.set_classnames(random_clip, novel)
    assert gda.classifier_source == "synthesised" and gda.weight.shape == (2, random_clip.embed_dim)
    train = gda.train_features.numpy()
    text = gda.text_features.double().numpy()
    dim = train.shape[1]
    means, precisions = [], []
    for t in text:
        near = train[np.argsort(-(train @ t))[:k]]
        means.append((near.sum(axis=0) + copies * t) / (k + copies))
        cov = (near - t).T @ (near - t) / (k - 1)
        precisions.append(dim * np.linalg.pinv((k - 1) * cov + np.trace(cov) * np.eye(dim)))
    w_np, b_np = _numpy_classifier(np.stack(means), np.mean(precisions, axis=0))
    np.testing.assert_allclose(gda.weight.numpy(), w_np, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(gda.bias.numpy(), b_np, rtol=1e-6, atol=1e-6)
    gda.set_classnames(random_clip, NAMES)  # back to the fitted list: the fitted classifier again
    assert gda.classifier_source == "fitted"


def test_a_saved_fit_reloads_into_a_fresh_learner(random_clip) -> None:
    gda = _learner(random_clip)
    gda.fit_features(random_clip, _fit_data(random_clip.embed_dim))
    fresh = _learner(random_clip)
    fresh.load_state_dict(gda.state_dict())
    test = F.normalize(torch.randn(4, random_clip.embed_dim), dim=-1)
    assert fresh.alpha == gda.alpha and torch.equal(fresh.logits(random_clip, test), gda.logits(random_clip, test))


@pytest.mark.parametrize(("override", "key"), [("method.learner.precision=lw", "precision"),
                                             ("method.learner.novel_k=1", "novel_k")])
def test_bad_learner_values_are_refused_at_compose_time(override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=f"method.learner.{key}"):
        compose(["method=gda", override])


def test_gda_runs_base_to_novel_on_the_toy_world_and_writes_a_record(tmp_path) -> None:
    record = run(compose_cfg([*tiny_overrides(tmp_path), "method=gda", "run_name=gda"]))
    assert record["status"] == "complete"
    assert top1_metrics(record["metrics"]) == {"base_acc", "novel_acc", "hm"}
    assert record["fit"]["gda_alpha"] in (*REFERENCE_ALPHAS, REFERENCE_ALPHA) and "gda_alpha" not in record["summary"]
    assert any("gda_alpha=" in note for note in record["notes"])
    saved = json.loads((tmp_path / "outputs" / "runs" / "gda" / "metrics.json").read_text())
    assert saved["metrics"] == record["metrics"]
