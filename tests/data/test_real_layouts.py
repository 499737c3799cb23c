"""The real dataset configs run end to end on fixture trees in the exact CoOp layout (tiny images)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from promptlab.train import run
from tests.dataset_fixtures import build_fixture
from tests.runs import compose_cfg, random_checkpoint, run_cli, top1_metrics, workspace_overrides


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("real")


def _common(root: Path) -> list[str]:
    return [*workspace_overrides(root), f"model.weights_file={random_checkpoint(root / 'clip.pt')}",
            f"paths.data_root={root / 'data'}", "method.optim.epochs=1", "shots=2"]


def test_oxford_pets_command_runs_on_a_coop_layout_data_root(root):
    """`python -m promptlab.train dataset=oxford_pets paths.data_root=/data method=coop`, on a fixture tree."""
    expected = build_fixture("oxford_pets", root / "data", counts={"train": 3, "val": 2, "test": 3})
    out = root / "pets_run"
    n_classes = len(expected.classnames)
    proc = run_cli(["dataset=oxford_pets", "method=coop", *_common(root), f"dataset.num_classes={n_classes}",
                    f"hydra.run.dir={out}"], cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((out / "metrics.json").read_text())
    evals = {e["name"]: e for e in record["evaluations"]}
    assert (evals["base"]["n_classes"], evals["novel"]["n_classes"]) == (3, 2)  # ceil(5/2) base
    assert evals["base"]["n_images"] == 3 * 3 and evals["novel"]["n_images"] == 2 * 3
    selection = root / "data" / "oxford_pets" / "split_fewshot" / "shot_2-seed_1.json"
    assert selection.is_file()  # the few-shot selection, saved next to the data as the reference does


def test_domain_generalization_imagenet_to_its_variants(root):
    counts = {"train": 3, "val": 1, "test": 2}
    sizes = {name: len(build_fixture(name, root / "data", counts).classnames)
             for name in ("imagenet", "imagenet_v2", "imagenet_sketch", "imagenet_a", "imagenet_r")}
    overrides = [f"protocol.targets.{n}.num_classes={k}" for n, k in sizes.items() if n != "imagenet"]
    record = run(compose_cfg([*_common(root), "dataset=imagenet", "protocol=domain_generalization", "method=coop",
                              f"dataset.num_classes={sizes['imagenet']}", *overrides, "run_name=dg"]))
    names = [e["name"] for e in record["evaluations"]]
    assert names == ["imagenet", "imagenet_v2", "imagenet_sketch", "imagenet_a", "imagenet_r"]
    assert [e["n_classes"] for e in record["evaluations"]] == [6, 6, 6, 3, 4]  # A and R: 200-class subsets
    assert top1_metrics(record["metrics"]) == {f"{n}_acc" for n in names} | {"target_mean_acc"}


def test_cross_dataset_from_imagenet_to_other_datasets(root):
    for name in ("imagenet", "oxford_pets", "dtd"):
        build_fixture(name, root / "data", {"train": 3, "val": 1, "test": 2})
    dropped = [f"~protocol.targets.{n}" for n in ("caltech101", "stanford_cars", "oxford_flowers", "food101",
                                                    "fgvc_aircraft", "sun397", "eurosat", "ucf101")]
    record = run(compose_cfg([*_common(root), "dataset=imagenet", "protocol=cross_dataset", "method=cocoop",
                              "dataset.num_classes=6", "protocol.targets.oxford_pets.num_classes=5",
                              "protocol.targets.dtd.num_classes=5", *dropped, "run_name=xd"]))
    assert [e["name"] for e in record["evaluations"]] == ["imagenet", "oxford_pets", "dtd"]
    assert record["metrics"]["target_mean_acc"] == pytest.approx(
        (record["metrics"]["oxford_pets_acc"] + record["metrics"]["dtd_acc"]) / 2)
