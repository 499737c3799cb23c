"""Few-shot baselines on frozen CLIP features: linear probe, Tip-Adapter, Tip-Adapter-F."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from promptlab.engine.datamodule import PromptDataModule
from promptlab.methods import FitFeatures, LinearProbe, TipAdapter, TipAdapterF, ZeroShotPrompts
from promptlab.methods.linear_probe import REFERENCE_GRID, search_c
from promptlab.methods.tip_adapter import search_grid
from promptlab.results.table import build_table
from promptlab.train import run
from tests.dataset_fixtures import build_fixture
from tests.runs import compose_cfg, random_checkpoint, run_cli, tiny_overrides, top1_metrics, workspace_overrides

NAMES = ["red circle", "blue square", "green star", "yellow moon"]
TEMPLATES = ["a photo of a {}."]


def _clusters(n_per_class: int, dim: int = 64, seed: int = 0, noise: float = 0.05) -> tuple[torch.Tensor, ...]:
    """Normalised features around one random direction per class (linearly separable)."""
    generator = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(len(NAMES), dim, generator=torch.Generator().manual_seed(123)), dim=-1)
    labels = torch.arange(len(NAMES)).repeat_interleave(n_per_class)
    features = centres[labels] + noise * torch.randn(labels.shape[0], dim, generator=generator)
    return F.normalize(features, dim=-1), labels


def _fit_data(seed: int = 0) -> FitFeatures:
    train, train_labels = _clusters(8, seed=seed)
    val, val_labels = _clusters(2, seed=seed + 1)
    return FitFeatures(train=train, train_labels=train_labels, val=val, val_labels=val_labels)


# --------------------------------------------------------------------------- linear probe
def test_the_c_search_follows_the_reference_rule() -> None:
    # Every C scores the same: the grid keeps its first entry (1e6), each bisection tie keeps the left end.
    chosen, trace = search_c(lambda c: 0.5)
    assert [c for c, _ in trace[:7]] == list(REFERENCE_GRID)
    assert len(trace) == 7 + 2 * 8 and chosen == pytest.approx(1e5)
    # A single peak at 10^2.3: the grid picks 1e2, eight bisection steps close in on the peak.
    chosen, _ = search_c(lambda c: -abs(math.log10(c) - 2.3))
    assert abs(math.log10(chosen) - 2.3) < 0.05


def test_linear_probe_recovers_a_separable_problem(random_clip) -> None:
    probe = LinearProbe(random_clip)
    probe.set_classnames(random_clip, NAMES)
    chosen = probe.fit_features(random_clip, _fit_data())
    assert chosen["linear_probe_c"] > 0 and chosen["linear_probe_val_acc"] == 100.0
    test, labels = _clusters(10, seed=7)
    assert torch.equal(probe.logits(random_clip, test).argmax(dim=-1), labels)
    with pytest.raises(Exception, match="cannot score other classes"):
        probe.set_classnames(random_clip, NAMES[:2])


def test_linear_probe_can_fit_unnormalised_features(random_clip) -> None:
    data = _fit_data()
    scaled = FitFeatures(train=3 * data.train, train_labels=data.train_labels, val=3 * data.val,
                         val_labels=data.val_labels)
    probe = LinearProbe(random_clip, normalize=False)
    assert probe.normalize_features is False  # the data module encodes un-normalised features for it
    probe.set_classnames(random_clip, NAMES)
    probe.fit_features(random_clip, scaled)
    test, labels = _clusters(10, seed=7)
    assert torch.equal(probe.logits(random_clip, 3 * test).argmax(dim=-1), labels)


# --------------------------------------------------------------------------- Tip-Adapter
def _tip(clip, cls=TipAdapter, **kwargs):
    tip = cls(clip, TEMPLATES, **kwargs)
    tip.set_classnames(clip, NAMES)
    return tip


def test_the_search_grid_is_the_reference_grid() -> None:
    grid = search_grid(7.0, 200)
    assert len(grid) == 200 and grid[0] == pytest.approx(0.1) and grid[-1] == pytest.approx(0.1 + 199 * 6.9 / 200)


def test_tip_adapter_without_its_cache_term_is_zero_shot_exactly(random_clip) -> None:
    zeroshot = ZeroShotPrompts(random_clip, TEMPLATES)
    zeroshot.set_classnames(random_clip, NAMES)
    tip = _tip(random_clip, search=False)
    tip.fit_features(random_clip, _fit_data())
    assert torch.equal(tip.text_features, zeroshot.text_features)  # W is the zero-shot classifier
    test, _ = _clusters(10, seed=5)
    expected = 100.0 * test @ zeroshot.text_features.t()
    tip.alpha = 0.0
    assert torch.equal(tip.logits(random_clip, test), expected)
    tip.alpha, tip.beta = 1.0, 1e6  # beta -> large: exp(-beta (1 - affinity)) vanishes off the keys
    assert torch.equal(tip.logits(random_clip, test), expected)


def test_tip_adapter_searches_alpha_beta_on_val_and_uses_its_cache(random_clip) -> None:
    tip = _tip(random_clip)
    chosen = tip.fit_features(random_clip, _fit_data())
    assert chosen["tip_beta"] in search_grid(7.0, 200) and chosen["tip_alpha"] in search_grid(3.0, 20)
    assert torch.equal(tip.cache_values, torch.eye(len(NAMES)).repeat_interleave(8, dim=0))
    # The first (beta outer, alpha inner) grid point of best val accuracy, by brute force on a small grid.
    small = _tip(random_clip, search_scale=[7.0, 3.0], search_step=[10, 5])
    data = _fit_data()
    chosen = small.fit_features(random_clip, data)
    best = None
    for beta in search_grid(7.0, 10):
        for alpha in search_grid(3.0, 5):
            small.alpha, small.beta = alpha, beta
            correct = int((small.logits(random_clip, data.val).argmax(dim=-1) == data.val_labels).sum())
            if best is None or correct > best[0]:
                best = (correct, alpha, beta)
    assert (chosen["tip_alpha"], chosen["tip_beta"]) == best[1:]


def test_tip_adapter_scores_classes_without_keys_by_zero_shot_alone(random_clip) -> None:
    tip = _tip(random_clip)
    tip.fit_features(random_clip, _fit_data())
    novel = ["purple heart", "orange cross", "blue square"]  # "blue square" has keys, the others none
    tip.set_classnames(random_clip, novel)
    assert tip.cache_values[:, :2].abs().sum() == 0 and tip.cache_values[:, 2].sum() == 8


def test_tip_adapter_f_keys_start_as_the_cache_and_train(random_clip) -> None:
    data = _fit_data()
    plain, tuned = _tip(random_clip, search=False), _tip(random_clip, cls=TipAdapterF, search=False)
    plain.fit_features(random_clip, data)
    tuned.fit_features(random_clip, data)
    assert torch.equal(tuned.adapter.weight, plain.cache_keys)
    assert [n for n, p in tuned.named_parameters() if p.requires_grad] == ["adapter.weight"]
    test, _ = _clusters(5, seed=3)
    assert torch.allclose(tuned.logits(random_clip, test), plain.logits(random_clip, test))


# --------------------------------------------------------------------------- runs
@pytest.mark.parametrize("method", ["linear_probe", "tip_adapter"])
def test_the_fit_never_reads_test_features(method: str, tmp_path, monkeypatch) -> None:
    cls = LinearProbe if method == "linear_probe" else TipAdapter
    fitted = {"done": False}
    original_fit, original_eval = cls.fit_features, PromptDataModule.eval_features

    def spy_fit(self, clip, data):
        out = original_fit(self, clip, data)
        fitted["done"] = True
        return out

    def guarded_eval(self, eval_set):
        if not fitted["done"]:
            raise AssertionError(f"test features of {eval_set.name} requested before the fit ended")
        return original_eval(self, eval_set)

    monkeypatch.setattr(cls, "fit_features", spy_fit)
    monkeypatch.setattr(PromptDataModule, "eval_features", guarded_eval)
    record = run(compose_cfg([*tiny_overrides(tmp_path), f"method={method}", "run_name=spy"]))
    assert fitted["done"] and record["status"] == "complete"


def test_linear_probe_base_to_novel_records_novel_as_not_applicable(tmp_path) -> None:
    record = run(compose_cfg([*tiny_overrides(tmp_path), "method=linear_probe", "run_name=lp"]))
    assert set(record["metrics"]) == {"base_acc", "base_top5_acc", "base_mean_class_acc"}  # nothing of novel
    novel = next(e for e in record["evaluations"] if e["name"] == "novel")
    assert "cannot score other classes" in novel["not_applicable"] and "acc" not in novel
    assert any("linear_probe_c=" in note for note in record["notes"])
    table = build_table([record], "base2novel")
    row = table.find(method="linear_probe")
    assert row.cells["base"] is not None and row.cells["novel"] is None and row.cells["hm"] is None
    base, novel_text, hm = table.text_rows()[0][2:5]
    assert novel_text == hm == "–" and base != "–"
    assert any("Novel and HM not applicable" in note for note in table.notes)
    assert "Novel and HM not applicable" in table.to_markdown()


def test_tip_adapter_novel_accuracy_is_zero_shot_accuracy(tmp_path) -> None:
    records = {m: run(compose_cfg([*tiny_overrides(tmp_path), f"method={m}", f"run_name={m}"]))
               for m in ("zeroshot", "tip_adapter", "tip_adapter_f")}
    novel = {m: next(e for e in r["evaluations"] if e["name"] == "novel") for m, r in records.items()}
    assert novel["tip_adapter"]["n_correct"] == novel["zeroshot"]["n_correct"]
    assert novel["tip_adapter_f"]["n_correct"] == novel["zeroshot"]["n_correct"]
    assert records["tip_adapter_f"]["summary"]["epoch_selected_on"] == "val"
    assert top1_metrics(records["tip_adapter"]["metrics"]) == {"base_acc", "novel_acc", "hm"}


def test_tip_adapter_f_can_select_its_epoch_on_test_and_says_so(tmp_path) -> None:
    record = run(compose_cfg([*tiny_overrides(tmp_path), "method=tip_adapter_f", "protocol=fewshot",
                              "method.optim.epochs=2", "method.learner.select_on_test=true", "run_name=t"]))
    assert record["summary"]["epoch_selected_on"] == "test"
    assert any("EPOCH SELECTED ON THE TEST SET" in note for note in record["notes"])
    # Where each tuned value came from, as data: the epoch on test, alpha and beta on the few-shot val split.
    assert record["tuning"] == {"alpha": "few-shot val", "beta": "few-shot val", "epoch": "test"}
    assert record["summary"]["tuned_on"] == "test"


@pytest.fixture(scope="module")
def layout_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("baselines_real")
    for name in ("oxford_pets", "dtd"):
        build_fixture(name, root / "data", counts={"train": 3, "val": 2, "test": 3})
    return root


def _layout(root: Path, run_name: str) -> list[str]:
    return [*workspace_overrides(root), f"model.weights_file={random_checkpoint(root / 'clip.pt')}",
            f"paths.data_root={root / 'data'}", "shots=2", "dataset=oxford_pets", "dataset.num_classes=5",
            f"run_name={run_name}"]


@pytest.mark.parametrize("method", ["linear_probe", "tip_adapter", "tip_adapter_f"])
def test_each_baseline_runs_on_a_coop_layout_tree(method: str, layout_root: Path) -> None:
    record = run(compose_cfg([*_layout(layout_root, method), f"method={method}", "protocol=fewshot",
                              "method.optim.epochs=2"]))
    assert top1_metrics(record["metrics"]) == {"acc"} and record["evaluations"][0]["n_images"] == 5 * 3


def test_linear_probe_cross_dataset_targets_are_not_applicable(layout_root: Path) -> None:
    record = run(compose_cfg([*_layout(layout_root, "lp_xd"), "method=linear_probe", "protocol=cross_dataset",
                              *[f"~protocol.targets.{n}" for n in ("caltech101", "oxford_pets", "stanford_cars",
                                                                   "oxford_flowers", "food101", "fgvc_aircraft",
                                                                   "sun397", "eurosat", "ucf101")],
                              "protocol.targets.dtd.num_classes=5"]))
    assert top1_metrics(record["metrics"]) == {"oxford_pets_acc"}
    assert [e.get("not_applicable") is not None for e in record["evaluations"]] == [False, True]
    table = build_table([record], "cross_dataset")
    assert list(table.value_columns) == ["source"]
    assert any("dtd not applicable" in note for note in table.notes)


def test_the_cli_runs_the_linear_probe_on_a_coop_layout_tree(layout_root: Path) -> None:
    out = layout_root / "cli_run"
    proc = run_cli([*_layout(layout_root, "cli"), "method=linear_probe", f"hydra.run.dir={out}"], cwd=layout_root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "n/a" in proc.stdout and (out / "metrics.json").is_file()


def test_a_saved_tip_adapter_f_reloads_and_reproduces_its_base_accuracy(tmp_path) -> None:
    import promptlab

    overrides = [*tiny_overrides(tmp_path), "method=tip_adapter_f", "method.optim.epochs=2", "run_name=tipf"]
    record = promptlab.run(overrides)
    parts = promptlab.build_run(overrides)
    clf = promptlab.load_prompt(tmp_path / "outputs" / "runs" / "tipf" / "prompt_learner.pt")
    assert clf.learner.adapter.weight.shape[0] == len(parts.data.train_items)
    assert any(f"tip_alpha={clf.learner.alpha:.6g}" in note for note in record["notes"])
    base = next(e for e in parts.data.eval_sets if e.name == "base")
    predicted = clf.classify([item.impath for item in base.items])
    correct = sum(p == item.classname for p, item in zip(predicted, base.items, strict=True))
    assert correct == next(e for e in record["evaluations"] if e["name"] == "base")["n_correct"]
