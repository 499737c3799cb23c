"""The public Python API: compose/run from overrides, a saved prompt classifies images, a sweep reads into tables."""

from __future__ import annotations

import pytest

import promptlab
from promptlab.errors import ConfigError
from tests.runs import tiny_overrides


def test_build_run_checks_before_loading() -> None:
    with pytest.raises(ConfigError, match="method.loader.batch_size"):
        promptlab.build_run(["method.loader.batch_size=0"])


def test_run_then_load_prompt_and_classify(tmp_path) -> None:
    overrides = [*tiny_overrides(tmp_path), "method=coop", "method.optim.epochs=2", "run_name=api"]
    record = promptlab.run(overrides)
    parts = promptlab.build_run(overrides)
    run_dir = tmp_path / "outputs" / "runs" / "api"
    clf = promptlab.load_prompt(run_dir / "prompt_learner.pt")
    assert clf.classnames == parts.data.train_classnames

    # The loaded prompt reproduces the run's base accuracy on the same test images, image files in.
    base = next(e for e in parts.data.eval_sets if e.name == "base")
    predicted = clf.classify([item.impath for item in base.items])
    correct = sum(p == item.classname for p, item in zip(predicted, base.items, strict=True))
    evaluation = next(e for e in record["evaluations"] if e["name"] == "base")
    assert correct == evaluation["n_correct"]

    clf.set_classnames(["red circle", "blue square"])
    assert set(clf.classify([base.items[0].impath])) <= {"red circle", "blue square"}


def test_read_sweep_from_the_package(tmp_path) -> None:
    promptlab.run([*tiny_overrides(tmp_path), "run_name=zs"])
    tables = promptlab.read_sweep(tmp_path / "outputs" / "runs")
    table = tables["base2novel"]
    assert "CLIP" in table.to_markdown()
    assert table.to_records()[0]["hm_mean"] > 0
