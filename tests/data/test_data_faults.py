"""The data faults that used to cost whole training runs, each reproduced on a fixture tree.

Each test builds the broken tree, runs what a user runs, and checks the message and the outcome: the run
stops before training with the file named, or goes on (on_error=skip) with the file left out and recorded.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
from collections import Counter
from pathlib import Path

import pytest
import torch
from PIL import Image

import promptlab.data.image_check as image_check
from promptlab.data.errors import DatasetError
from promptlab.data.fewshot import fewshot_splits
from promptlab.data.image_check import DecodeVerdicts, decode_problem, find_missing, outside_folder
from promptlab.data.image_dataset import ImageDataset, require_decodable
from promptlab.data.readers import read_dataset
from promptlab.data.transforms import build_transform
from promptlab.data.types import DatasetSplits, Datum
from promptlab.engine.build import uses_fewshot
from promptlab.engine.features import cached_features
from promptlab.protocols import get_protocol
from tests.dataset_fixtures import build_fixture, dataset_config, fixture_config
from tests.runs import compose_cfg, tiny_overrides

COUNTS = {"train": 8, "val": 4, "test": 3}


@pytest.fixture(autouse=True)
def fresh_verdicts() -> None:
    # Verdicts are kept per process (one decode per image per run); every test starts a new "run".
    image_check._SEEN.clear()


def truncate_jpeg(path: Path) -> None:
    """Replace `path` by a JPEG cut inside its image data, as an interrupted download leaves it: the header
    is intact (PIL's verify() passes it), the pixels are not all there."""
    Image.effect_noise((96, 96), 100).convert("RGB").save(path, format="JPEG")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    with Image.open(path) as image:
        image.verify()  # the old check of on_error=skip: passes


def pets(root: Path, counts: dict[str, int] | None = None) -> tuple[DatasetSplits, Path]:
    expected = build_fixture("oxford_pets", root, counts=counts or COUNTS)
    return read_dataset(pets_config(), root), expected.dataset_dir


def pets_config():
    return dataset_config("oxford_pets", num_classes=5)


# --------------------------------------------------------------------------- full decode, cached verdicts
def test_truncated_jpeg_is_caught_by_skip_and_decoded_once_per_run(tmp_path: Path, caplog) -> None:
    splits, _ = pets(tmp_path / "data")
    bad = splits.test[4]
    truncate_jpeg(Path(bad.impath))
    transform = build_transform(8, train=False)
    cache = tmp_path / "cache"

    with caplog.at_level(logging.WARNING, logger="promptlab.data.image_dataset"):
        first = ImageDataset(splits.test, transform, on_error="skip", check_cache_dir=cache)
    assert [s["impath"] for s in first.skipped] == [bad.impath]
    assert "image file is truncated" in first.skipped[0]["reason"]
    assert bad not in first.items and len(first) == len(splits.test) - 1
    assert f"skipped 1 of {len(splits.test)} images" in caplog.text
    assert first.verdicts.stats.decoded == len(splits.test) and first.verdicts.stats.seconds > 0

    # The same run builds the test set again (each evaluation, the check before training): no new decode.
    again = ImageDataset(splits.test, transform, on_error="skip", check_cache_dir=cache)
    assert again.verdicts.stats.decoded == 0 and again.verdicts.stats.reused == len(splits.test)
    assert again.skipped == first.skipped

    # A later run (new process) reuses the verdicts stored under the cache folder ...
    image_check._SEEN.clear()
    later = ImageDataset(splits.test, transform, on_error="skip", check_cache_dir=cache)
    assert later.verdicts.stats.decoded == 0 and later.skipped == first.skipped
    # ... until a file changes: the repaired image is decoded again (size/mtime differ) and kept.
    image_check._SEEN.clear()
    Image.new("RGB", (8, 8)).save(bad.impath, format="JPEG")
    repaired = ImageDataset(splits.test, transform, on_error="skip", check_cache_dir=cache)
    assert repaired.verdicts.stats.decoded == 1 and repaired.skipped == [] and len(repaired) == len(splits.test)


def test_decode_check_reports_each_kind_of_bad_file(tmp_path: Path) -> None:
    good, text, cut = tmp_path / "good.png", tmp_path / "text.jpg", tmp_path / "cut.jpg"
    Image.new("RGB", (8, 8)).save(good)
    text.write_text("not an image")
    truncate_jpeg(cut)
    assert decode_problem(good) is None
    assert decode_problem(tmp_path / "absent.jpg") == "missing"
    assert decode_problem(text).startswith("unreadable (UnidentifiedImageError")
    assert "truncated" in decode_problem(cut)
    # An image check of a raise-mode run stops on them, naming one and what to do.
    items = [Datum(str(p), 0, "x") for p in (good, cut)]
    with pytest.raises(DatasetError, match=r"1 of 2 image\(s\) are missing or cannot be decoded, e\.g\. .*cut\.jpg"
                                           r".*loader\.on_error=skip"):
        require_decodable(items)


def test_decode_check_spreads_many_images_over_threads(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(image_check.os, "cpu_count", lambda: 4)  # threads even on a one-core runner
    paths = []
    for i in range(300):
        path = tmp_path / f"{i}.png"
        Image.new("RGB", (4, 4), (i % 256, 0, 0)).save(path)
        paths.append(str(path))
    Path(paths[137]).write_bytes(b"\x89PNG broken")
    verdicts = DecodeVerdicts()
    problems = verdicts.problems(paths)
    assert list(problems) == [paths[137]] and verdicts.stats.decoded == 300  # every verdict in its own slot


# --------------------------------------------------------------------------- missing images and the selection
def test_missing_training_image_never_enters_a_saved_selection(tmp_path: Path) -> None:
    root = tmp_path / "data"
    splits, dataset_dir = pets(root)
    plain = fewshot_splits(splits, shots=2, seed=1, cache_dir=None, save=False)  # what the draw picks
    gone = plain.train[3]
    Path(gone.impath).unlink()
    cfg = pets_config()

    # on_error=raise: the pre-flight names the file before anything is drawn.
    with pytest.raises(DatasetError, match=rf"1 of \d+ image\(s\) listed in .* are absent \(train 1\), e\.g\. "
                                           rf"{re.escape(gone.impath)}.*loader\.on_error=skip"):
        read_dataset(cfg, root)

    # on_error=skip: the draw passes over it; only its slot changes.
    skipping = read_dataset(cfg, root, on_missing="skip")
    few = fewshot_splits(skipping, shots=2, seed=1, cache_dir=None)
    saved = json.loads((dataset_dir / "split_fewshot" / "shot_2-seed_1.json").read_text())
    listed = {(dataset_dir / rel).as_posix() for rel, _ in saved["train"]}
    assert gone.impath not in listed and all(os.path.isfile(p) for p in listed)
    assert Counter(d.label for d in few.train) == {label: 2 for label in range(5)}
    assert set(plain.train) - set(few.train) == {gone} and len(set(few.train) - set(plain.train)) == 1
    assert any("1 drawn image(s) missing on disk were passed over" in n and gone.impath in n for n in few.notes)

    # Every later run with the same shots and seed reuses it, zero-shot included (it used to fail here).
    for save in (True, False):
        reused = fewshot_splits(read_dataset(cfg, root, on_missing="skip"), shots=2, seed=1, cache_dir=None,
                                save=save)
        assert reused.train == few.train


# --------------------------------------------------------------------------- feature cache
def test_truncated_feature_cache_file_is_named_and_recomputed(tmp_path: Path, caplog) -> None:
    calls: list[int] = []

    def compute() -> torch.Tensor:
        calls.append(1)
        return torch.arange(12.0).reshape(4, 3)

    first = cached_features(tmp_path, "key", compute, "test set", rows=4)
    path = tmp_path / "features" / "key.pt"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # a copy killed half-way, a full disk
    with caplog.at_level(logging.WARNING, logger="promptlab.engine.features"):
        again = cached_features(tmp_path, "key", compute, "test set", rows=4)
    assert torch.equal(again, first) and len(calls) == 2
    assert f"feature cache file {path} is unusable (cannot be loaded" in caplog.text and "recomputing" in caplog.text
    assert torch.equal(torch.load(path, weights_only=True)["features"], first)  # replaced by a good file

    # A readable file that does not hold what this run needs (other row count, NaN) is recomputed too.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="promptlab.engine.features"):
        cached_features(tmp_path, "key", compute, "test set", rows=5)
    assert "it holds 4 rows for 5 images" in caplog.text and len(calls) == 3
    torch.save({"features": torch.full((5, 3), float("nan"))}, path)
    assert torch.isfinite(cached_features(tmp_path, "key", compute, "test set", rows=4)).all()
    assert len(calls) == 4


def full_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every atomic write (promptlab.io) fails as on a full disk."""
    import promptlab.io

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(promptlab.io.tempfile, "mkstemp", no_space)
    monkeypatch.setattr(promptlab.io.tempfile, "mkdtemp", no_space)


def test_optional_cache_writes_on_a_full_disk_only_warn(tmp_path: Path, monkeypatch, caplog) -> None:
    splits, dataset_dir = pets(tmp_path / "data")
    truncate_jpeg(Path(splits.test[0].impath))
    full_disk(monkeypatch)
    with caplog.at_level(logging.WARNING):
        features = cached_features(tmp_path / "cache", "key", lambda: torch.ones(2, 3), "test set", rows=2)
        few = fewshot_splits(splits, shots=2, seed=1, cache_dir=None)
        dataset = ImageDataset(splits.test, build_transform(8, train=False), on_error="skip",
                               check_cache_dir=tmp_path / "cache")
    assert torch.equal(features, torch.ones(2, 3))
    assert f"could not write the feature cache {tmp_path / 'cache' / 'features' / 'key.pt'}" in caplog.text
    assert "No space left on device" in caplog.text
    assert len(few.train) == 10 and any("not saved (no writable location)" in n for n in few.notes)
    assert "could not save the few-shot selection anywhere" in caplog.text
    assert not (dataset_dir / "split_fewshot" / "shot_2-seed_1.json").exists()
    assert len(dataset.skipped) == 1 and "could not save the image-check cache" in caplog.text


# --------------------------------------------------------------------------- split files
@pytest.mark.parametrize("entry", ["../../etc/hostname", "/etc/hostname", "Abyssinian_1.jpg/../../../x.jpg"])
def test_split_entry_outside_the_dataset_folder_is_refused(tmp_path: Path, entry: str) -> None:
    expected = build_fixture("oxford_pets", tmp_path, counts=COUNTS)
    split = expected.dataset_dir / "split_zhou_OxfordPets.json"
    data = json.loads(split.read_text())
    data["test"].append([entry, 0, "abyssinian"])
    split.write_text(json.dumps(data))
    message = (rf"OxfordPets: 1 image path\(s\) listed in {re.escape(str(split))} lead outside the dataset folder "
               rf"{re.escape(str(expected.dataset_dir))}.*opens no such path.*re-download it")
    with pytest.raises(DatasetError, match=message):
        read_dataset(fixture_config("oxford_pets", expected), tmp_path, on_missing="skip")  # skip does not allow it


def test_containment_and_existence_helpers(tmp_path: Path) -> None:
    inside = Datum(str(tmp_path / "d" / "a" / ".." / "b.jpg"), 0, "x")
    climbing = Datum(str(tmp_path / "d" / ".." / "e.jpg"), 0, "x")
    sibling = Datum(str(tmp_path / "d2" / "f.jpg"), 0, "x")  # same prefix string, another folder
    assert outside_folder([inside, climbing, sibling], tmp_path / "d") == [climbing, sibling]
    (tmp_path / "d" / "a").mkdir(parents=True)
    (tmp_path / "d" / "b.jpg").write_bytes(b"")
    (tmp_path / "d" / "sub").mkdir()
    assert find_missing([inside, Datum(str(tmp_path / "d" / "sub"), 0, "x"), sibling]) == [
        Datum(str(tmp_path / "d" / "sub"), 0, "x"), sibling]  # a folder is not an image


def test_wrong_split_file_names_the_class_counts(tmp_path: Path) -> None:
    # Another project's JSON of the same shape (here DTD's, 5 classes) in place of OxfordPets' file: its
    # images are not there either, but the class count says what is wrong.
    dtd = build_fixture("dtd", tmp_path / "other")
    build_fixture("oxford_pets", tmp_path)
    target = tmp_path / "oxford_pets" / "split_zhou_OxfordPets.json"
    target.write_text((dtd.dataset_dir / "split_zhou_DescribableTextures.json").read_text())
    with pytest.raises(DatasetError) as info:
        read_dataset(dataset_config("oxford_pets"), tmp_path)
    message = str(info.value)
    assert f"OxfordPets: {target} has 5 classes, OxfordPets has 37 (dataset.num_classes)" in message
    assert "another dataset's file" in message and "extracted" not in message


def test_images_extracted_one_level_too_deep_get_the_extraction_hint(tmp_path: Path) -> None:
    expected = build_fixture("dtd", tmp_path)
    images = expected.dataset_dir / "images"
    images.rename(expected.dataset_dir / "dtd")
    images.mkdir()
    (expected.dataset_dir / "dtd").rename(images / "dtd")
    with pytest.raises(DatasetError, match=r"No image of the \['train', 'val', 'test'\] split\(s\) is there: check "
                                           r"that the images are extracted"):
        read_dataset(fixture_config("dtd", expected), tmp_path)


# --------------------------------------------------------------------------- classes and shots
def test_short_classes_give_one_summary_warning(tmp_path: Path, caplog) -> None:
    splits, _ = pets(tmp_path / "data", counts={"train": 3, "val": 4, "test": 1})
    with caplog.at_level(logging.WARNING, logger="promptlab.data.fewshot"):
        few = fewshot_splits(splits, shots=16, seed=1, cache_dir=tmp_path / "sel")
    train_warnings = [r for r in caplog.records if "fewer images than shots=16" in r.getMessage()]
    assert len(train_warnings) == 1  # not one line per class (1,000 on ImageNet)
    assert train_warnings[0].getMessage().startswith("train: 5 of 5 classes have fewer images than shots=16")
    assert len(few.train) == 15


def test_class_without_training_images_warns_and_reaches_the_run_notes(tmp_path: Path, caplog) -> None:
    expected = build_fixture("oxford_pets", tmp_path, counts=COUNTS)
    split = expected.dataset_dir / "split_zhou_OxfordPets.json"
    data = json.loads(split.read_text())
    data["train"] = [e for e in data["train"] if e[1] != 2]
    split.write_text(json.dumps(data))
    cfg = fixture_config("oxford_pets", expected)
    with caplog.at_level(logging.WARNING, logger="promptlab.data.fewshot"):
        run_data = get_protocol("fewshot").build_data({"name": "fewshot"}, cfg, tmp_path, 2, 1, tmp_path / "sel")
    note = "1 of 5 classes of oxford_pets have no training image: their prompts are trained on 0 shots, class 2 " \
           "('great pyrenees')"
    assert note in caplog.text
    assert any(note in n for n in run_data.notes)  # ProtocolData.notes become the run record's notes
    assert 2 not in {d.label for d in run_data.train_items}


def test_runs_that_do_not_train_write_no_selection(tmp_path: Path) -> None:
    splits, dataset_dir = pets(tmp_path / "data")
    few = fewshot_splits(splits, shots=2, seed=1, cache_dir=None, save=False)
    assert len(few.train) == 10 and not (dataset_dir / "split_fewshot").exists()
    assert "not saved (this run does not train)" in few.notes[-1]
    saved = fewshot_splits(splits, shots=2, seed=1, cache_dir=None)
    assert saved.train == few.train  # the same draw, whether saved or not

    # Which runs train: decided from the learner class and the epochs, before anything is built.
    assert not uses_fewshot(compose_cfg(["method=zeroshot"]))
    assert uses_fewshot(compose_cfg(["method=coop"]))
    assert not uses_fewshot(compose_cfg(["method=coop", "method.optim.epochs=0"]))  # evaluates a loaded prompt
    assert uses_fewshot(compose_cfg(["method=linear_probe"]))


# --------------------------------------------------------------------------- ImageNet class names
def _wnid_tree(folder: Path, wnids: list[str]) -> None:
    for wnid in wnids:
        (folder / wnid).mkdir(parents=True)
        Image.new("RGB", (2, 2)).save(folder / wnid / "a.png")


def test_imagenet_class_names_from_open_clip_without_classnames_txt(tmp_path: Path) -> None:
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    wnids = [f"n{i:08d}" for i in range(1000)]
    _wnid_tree(tmp_path / "imagenet" / "images" / "train", wnids)
    _wnid_tree(tmp_path / "imagenet" / "images" / "val", wnids[:3])
    splits = read_dataset(dataset_config("imagenet"), tmp_path)
    assert splits.classnames == list(IMAGENET_CLASSNAMES) and splits.classnames[:2] == ["tench", "goldfish"]
    assert any("open_clip" in n and "no classnames.txt" in n for n in splits.notes)

    # ImageNet-A holds 200 of the classes: it cannot be named by position, so it asks for the file ...
    a_root = tmp_path / "imagenet-adversarial" / "imagenet-a"
    _wnid_tree(a_root, wnids[1:400:2])
    with pytest.raises(DatasetError, match=r"ImageNet-A: class-name file \(open_clip's list needs all 1000 wnid "
                                           r"folders to name classes by position; 200 found\) not found"):
        read_dataset(dataset_config("imagenet_a"), tmp_path)
    # ... and uses the data root's imagenet/classnames.txt when there is one (promptlab-data prepare writes it).
    (tmp_path / "imagenet" / "classnames.txt").write_text(
        "".join(f"{w} {n}\n" for w, n in zip(wnids, IMAGENET_CLASSNAMES, strict=True)))
    a = read_dataset(dataset_config("imagenet_a"), tmp_path)
    assert a.classnames[:2] == [IMAGENET_CLASSNAMES[1], IMAGENET_CLASSNAMES[3]]
    assert any("classnames.txt" in n for n in a.notes)


# --------------------------------------------------------------------------- whole runs on the toy world
@pytest.mark.slow  # four toy-world runs, about 8 s
def test_runs_with_bad_files_fail_before_training_or_complete_with_skip(tmp_path: Path) -> None:
    from promptlab.train import run

    overrides = [*tiny_overrides(tmp_path), "method.optim.epochs=1"]
    zero = run(compose_cfg([*overrides, "run_name=zs"]))  # generates the world
    world = next((tmp_path / "data" / "toyworld").iterdir())
    assert zero["status"] == "complete" and not (world / "split_fewshot").exists()  # zero-shot writes nothing

    split = json.loads((world / "split_zhou_ToyWorld.json").read_text())
    bad_test = world / "images" / split["test"][5][0]
    data = bad_test.read_bytes()
    bad_test.write_bytes(data[: len(data) // 2])  # a PNG cut short

    # on_error=raise: the bad test image stops the run before training, so no trained prompt is lost to it.
    # (A fresh feature cache: the zero-shot run cached the features of the image while it was intact.)
    with pytest.raises(DatasetError, match=rf"{re.escape(str(bad_test))} .*corrupt or unreadable"):
        run(compose_cfg([*overrides, "method=coop", "run_name=coop_raise", f"paths.cache_dir={tmp_path / 'c2'}"]))
    failed = tmp_path / "outputs" / "runs" / "coop_raise"
    assert json.loads((failed / "metrics.json").read_text())["status"] == "failed"
    assert not (failed / "prompt_learner.pt").exists()

    # on_error=skip: a missing training image and the bad test image are left out; the run completes.
    gone = world / "images" / split["train"][0][0]
    gone.unlink()
    done = run(compose_cfg([*overrides, "method=coop", "run_name=coop_skip", "loader.on_error=skip"]))
    assert done["status"] == "complete"
    assert any("skipped 1 unreadable images" in n and str(bad_test) in n for n in done["notes"])
    selection = json.loads((world / "split_fewshot" / "shot_2-seed_1.json").read_text())
    assert all((world / rel).is_file() for rel, _ in selection["train"])
    # The next job of the sweep (another method, same shots and seed) reuses that selection.
    again = run(compose_cfg([*overrides, "method=kgcoop", "run_name=kg_skip", "loader.on_error=skip"]))
    assert again["status"] == "complete" and any("reused" in n for n in again["notes"])
