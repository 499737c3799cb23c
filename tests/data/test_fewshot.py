"""Few-shot sampling: reproducible, order-independent, saved as JSON and validated when reused."""

from __future__ import annotations

import json
import logging
import random
from collections import Counter
from pathlib import Path

import pytest

import promptlab.data.fewshot as fewshot
from promptlab.data.errors import DatasetError
from promptlab.data.fewshot import fewshot_splits, sample_few_shot
from promptlab.data.readers import read_dataset
from promptlab.data.types import DatasetSplits, Datum
from tests.dataset_fixtures import build_fixture, fixture_config


def pool(n_classes: int = 3, per_class: int = 10) -> list[Datum]:
    return [Datum(f"/d/c{y}/img_{i:02d}.jpg", y, f"c{y}") for y in range(n_classes) for i in range(per_class)]


def paths(items: list[Datum]) -> list[str]:
    return [d.impath for d in items]


def test_same_seed_same_selection_and_pinned_values() -> None:
    first, notes = sample_few_shot(pool(), shots=2, seed=1)
    again, _ = sample_few_shot(pool(), shots=2, seed=1)
    assert first == again and notes == []
    # Pinned: the draw uses only random.Random(str).random(), which Python keeps stable; a change here
    # would silently change every saved experiment's training images.
    assert paths(first) == [
        "/d/c0/img_02.jpg", "/d/c0/img_04.jpg",
        "/d/c1/img_01.jpg", "/d/c1/img_07.jpg",
        "/d/c2/img_03.jpg", "/d/c2/img_09.jpg",
    ]


def test_selection_has_k_distinct_items_per_class_and_differs_across_seeds() -> None:
    items = pool(n_classes=4, per_class=12)
    by_seed = {seed: sample_few_shot(items, shots=4, seed=seed)[0] for seed in (1, 2, 3)}
    for selection in by_seed.values():
        assert Counter(d.label for d in selection) == {0: 4, 1: 4, 2: 4, 3: 4}
        assert len(set(paths(selection))) == 16
        assert set(selection) <= set(items)
    assert len({tuple(paths(s)) for s in by_seed.values()}) == 3


def test_independent_of_listing_order_and_of_other_classes() -> None:
    items = pool(n_classes=5, per_class=9)
    reference, _ = sample_few_shot(items, shots=3, seed=7)
    shuffled = list(items)
    random.Random(123).shuffle(shuffled)
    assert sample_few_shot(shuffled, shots=3, seed=7)[0] == reference
    # Dropping other classes (e.g. a base/novel subset) leaves a class's draw unchanged.
    only_class_2 = [d for d in items if d.label == 2]
    assert sample_few_shot(only_class_2, shots=3, seed=7)[0] == [d for d in reference if d.label == 2]


def test_all_shots_and_invalid_shots() -> None:
    items = pool()
    everything, notes = sample_few_shot(list(reversed(items)), shots=-1, seed=1)
    assert sorted(paths(everything)) == sorted(paths(items)) and notes == []
    for bad in (0, -2, 2.5):
        with pytest.raises(ValueError, match="shots must be a positive integer or -1"):
            sample_few_shot(items, shots=bad, seed=1)  # type: ignore[arg-type]


def test_class_with_fewer_images_keeps_all_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    items = pool(n_classes=2, per_class=5) + [Datum("/d/rare/only.jpg", 2, "rare bird")]
    with caplog.at_level(logging.WARNING, logger="promptlab.data.fewshot"):
        selection, notes = sample_few_shot(items, shots=4, seed=1)
    assert Counter(d.label for d in selection) == {0: 4, 1: 4, 2: 1}
    assert len(notes) == 1 and notes[0].startswith("1 of 3 classes have fewer images than shots=4")
    assert "class 2 ('rare bird') has 1 image(s)" in notes[0]
    assert "rare bird" in caplog.text


# --- saved selections -----------------------------------------------------------------------------------
@pytest.fixture()
def pets(tmp_path: Path) -> DatasetSplits:
    expected = build_fixture("oxford_pets", tmp_path, counts={"train": 8, "val": 6, "test": 2})
    return read_dataset(fixture_config("oxford_pets", expected), tmp_path)


def test_fewshot_splits_saves_readable_json_and_leaves_test(pets: DatasetSplits) -> None:
    out = fewshot_splits(pets, shots=2, seed=1, cache_dir=None)
    saved = pets.dataset_dir / "split_fewshot" / "shot_2-seed_1.json"
    payload = json.loads(saved.read_text())

    assert Counter(d.label for d in out.train) == {y: 2 for y in range(5)}
    assert Counter(d.label for d in out.val) == {y: 2 for y in range(5)}  # min(shots, 4)
    assert out.test == pets.test and out.classnames == pets.classnames
    assert payload["shots"] == 2 and payload["seed"] == 1 and payload["dataset"] == "oxford_pets"
    relative = [[str(Path(d.impath).relative_to(pets.dataset_dir)), d.label] for d in out.train]
    assert payload["train"] == relative
    assert payload["train"][0][0].startswith("images/")
    assert [p.name for p in saved.parent.iterdir()] == ["shot_2-seed_1.json"]  # no temp file left
    assert any(str(saved) in note for note in out.notes)

    sixteen = fewshot_splits(pets, shots=16, seed=1, cache_dir=None)
    assert Counter(d.label for d in sixteen.val) == {y: 4 for y in range(5)}  # val capped at 4 per class
    assert len(sixteen.train) == len(pets.train)  # 8 < 16 per class: all kept, with notes
    assert sum("fewer images than shots=16" in n for n in sixteen.notes) == 1  # one summary, not one per class
    assert "5 of 5 classes have fewer images than shots=16" in " ".join(sixteen.notes)
    assert fewshot_splits(pets, shots=-1, seed=1, cache_dir=None) is pets


def test_saved_selection_is_reused(pets: DatasetSplits) -> None:
    fewshot_splits(pets, shots=2, seed=1, cache_dir=None)
    saved = pets.dataset_dir / "split_fewshot" / "shot_2-seed_1.json"
    payload = json.loads(saved.read_text())
    # Replace one selected image of class 0 by another class-0 image: a resample would not produce it.
    chosen = {p for p, _ in payload["train"]}
    other = next(str(Path(d.impath).relative_to(pets.dataset_dir)) for d in pets.train
                 if d.label == 0 and str(Path(d.impath).relative_to(pets.dataset_dir)) not in chosen)
    payload["train"][0] = [other, 0]
    saved.write_text(json.dumps(payload))

    reused = fewshot_splits(pets, shots=2, seed=1, cache_dir=None)
    assert str(Path(reused.train[0].impath).relative_to(pets.dataset_dir)) == other
    assert any("reused" in note for note in reused.notes)


def test_reuse_validates_against_the_dataset(pets: DatasetSplits, caplog: pytest.LogCaptureFixture) -> None:
    first = fewshot_splits(pets, shots=2, seed=1, cache_dir=None)
    saved = pets.dataset_dir / "split_fewshot" / "shot_2-seed_1.json"

    # An image outside the selection disappears from the pool: the selection is still valid, reused,
    # and the changed pool is reported.
    unselected = next(d for d in pets.train if d not in first.train)
    Path(unselected.impath).unlink()
    smaller = DatasetSplits(pets.name, pets.dataset_dir, [d for d in pets.train if d != unselected],
                            pets.val, pets.test, pets.classnames)
    with caplog.at_level(logging.WARNING, logger="promptlab.data.fewshot"):
        again = fewshot_splits(smaller, shots=2, seed=1, cache_dir=None)
    assert again.train == first.train
    assert any("train pool of oxford_pets changed" in note for note in again.notes)

    # A selected image is deleted from disk: fail, naming the image and how to resample.
    victim = first.train[3]
    Path(victim.impath).unlink()
    rel = str(Path(victim.impath).relative_to(pets.dataset_dir))
    with pytest.raises(DatasetError, match=rf"(?s){rel}.*missing on disk.*delete {saved}"):
        fewshot_splits(pets, shots=2, seed=1, cache_dir=None)
    # ... or dropped from the split (e.g. a new split file): also a mismatch.
    without = DatasetSplits(pets.name, pets.dataset_dir, [d for d in pets.train if d != victim], pets.val,
                            pets.test, pets.classnames)
    with pytest.raises(DatasetError, match=rf"{rel} \(label {victim.label}\) is not in the train split"):
        fewshot_splits(without, shots=2, seed=1, cache_dir=None)
    # Deleting the file draws a fresh selection from the current pool.
    saved.unlink()
    fresh = fewshot_splits(without, shots=2, seed=1, cache_dir=None)
    assert victim not in fresh.train and saved.is_file()


def test_explicit_cache_dir(pets: DatasetSplits, tmp_path: Path) -> None:
    cache = tmp_path / "my_cache"
    out = fewshot_splits(pets, shots=1, seed=3, cache_dir=cache)
    assert (cache / "shot_1-seed_3.json").is_file()
    assert not (pets.dataset_dir / "split_fewshot").exists()
    assert fewshot_splits(pets, shots=1, seed=3, cache_dir=cache).train == out.train


def test_read_only_data_root_falls_back_to_user_cache(
    pets: DatasetSplits, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Simulate a read-only data root (tests may run as root, for whom chmod does not stop writes).
    real_write = fewshot._write_json_atomic

    def write_unless_data_root(path: Path, payload: dict) -> None:
        if pets.dataset_dir in path.parents:
            raise PermissionError(13, "Read-only file system", str(path))
        real_write(path, payload)

    monkeypatch.setattr(fewshot, "_write_json_atomic", write_unless_data_root)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))

    out = fewshot_splits(pets, shots=2, seed=5, cache_dir=None)
    user_cache = tmp_path / "xdg" / "promptlab" / "split_fewshot"
    written = list(user_cache.glob("oxford_pets-*/shot_2-seed_5.json"))
    assert len(written) == 1
    assert not (pets.dataset_dir / "split_fewshot" / "shot_2-seed_5.json").exists()
    reused = fewshot_splits(pets, shots=2, seed=5, cache_dir=None)
    assert reused.train == out.train
    assert any("reused from" in n and str(written[0]) in n for n in reused.notes)
