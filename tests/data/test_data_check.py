"""`promptlab-data check` on a good and on a broken fixture tree: table, problems, exit status."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

import promptlab.data.image_check as image_check
from promptlab.data.check import check_dataset
from promptlab.data.cli import main
from promptlab.data.fewshot import fewshot_splits
from promptlab.data.readers import read_dataset
from tests.dataset_fixtures import build_fixture, dataset_config

COUNTS = {"train": 4, "val": 2, "test": 3}


@pytest.fixture(autouse=True)
def fresh_verdicts() -> None:
    image_check._SEEN.clear()


def check(tmp_path: Path, capsys, *extra: str) -> tuple[int, str]:
    code = main(["check", "dtd", "--root", str(tmp_path / "data"), "--cache-dir", str(tmp_path / "cache"),
                 "dataset.num_classes=5", *extra])
    return code, capsys.readouterr().out


def test_check_passes_a_good_tree(tmp_path: Path, capsys) -> None:
    build_fixture("dtd", tmp_path / "data", counts=COUNTS)
    code, out = check(tmp_path, capsys)
    assert code == 0, out
    assert "DTD: ok, 5 classes (config: 5)" in out
    for split, n in COUNTS.items():
        assert f"│ {split:<5} │ {5 * n:>6} │       5 │       0 │      0 │           0 │" in out
    assert "decode check: 45 image(s) decoded" in out
    # The verdicts are kept where training looks for them: a second check decodes nothing.
    image_check._SEEN.clear()
    code, out = check(tmp_path, capsys)
    assert code == 0 and "0 image(s) decoded" in out and "45 verdict(s) reused" in out


def test_check_reports_every_kind_of_broken_image_and_fails(tmp_path: Path, capsys) -> None:
    expected = build_fixture("dtd", tmp_path / "data", counts=COUNTS)
    folder = expected.dataset_dir
    split_file = folder / "split_zhou_DescribableTextures.json"
    data = json.loads(split_file.read_text())
    data["train"].append(["../../../etc/hostname", 0, "banded"])
    split_file.write_text(json.dumps(data))
    absent = folder / "images" / data["val"][0][0]
    absent.unlink()
    cut = folder / "images" / data["test"][1][0]
    Image.effect_noise((64, 64), 100).convert("RGB").save(cut, format="JPEG")
    cut.write_bytes(cut.read_bytes()[:500])

    code, out = check(tmp_path, capsys)
    assert code == 1
    assert "DTD: 3 problem(s)" in out
    assert "train: 1 of 21 listed image(s) are bad: 1 outside the dataset folder (never opened)" in out
    assert "val: 1 of 10 listed image(s) are bad: 1 absent, e.g." in out and absent.name in out
    assert "test: 1 of 15 listed image(s) are bad: 1 not decodable" in out and f"{cut.name}: unreadable" in out

    # The cheap form (what every training run does) finds the first two, not the truncated file.
    code, out = check(tmp_path, capsys, "--no-decode")
    assert code == 1 and "2 problem(s)" in out and "not checked" in out and "not decodable" not in out


def test_check_validates_saved_selections(tmp_path: Path, capsys) -> None:
    expected = build_fixture("dtd", tmp_path / "data", counts=COUNTS)
    cfg = dataset_config("dtd", num_classes=5)
    splits = read_dataset(cfg, tmp_path / "data")
    fewshot_splits(splits, shots=2, seed=1, cache_dir=None)
    fewshot_splits(splits, shots=1, seed=3, cache_dir=None)
    selections = expected.dataset_dir / "split_fewshot"
    (selections / "shot_16-seed_1.pkl").write_bytes(b"reference pickle")
    code, out = check(tmp_path, capsys)
    assert code == 0 and "few-shot selections" in out and out.count(" ok ") >= 2 and "not used" in out

    # An image of one selection disappears: that selection is invalid and named; the dataset too is broken.
    other = {rel for rel, _ in json.loads((selections / "shot_2-seed_1.json").read_text())["train"]}
    chosen = next(rel for rel, _ in json.loads((selections / "shot_1-seed_3.json").read_text())["train"]
                  if rel not in other)
    (expected.dataset_dir / chosen).unlink()
    report = check_dataset(cfg, tmp_path / "data", decode=False)
    bad = {path.name: problem for path, problem in report.selections if problem}
    assert list(bad) == ["shot_1-seed_3.json"] and "is missing on disk" in bad["shot_1-seed_3.json"]
    assert not report.ok


def test_check_names_a_wrong_class_count_and_a_missing_folder(tmp_path: Path, capsys) -> None:
    build_fixture("dtd", tmp_path / "data", counts=COUNTS)
    code = main(["check", "dtd", "--root", str(tmp_path / "data"), "--no-decode"])  # the config says 47
    out = capsys.readouterr().out
    assert code == 1 and "has 5 classes, DTD has 47" in " ".join(out.split())

    shutil.rmtree(tmp_path / "data" / "dtd")
    code, out = check(tmp_path, capsys)
    assert code == 1 and "dataset folder not found: expected" in " ".join(out.split())


def test_check_cli_usage_errors_exit_2(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["check"])
    assert info.value.code == 2
