"""Every data problem a user can cause fails (or warns) with a message that says what and where."""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import pytest
from PIL import Image

from promptlab.data.base_novel import subsample_classes
from promptlab.data.errors import DatasetError
from promptlab.data.fewshot import fewshot_splits
from promptlab.data.image_dataset import ImageDataset
from promptlab.data.readers import read_dataset
from promptlab.data.transforms import build_transform
from promptlab.data.types import DatasetSplits, Datum
from tests.dataset_fixtures import build_fixture, dataset_config, fixture_config

ADVICE = r"paths\.data_root=.*PROMPTLAB_DATA"


def pets(tmp_path: Path) -> tuple[DatasetSplits, Path]:
    expected = build_fixture("oxford_pets", tmp_path)
    return read_dataset(fixture_config("oxford_pets", expected), tmp_path), expected.dataset_dir


def test_missing_data_root(tmp_path: Path) -> None:
    root = tmp_path / "no_such_root"
    with pytest.raises(DatasetError, match=rf"(?s)data root {re.escape(str(root))} does not exist.*{ADVICE}"):
        read_dataset(dataset_config("oxford_pets"), root)


def test_missing_dataset_folder_names_path_layout_and_advice(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as info:
        read_dataset(dataset_config("oxford_pets"), tmp_path)
    message = str(info.value)
    assert f"expected {tmp_path / 'oxford_pets'}" in message
    assert "images/" in message and "split_zhou_OxfordPets.json" in message  # the expected layout
    assert re.search(ADVICE, message) and "DATASETS.md (section OxfordPets)" in message


@pytest.mark.parametrize("name, expect", [
    ("imagenet", "train/"), ("fgvc_aircraft", "variants.txt"), ("imagenet_a", "imagenet-a/"),
])
def test_missing_folder_layout_for_other_readers(name: str, expect: str, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=rf"(?s){re.escape(expect)}.*{ADVICE}"):
        read_dataset(dataset_config(name), tmp_path)


def test_missing_split_file(tmp_path: Path) -> None:
    expected = build_fixture("dtd", tmp_path)
    split = expected.dataset_dir / "split_zhou_DescribableTextures.json"
    split.unlink()
    with pytest.raises(DatasetError, match=rf"split file not found: expected {re.escape(str(split))}"):
        read_dataset(fixture_config("dtd", expected), tmp_path)


def test_missing_image_folder(tmp_path: Path) -> None:
    expected = build_fixture("ucf101", tmp_path)
    shutil.rmtree(expected.dataset_dir / "UCF-101-midframes")
    with pytest.raises(DatasetError, match=r"image folder not found: expected .*UCF-101-midframes"):
        read_dataset(fixture_config("ucf101", expected), tmp_path)


def test_malformed_split_file(tmp_path: Path) -> None:
    expected = build_fixture("food101", tmp_path)
    split = expected.dataset_dir / "split_zhou_Food101.json"
    data = json.loads(split.read_text())
    data["val"][1] = ["apple_pie/1.jpg", "apple_pie"]
    split.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=r"entry \['apple_pie/1.jpg', 'apple_pie'\] in 'val' is not"):
        read_dataset(fixture_config("food101", expected), tmp_path)
    split.write_text(json.dumps({"train": [], "test": []}))
    with pytest.raises(DatasetError, match=r"lacks the list\(s\) \['val'\]"):
        read_dataset(fixture_config("food101", expected), tmp_path)


def test_unlisted_class_folders_and_names(tmp_path: Path) -> None:
    expected = build_fixture("imagenet", tmp_path)
    (expected.dataset_dir / "images" / "train" / "n99999999").mkdir()
    with pytest.raises(DatasetError, match=r"\['n99999999'\] .* not listed in .*classnames.txt"):
        read_dataset(fixture_config("imagenet", expected), tmp_path)

    fgvc = build_fixture("fgvc_aircraft", tmp_path)
    with open(fgvc.dataset_dir / "images_variant_val.txt", "a") as f:
        f.write("1234567 Boeing 797\n")
    with pytest.raises(DatasetError, match=r"images_variant_val.txt, line \d+: class 'Boeing 797' is not in"):
        read_dataset(fixture_config("fgvc_aircraft", fgvc), tmp_path)


def test_image_listed_but_absent(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    expected = build_fixture("oxford_pets", tmp_path)
    cfg = fixture_config("oxford_pets", expected)
    splits = read_dataset(cfg, tmp_path)

    # Every listed image is checked when reading (one listing per folder): a missing one fails before training.
    first = Path(splits.train[0].impath)
    first.rename(first.with_suffix(".bak"))
    with pytest.raises(DatasetError, match=rf"1 of {len(splits.train) + len(splits.val) + len(splits.test)} "
                                           rf"image\(s\) listed in .* are absent \(train 1\), e\.g\. "
                                           rf"{re.escape(str(first))}.*loader.on_error=skip"):
        read_dataset(cfg, tmp_path)
    first.with_suffix(".bak").rename(first)

    # Any other missing image fails when the dataset is built, unless skipping is asked for.
    gone = splits.test[3]
    Path(gone.impath).unlink()
    transform = build_transform(8, train=False)
    with pytest.raises(DatasetError, match=rf"1 of {len(splits.test)} .* missing, e\.g\. "
                                           rf"{re.escape(gone.impath)}.*loader.on_error=skip"):
        ImageDataset(splits.test, transform)
    with caplog.at_level(logging.WARNING, logger="promptlab.data.image_dataset"):
        dataset = ImageDataset(splits.test, transform, on_error="skip")
    assert len(dataset) == len(splits.test) - 1 and gone not in dataset.items
    assert dataset.skipped == [{"impath": gone.impath, "label": gone.label, "classname": gone.classname,
                                "reason": "missing"}]
    assert f"skipped 1 of {len(splits.test)} images" in caplog.text
    assert [dataset[i]["index"] for i in range(len(dataset))] == list(range(len(dataset)))


def test_corrupt_image(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    splits, _ = pets(tmp_path)
    broken = splits.test[2]
    Path(broken.impath).write_bytes(b"this is not a JPEG")
    transform = build_transform(8, train=False)

    dataset = ImageDataset(splits.test, transform)  # exists, so building succeeds
    assert dataset[1]["image"].shape == (3, 8, 8)
    message = rf"{re.escape(broken.impath)} .* corrupt or unreadable.*loader.on_error=skip"
    with pytest.raises(DatasetError, match=message):
        dataset[2]

    with caplog.at_level(logging.WARNING, logger="promptlab.data.image_dataset"):
        skipping = ImageDataset(splits.test, transform, on_error="skip")
    assert [s["impath"] for s in skipping.skipped] == [broken.impath]
    assert skipping.skipped[0]["reason"].startswith("unreadable")
    assert broken not in skipping.items and len(skipping) == len(splits.test) - 1
    assert "skipped 1 of" in caplog.text


def test_image_broken_after_the_skip_check_still_fails_clearly(tmp_path: Path) -> None:
    # on_error=skip decodes every image when the dataset is built (tests/data/test_data_faults.py); a file that is
    # damaged afterwards (during the run) must still fail with its path and what to do.
    path = tmp_path / "later.jpg"
    Image.effect_noise((64, 64), 100).convert("RGB").save(path, format="JPEG")
    dataset = ImageDataset([Datum(str(path), 0, "noise")], build_transform(8, train=False), on_error="skip")
    assert dataset.skipped == []
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match=r"later.jpg .*passed the check of loader.on_error=skip"):
        dataset[0]


def test_shots_larger_than_a_class_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    splits, _ = pets(tmp_path)  # 3 training images per class
    with caplog.at_level(logging.WARNING, logger="promptlab.data.fewshot"):
        out = fewshot_splits(splits, shots=4, seed=1, cache_dir=tmp_path / "cache")
    assert len(out.train) == len(splits.train)
    assert any("5 of 5 classes have fewer images than shots=4" in n and "class 1 ('american bulldog') has 3 "
               "image(s)" in n for n in out.notes)
    assert caplog.text.count("fewer images than shots=4") == 2  # one summary line per split (train, val)


def test_empty_class_list(tmp_path: Path) -> None:
    one_class = DatasetSplits("solo", tmp_path, [Datum("/x/a.jpg", 0, "a")], [], [], ["a"])
    assert subsample_classes(one_class, "base").classnames == ["a"]
    with pytest.raises(DatasetError, match=r"solo: the novel subset is empty \(1 class"):
        subsample_classes(one_class, "novel")
    with pytest.raises(ValueError, match=r"subset must be one of .* got 'new'"):
        subsample_classes(one_class, "new")

    expected = build_fixture("eurosat", tmp_path)
    (expected.dataset_dir / "split_zhou_EuroSAT.json").write_text('{"train": [], "val": [], "test": []}')
    with pytest.raises(DatasetError, match=r"EuroSAT: no classes found in"):
        read_dataset(fixture_config("eurosat", expected), tmp_path)


def test_class_count_mismatch(tmp_path: Path) -> None:
    build_fixture("oxford_pets", tmp_path)
    message = r"OxfordPets: .*split_zhou_OxfordPets.json has 5 classes, OxfordPets has 37.*dataset\.num_classes=5"
    with pytest.raises(DatasetError, match=message):
        read_dataset(dataset_config("oxford_pets"), tmp_path)


def test_config_mistakes(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"unknown reader 'nope'; known readers: \[.*'split_zhou'"):
        read_dataset({"name": "x", "reader": "nope", "dataset_dir": "x"}, tmp_path)
    message = r"'imagefolder' has no value for 'dataset_dir'.*dataset\.dataset_dir="
    with pytest.raises(DatasetError, match=message):
        read_dataset(dataset_config("imagefolder"), tmp_path)
    with pytest.raises(ValueError, match="on_error must be one of"):
        ImageDataset([], build_transform(8, train=False), on_error="ignore")
    with pytest.raises(ValueError, match="augment must be one of"):
        build_transform(8, train=True, augment="randaugment")
    expected = build_fixture("imagefolder", tmp_path)
    with pytest.raises(DatasetError, match=r"split_fractions train=0.9, val=0.2 are invalid"):
        cfg = fixture_config("imagefolder", expected, split_fractions={"train": 0.9, "val": 0.2})
        read_dataset(cfg, tmp_path)
