"""Readers against fixtures in each dataset's exact on-disk layout, the base/novel rule, image loading."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
from PIL import Image

from promptlab.data.base_novel import subsample_classes
from promptlab.data.image_dataset import ImageDataset
from promptlab.data.readers import READERS, read_dataset, read_split_zhou, register_reader
from promptlab.data.transforms import CLIP_MEAN, CLIP_STD, build_transform
from promptlab.data.types import DatasetSplits, Datum
from tests.dataset_fixtures import (
    ALL_FIXTURES,
    IMAGEFOLDER_CLASSES,
    IMAGEFOLDER_PER_CLASS,
    SPLITS,
    build_fixture,
    dataset_config,
    fixture_config,
    write_image,
)

FIXED_SPLIT_DATASETS = [name for name in ALL_FIXTURES if name != "imagefolder"]


def relative_items(items: list[Datum], dataset_dir: Path) -> list[tuple[str, int]]:
    return sorted((Path(d.impath).relative_to(dataset_dir).as_posix(), d.label) for d in items)


@pytest.mark.parametrize("name", FIXED_SPLIT_DATASETS)
def test_reader_finds_classes_labels_and_items(name: str, tmp_path: Path) -> None:
    expected = build_fixture(name, tmp_path)
    splits = read_dataset(fixture_config(name, expected), tmp_path)

    assert splits.name == name
    assert splits.dataset_dir == expected.dataset_dir
    assert splits.classnames == expected.classnames
    assert not any("_" in c for c in splits.classnames)
    for split in SPLITS:
        items = getattr(splits, split)
        assert relative_items(items, expected.dataset_dir) == expected.items[split], split
        assert all(d.classname == splits.classnames[d.label] for d in items)
        assert all(Path(d.impath).is_file() for d in items)


@pytest.mark.parametrize("name", FIXED_SPLIT_DATASETS)
def test_base_novel_split_of_each_dataset(name: str, tmp_path: Path) -> None:
    expected = build_fixture(name, tmp_path)
    splits = read_dataset(fixture_config(name, expected), tmp_path)
    n_base = math.ceil(len(expected.classnames) / 2)

    base = subsample_classes(splits, "base")
    novel = subsample_classes(splits, "novel")

    assert base.classnames == expected.classnames[:n_base]
    assert novel.classnames == expected.classnames[n_base:]
    for split in SPLITS:
        want_base = sorted((p, y) for p, y in expected.items[split] if y < n_base)
        want_novel = sorted((p, y - n_base) for p, y in expected.items[split] if y >= n_base)
        assert relative_items(getattr(base, split), expected.dataset_dir) == want_base
        assert relative_items(getattr(novel, split), expected.dataset_dir) == want_novel
        assert all(d.classname == novel.classnames[d.label] for d in getattr(novel, split))
    assert subsample_classes(splits, "all") is splits


def test_base_novel_rule_on_odd_and_even_class_counts() -> None:
    def splits_with(n: int) -> DatasetSplits:
        items = [Datum(f"/x/{y}.jpg", y, f"c{y}") for y in range(n)]
        return DatasetSplits("d", Path("/x"), items, [], items, [f"c{y}" for y in range(n)])

    assert subsample_classes(splits_with(37), "base").num_classes == 19  # OxfordPets 19/18 (docs/reference.md)
    assert subsample_classes(splits_with(37), "novel").num_classes == 18
    assert subsample_classes(splits_with(47), "base").num_classes == 24  # DTD 24/23
    novel = subsample_classes(splits_with(10), "novel")
    assert novel.classnames == ["c5", "c6", "c7", "c8", "c9"]
    assert [d.label for d in novel.test] == [0, 1, 2, 3, 4]


def test_caltech_background_folders_are_not_classes(tmp_path: Path) -> None:
    expected = build_fixture("caltech101", tmp_path)
    assert (expected.dataset_dir / "101_ObjectCategories" / "BACKGROUND_Google").is_dir()
    splits = read_dataset(fixture_config("caltech101", expected), tmp_path)
    all_paths = [d.impath for d in splits.train + splits.val + splits.test]
    assert not [p for p in all_paths if "BACKGROUND_Google" in p or "Faces_easy" in p]
    assert "airplane" in splits.classnames and "face" in splits.classnames


def test_eurosat_folder_names_in_split_file_get_reference_names(tmp_path: Path) -> None:
    expected = build_fixture("eurosat", tmp_path)
    splits = read_dataset(fixture_config("eurosat", expected), tmp_path)
    assert splits.classnames == ["Annual Crop Land", "Forest", "Highway or Road", "Sea or Lake"]


def test_imagenet_a_and_r_are_relabelled_subsets_in_sorted_wnid_order(tmp_path: Path) -> None:
    a = build_fixture("imagenet_a", tmp_path)
    splits = read_dataset(fixture_config("imagenet_a", a), tmp_path)
    assert splits.classnames == ["goldfish", "electric ray", "Chihuahua"]
    assert sorted({d.label for d in splits.test}) == [0, 1, 2]
    assert splits.train == [] and splits.val == []
    folders = {Path(d.impath).parent.name: d.label for d in splits.test}
    assert folders == {"n01443537": 0, "n01496331": 1, "n02085620": 2}


def test_read_split_zhou_is_callable_directly(tmp_path: Path) -> None:
    expected = build_fixture("food101", tmp_path)
    splits = read_split_zhou("toy", expected.dataset_dir, "images", "split_zhou_Food101.json")
    assert splits.name == "toy"
    assert splits.classnames == expected.classnames
    assert relative_items(splits.test, expected.dataset_dir) == expected.items["test"]


def test_imagefolder_derived_split_is_deterministic_and_complete(tmp_path: Path) -> None:
    expected = build_fixture("imagefolder", tmp_path)
    cfg = fixture_config("imagefolder", expected)
    first = read_dataset(cfg, tmp_path)
    again = read_dataset(cfg, tmp_path)

    assert first.classnames == ["golden retriever", "tabby cat", "zebra"]
    union = sorted(relative_items(first.train + first.val + first.test, expected.dataset_dir))
    assert union == expected.items["all"]  # every image once; notes.txt and hidden folders ignored
    for label in range(len(IMAGEFOLDER_CLASSES)):
        per_split = [sum(d.label == label for d in getattr(first, s)) for s in SPLITS]
        assert per_split == [5, 2, 3]  # round(10 * 0.5), round(10 * 0.2), rest (CoOp dtd.py rule)
    for split in SPLITS:
        assert getattr(first, split) == getattr(again, split)

    reseeded = read_dataset(fixture_config("imagefolder", expected, split_seed=2), tmp_path)
    assert {d.impath for d in reseeded.train} != {d.impath for d in first.train}
    fractions = {"train": 0.8, "val": 0.1}
    refracted = read_dataset(fixture_config("imagefolder", expected, split_fractions=fractions), tmp_path)
    assert len(refracted.train) == 8 * len(IMAGEFOLDER_CLASSES)
    assert IMAGEFOLDER_PER_CLASS == 10


def test_imagefolder_with_split_file(tmp_path: Path) -> None:
    expected = build_fixture("imagefolder", tmp_path)
    entries = [[rel, label, IMAGEFOLDER_CLASSES[label]] for rel, label in expected.items["all"]]
    split = {"train": entries[::2], "val": entries[1:6:2], "test": entries[7::2]}
    (expected.dataset_dir / "split_zhou_Mine.json").write_text(json.dumps(split))

    cfg = fixture_config("imagefolder", expected, split_file="split_zhou_Mine.json")
    splits = read_dataset(cfg, tmp_path)

    assert relative_items(splits.train, expected.dataset_dir) == sorted((e[0], e[1]) for e in split["train"])
    assert len(splits.val) == 3 and splits.classnames == ["golden retriever", "tabby cat", "zebra"]


def test_imagefolder_absolute_dataset_dir(tmp_path: Path) -> None:
    expected = build_fixture("imagefolder", tmp_path / "elsewhere")
    cfg = fixture_config("imagefolder", expected, dataset_dir=str(expected.dataset_dir))
    splits = read_dataset(cfg, tmp_path)  # absolute dataset_dir wins over the data root
    assert splits.dataset_dir == expected.dataset_dir


def test_registered_generating_reader_runs_before_its_folder_exists(tmp_path: Path) -> None:
    calls = []

    def read_generated(cfg, dataset_dir: Path) -> DatasetSplits:
        calls.append(dataset_dir)
        item = Datum(str(dataset_dir / "a.png"), 0, "red circle")
        return DatasetSplits(cfg["name"], dataset_dir, [item], [], [item], ["red circle"])

    register_reader("generated_test", read_generated, generates=True)
    try:
        register_reader("generated_test", read_generated, generates=True)  # same function: no-op
        with pytest.raises(ValueError, match="already registered"):
            register_reader("generated_test", lambda cfg, d: None)
        cfg = {"name": "gen", "reader": "generated_test", "dataset_dir": "gen", "num_classes": 1}
        splits = read_dataset(cfg, tmp_path / "not_yet")
        assert calls == [tmp_path / "not_yet" / "gen"] and splits.classnames == ["red circle"]
    finally:
        READERS.pop("generated_test", None)


# --- configs ------------------------------------------------------------------------------------------
REFERENCE = {  # class counts (docs/reference.md) and zero-shot templates (CoOp trainers/zsclip.py)
    "imagenet": (1000, "a photo of a {}."),
    "caltech101": (100, "a photo of a {}."),
    "oxford_pets": (37, "a photo of a {}, a type of pet."),
    "stanford_cars": (196, "a photo of a {}."),
    "oxford_flowers": (102, "a photo of a {}, a type of flower."),
    "food101": (101, "a photo of {}, a type of food."),
    "fgvc_aircraft": (100, "a photo of a {}, a type of aircraft."),
    "sun397": (397, "a photo of a {}."),
    "dtd": (47, "{} texture."),
    "eurosat": (10, "a centered satellite photo of {}."),
    "ucf101": (101, "a photo of a person doing {}."),
    "imagenet_v2": (1000, "a photo of a {}."),
    "imagenet_sketch": (1000, "a photo of a {}."),
    "imagenet_a": (200, "a photo of a {}."),
    "imagenet_r": (200, "a photo of a {}."),
}


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_dataset_config_matches_reference(name: str) -> None:
    cfg = dataset_config(name)
    num_classes, template = REFERENCE[name]
    assert cfg.name == name and cfg.reader in READERS
    assert cfg.num_classes == num_classes
    assert list(cfg.templates) == [template]
    imagenet_like = name.startswith("imagenet")
    coop_epochs = {1: 50, 2: 100, 4: 100, 8: 200, 16: 200}
    want_epochs = {k: 50 for k in coop_epochs} if imagenet_like else coop_epochs
    assert dict(cfg.epochs_by_shots) == want_epochs
    assert re.fullmatch(r"[\w.-]+", str(cfg.dataset_dir))


# --- image loading and transforms ---------------------------------------------------------------------
def test_image_dataset_returns_normalised_tensors(tmp_path: Path) -> None:
    expected = build_fixture("dtd", tmp_path)
    splits = read_dataset(fixture_config("dtd", expected), tmp_path)
    dataset = ImageDataset(splits.test, build_transform(16, train=False))
    sample = dataset[3]
    assert sample["image"].shape == (3, 16, 16) and sample["image"].dtype == torch.float32
    assert sample["label"] == splits.test[3].label and sample["index"] == 3
    assert len(dataset) == len(splits.test) and dataset.skipped == []
    # The fixture colour (200, 30, 90) normalised with CLIP statistics (JPEG shifts values slightly).
    colour = (200, 30, 90)
    want = torch.tensor([(c / 255 - m) / s for c, m, s in zip(colour, CLIP_MEAN, CLIP_STD, strict=True)])
    assert torch.allclose(sample["image"].mean(dim=(1, 2)), want, atol=0.15)


def test_test_transform_resizes_short_side_and_center_crops(tmp_path: Path) -> None:
    image = Image.new("RGB", (40, 20), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 4, 20))  # white left strip: outside the centre crop
    out = build_transform(10, train=False)(image)
    assert out.shape == (3, 10, 10)
    black = torch.tensor([(0 - m) / s for m, s in zip(CLIP_MEAN, CLIP_STD, strict=True)])
    assert torch.allclose(out.mean(dim=(1, 2)), black, atol=1e-3)


def test_train_augmentations() -> None:
    image = Image.new("RGB", (24, 24))
    image.paste((255, 0, 0), (0, 0, 12, 24))  # left half red
    plain = build_transform(24, train=True, augment="none")
    assert torch.equal(plain(image), build_transform(24, train=False)(image))
    torch.manual_seed(0)
    flipped = {bool(build_transform(24, train=True, augment="flip")(image)[0, 0, 0] < 0) for _ in range(20)}
    assert flipped == {True, False}  # red on the left, or flipped to the right
    coop = build_transform(8, train=True, augment="coop")
    names = [type(t).__name__ for t in coop.transforms]
    assert names == ["RandomResizedCrop", "RandomHorizontalFlip", "ToTensor", "Normalize"]
    assert coop.transforms[0].scale == (0.08, 1.0)
    assert str(coop.transforms[0].interpolation) == "InterpolationMode.BICUBIC"
    assert coop(image).shape == (3, 8, 8)
    assert build_transform(8, train=False, augment="coop").transforms[0].__class__.__name__ == "Resize"


def test_image_dataset_converts_to_rgb(tmp_path: Path) -> None:
    path = tmp_path / "gray.png"
    Image.new("L", (8, 8), 128).save(path)
    write_image(tmp_path / "rgb.jpg")
    items = [Datum(str(path), 0, "a"), Datum(str(tmp_path / "rgb.jpg"), 1, "b")]
    dataset = ImageDataset(items, build_transform(8, train=False))
    assert dataset[0]["image"].shape == (3, 8, 8)
