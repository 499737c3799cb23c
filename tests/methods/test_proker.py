"""ProKeR (proximal kernel ridge regression around zero-shot CLIP, CVPR 2025): the closed form against numpy, the
search against values the reference code produced, classes without training features, no validation read when the
search is off, and a toy-world run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from promptlab.config import compose
from promptlab.errors import ConfigError
from promptlab.methods import FitFeatures
from promptlab.methods.proker import (
    ProKeR,
    dual_coefficients,
    linspace_grid,
    search_beta_lambda,
    sphere_rbf,
)
from promptlab.train import run
from tests.methods.cached_features import Untouchable, gaussian_classes
from tests.runs import compose_cfg, tiny_overrides, top1_metrics

NAMES = ["red circle", "blue square", "green star"]
TEMPLATES = ["a photo of a {}."]


def _numpy_proker(x: np.ndarray, y: np.ndarray, text: np.ndarray, test: np.ndarray, beta: float,
                  lmbda: float) -> np.ndarray:
    """logits = test T^T + K(test, S) (K(S, S) / lambda + I)^-1 (Y - S T^T), K = exp(-beta (1 - x . y))."""
    kernel = lambda a, b: np.exp(-beta * (1.0 - a @ b.T))  # noqa: E731
    residual = np.eye(text.shape[0])[y] - x @ text.T
    coef = np.linalg.solve(kernel(x, x) / lmbda + np.eye(len(x)), residual)
    return test @ text.T + kernel(test, x) @ coef


def test_the_closed_form_is_kernel_ridge_regression_of_the_zero_shot_residual() -> None:
    (x, y), _, (xt, _), text = gaussian_classes(seed=1)
    xs, ts = torch.from_numpy(x), torch.from_numpy(text)
    residual = F.one_hot(torch.from_numpy(y), 3).double() - xs @ ts.t()
    coef = dual_coefficients(xs, residual, 1.3, 0.2)
    got = torch.from_numpy(xt) @ ts.t() + sphere_rbf(torch.from_numpy(xt), xs, 1.3) @ coef
    np.testing.assert_allclose(got.numpy(), _numpy_proker(x, y, text, xt, 1.3, 0.2), rtol=1e-10, atol=1e-12)
    # The kernel is a Gaussian of the Euclidean distance on the sphere: exp(-beta/2 ||x - y||^2).
    dist2 = ((x[:, None] - x[None]) ** 2).sum(-1)
    np.testing.assert_allclose(sphere_rbf(xs, xs, 1.3).numpy(), np.exp(-0.65 * dist2), rtol=1e-10)
    # lambda -> 0: the proximal term wins and the classifier is zero-shot CLIP.
    tiny = dual_coefficients(xs, residual, 1.3, 1e-12)
    assert float(tiny.abs().max()) < 1e-9


def test_the_grids_are_torch_linspace_in_the_reference_float32() -> None:
    assert linspace_grid([0.001, 1, 10])[-2] == 0.8889999985694885  # float32, as the reference's torch.linspace
    assert linspace_grid([0.5, 3, 20])[0] == 0.5 and len(linspace_grid([0.5, 3, 20])) == 20


def test_the_search_keeps_the_first_strict_maximum_and_the_start_when_nothing_is_right() -> None:
    (x, y), (xv, yv), _, text = gaussian_classes(seed=2, scale=1.0)
    xs, ts, vs, vl = torch.from_numpy(x), torch.from_numpy(text), torch.from_numpy(xv), torch.from_numpy(yv)
    residual = F.one_hot(torch.from_numpy(y), 3).double() - xs @ ts.t()
    betas, lambdas = [0.5, 1.0, 2.0], [0.01, 0.1, 1.0]
    brute = None
    for beta in betas:
        for lmbda in lambdas:
            pred = _numpy_proker(x, y, text, xv, beta, lmbda).argmax(axis=1)
            correct = int((pred == yv).sum())
            if brute is None or correct > brute[2]:
                brute = (beta, lmbda, correct)
    assert search_beta_lambda(xs, residual, vs, vs @ ts.t(), vl, betas, lambdas, (9.0, 9.0)) == brute
    never = torch.full_like(vl, 7)  # a label no class has
    assert search_beta_lambda(xs, residual, vs, vs @ ts.t(), never, betas, lambdas, (9.0, 8.0)) == (9.0, 8.0, 0)


# Produced by the reference: ybendou's last commit of ProKeR (f2ecb3d2a0d7e0993f977e550286b34f06015edb, as held by
# the fork github.com/omarnust/BReg-Adapter), trainers/proker.py::ProKeR(vecs, labels, val, val_labels, test,
# clip_weights [D, C], dataset, shots=4, seed=1, hp_selection="tip-adapter") run on CPU in float32 on
# `gaussian_classes(seed=2, scale=1.0)` with the caltech101 grids (beta [0.5, 3, 20], lmbda [0.001, 1, 10]);
# utils.cls_acc
# rewritten with .item() (its float() of a [1] array fails on numpy 2). The chosen values and its test logits.
REFERENCE_BETA, REFERENCE_LAMBDA = 2.21052622795105, 0.8889999985694885
REFERENCE_TEST_LOGITS = [
    [0.568609, 0.068014, 0.212695], [0.598699, 0.624571, -0.29899], [0.74334, 0.043676, 0.304242],
    [0.675548, 0.245236, -0.189134], [0.720332, 0.317827, 0.130707], [0.16327, 1.06169, -0.269234],
    [0.100591, 0.727998, -0.242571], [0.060263, 0.740891, -0.598342], [0.449042, 0.65239, -0.40313],
    [-0.255664, 0.735936, -0.278914], [0.112265, -0.146461, 0.096669], [0.442024, 0.074541, 0.153382],
    [0.336725, -0.251393, 0.408239], [0.022893, -0.403526, 0.665007], [-0.033244, -0.359439, 0.569075]]


def test_search_and_logits_reproduce_the_reference_code() -> None:
    (x, y), (xv, yv), (xt, _), text = gaussian_classes(seed=2, scale=1.0)
    xs, ts, vs = torch.from_numpy(x), torch.from_numpy(text), torch.from_numpy(xv)
    residual = F.one_hot(torch.from_numpy(y), 3).double() - xs @ ts.t()
    beta, lmbda, correct = search_beta_lambda(xs, residual, vs, vs @ ts.t(), torch.from_numpy(yv),
                                              linspace_grid([0.5, 3, 20]), linspace_grid([0.001, 1, 10]), (1.7, 0.1))
    assert (beta, lmbda) == (REFERENCE_BETA, REFERENCE_LAMBDA) and correct == 9  # the reference printed 75.00%
    test = torch.from_numpy(xt)
    logits = test @ ts.t() + sphere_rbf(test, xs, beta) @ dual_coefficients(xs, residual, beta, lmbda)
    np.testing.assert_allclose(logits.numpy(), REFERENCE_TEST_LOGITS, atol=2e-5)


def _learner(clip, **kwargs) -> ProKeR:
    learner = ProKeR(clip, TEMPLATES, beta_grid=[0.5, 3, 6], lambda_grid=[0.01, 1, 5], **kwargs)
    learner.set_classnames(clip, NAMES)
    return learner


def _fit_data(dim: int, seed: int = 3) -> FitFeatures:
    (x, y), (xv, yv), _, _ = gaussian_classes(seed=seed, dim=dim, scale=0.3)
    return FitFeatures(train=torch.from_numpy(x).float(), train_labels=torch.from_numpy(y),
                       val=torch.from_numpy(xv).float(), val_labels=torch.from_numpy(yv))


def test_the_learner_scores_the_closed_form_and_records_where_its_values_came_from(random_clip) -> None:
    data = _fit_data(random_clip.embed_dim)
    learner = _learner(random_clip)
    chosen = learner.fit_features(random_clip, data)
    assert learner.tuned_values() == {"beta": "few-shot val", "lambda": "few-shot val"} and "proker_val_acc" in chosen
    assert chosen["proker_beta"] in linspace_grid([0.5, 3, 6])
    assert chosen["proker_lambda"] in linspace_grid([0.01, 1, 5])
    assert learner.fitted_values()["proker_beta"] == chosen["proker_beta"] and "proker_beta" not in learner.summary()
    x = F.normalize(data.train.double(), dim=-1).numpy()
    test = F.normalize(torch.randn(4, random_clip.embed_dim, generator=torch.Generator().manual_seed(5)), dim=-1)
    expected = _numpy_proker(x, data.train_labels.numpy(), learner.text_features.numpy(), test.double().numpy(),
                             learner.beta, learner.lmbda)
    np.testing.assert_allclose(learner.logits(random_clip, test).double().numpy(), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ConfigError, match="val split is empty"):
        _learner(random_clip).fit_features(random_clip, FitFeatures(data.train, data.train_labels,
                                                                    torch.empty(0, 64), torch.empty(0).long()))


def test_without_the_search_no_validation_data_is_read(random_clip) -> None:
    data = _fit_data(random_clip.embed_dim)
    blind = FitFeatures(train=data.train, train_labels=data.train_labels, val=Untouchable(), val_labels=Untouchable())
    learner = _learner(random_clip, search=False, beta=2.0, lmbda=0.3)
    chosen = learner.fit_features(random_clip, blind)
    assert chosen == {"proker_beta": 2.0, "proker_lambda": 0.3} and learner.tuned_values() == {}
    assert any("no validation data read" in note for note in learner.notes())


def test_classes_without_training_features_are_scored_by_zero_shot_alone(random_clip) -> None:
    learner = _learner(random_clip)
    learner.fit_features(random_clip, _fit_data(random_clip.embed_dim))
    test = F.normalize(torch.randn(6, random_clip.embed_dim, generator=torch.Generator().manual_seed(6)), dim=-1)
    fitted = learner.logits(random_clip, test)
    learner.set_classnames(random_clip, ["purple heart", "orange cross"])
    assert torch.allclose(learner.logits(random_clip, test).double(), test.double() @ learner.text_features.t())
    learner.set_classnames(random_clip, [NAMES[2], "purple heart", NAMES[0]])  # columns follow the names
    mixed = learner.logits(random_clip, test)
    assert torch.allclose(mixed[:, 0], fitted[:, 2]) and torch.allclose(mixed[:, 2], fitted[:, 0])
    learner.set_classnames(random_clip, NAMES)
    fresh = _learner(random_clip)
    fresh.load_state_dict(learner.state_dict())
    assert torch.equal(fresh.logits(random_clip, test), learner.logits(random_clip, test))


def test_cached_views_are_each_a_sample(random_clip) -> None:
    data = _fit_data(random_clip.embed_dim)
    views = FitFeatures(train=torch.stack([data.train, data.train.flip(0)]), train_labels=data.train_labels,
                        val=data.val, val_labels=data.val_labels)
    learner = _learner(random_clip, search=False)
    learner.fit_features(random_clip, views)
    assert learner.support.shape[0] == 2 * data.train.shape[0]


@pytest.mark.parametrize(("override", "key"), [("method.learner.lmbda=0", "lmbda"),
                                             ("method.learner.beta_grid=[1,2]", "beta_grid")])
def test_bad_learner_values_are_refused_at_compose_time(override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=f"method.learner.{key}"):
        compose(["method=proker", override])


def test_the_per_dataset_grids_are_the_reference_configs() -> None:
    cfg = compose(["method=proker", "dataset=dtd"])
    assert list(cfg.method.learner.beta_grid) == [0.1, 10, 20]
    assert list(cfg.method.learner.lambda_grid) == [0.001, 10, 100]


def test_proker_runs_base_to_novel_on_the_toy_world_and_writes_a_record(tmp_path) -> None:
    record = run(compose_cfg([*tiny_overrides(tmp_path), "method=proker", "run_name=proker"]))
    assert record["status"] == "complete"
    assert top1_metrics(record["metrics"]) == {"base_acc", "novel_acc", "hm"}
    summary = record["summary"]
    assert summary["tuned_on"] == "few-shot val" and record["fit"]["proker_lambda"] > 0
    assert record["tuning"] == {"beta": "few-shot val", "lambda": "few-shot val"}
    assert any("ProKeR: beta=" in note for note in record["notes"])
    saved = json.loads((tmp_path / "outputs" / "runs" / "proker" / "metrics.json").read_text())
    assert saved["metrics"] == record["metrics"]
