"""The toy world generator: determinism, on-disk layout, the base/novel split and the spurious rule."""

from __future__ import annotations

import json
import math
import multiprocessing
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from promptlab.toy import world as tw

TINY = tw.ToyWorldSpec(train_per_class=2, val_per_class=1, test_per_class=2)


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _split_file(world: Path) -> dict:
    return json.loads((world / tw.SPLIT_FILE).read_text())


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tw.ensure_toyworld(tmp_path_factory.mktemp("worlds") / "toyworld", TINY)


def test_same_spec_gives_byte_identical_files(tiny_world: Path, tmp_path: Path) -> None:
    again = tw.ensure_toyworld(tmp_path / "again", TINY)
    first, second = _tree_bytes(tiny_world), _tree_bytes(again)
    assert first.keys() == second.keys()
    assert first == second
    other_seed = tw.ensure_toyworld(tmp_path / "seed1", tw.ToyWorldSpec(**{**TINY.__dict__, "seed": 1}))
    assert _tree_bytes(other_seed)["images/red_circle/test_0000.png"] != first["images/red_circle/test_0000.png"]


def test_layout_and_split_file_format(tiny_world: Path) -> None:
    assert sorted(p.name for p in tiny_world.iterdir()) == sorted(
        [tw.IMAGE_DIR, tw.SPLIT_FILE, tw.SPEC_FILE, tw.ATTRIBUTES_FILE]
    )
    splits = _split_file(tiny_world)
    assert sorted(splits) == ["test", "train", "val"]
    classes = tw.toy_classes("grid6")
    for split, per_class in (("train", 2), ("val", 1), ("test", 2)):
        items = splits[split]
        assert len(items) == 36 * per_class
        for relpath, label, classname in items:
            assert isinstance(relpath, str) and isinstance(label, int) and isinstance(classname, str)
            assert classname == classes[label].name  # "red circle"
            folder, filename = relpath.split("/")
            assert folder == classname.replace(" ", "_")
            assert filename.startswith(f"{split}_") and filename.endswith(".png")
            with Image.open(tiny_world / tw.IMAGE_DIR / relpath) as image:
                assert image.mode == "RGB" and image.size == (32, 32)
        assert Counter(label for _, label, _ in items) == {label: per_class for label in range(36)}
    assert splits["train"][0] == ["red_circle/train_0000.png", 0, "red circle"]
    n_images = sum(1 for _ in (tiny_world / tw.IMAGE_DIR).rglob("*.png"))
    assert n_images == 36 * 5
    record = json.loads((tiny_world / tw.SPEC_FILE).read_text())
    assert record == {"generator_version": tw.GENERATOR_VERSION, "spec": TINY.__dict__}
    attributes = json.loads((tiny_world / tw.ATTRIBUTES_FILE).read_text())
    assert set(attributes) == {relpath for items in splits.values() for relpath, _, _ in items}
    assert attributes["red_circle/train_0000.png"]["colour"] == "red"
    assert attributes["red_circle/train_0000.png"]["shape"] == "circle"


@pytest.mark.parametrize(("classes", "n_base", "n_novel"), [("grid6", 18, 18), ("ext", 14, 14)])
def test_base_first_labels_reproduce_checkerboard(classes: str, n_base: int, n_novel: int) -> None:
    ordered = tw.toy_classes(classes)
    assert len(ordered) == n_base + n_novel
    assert len(set(ordered)) == len(ordered)
    # The generic protocol rule: sorted labels, the first ceil(n/2) are base.
    cut = math.ceil(len(ordered) / 2)
    assert all((k.colour + k.shape) % 2 == 0 for k in ordered[:cut])
    assert all((k.colour + k.shape) % 2 == 1 for k in ordered[cut:])
    # Every word of the class set occurs in both halves.
    for attr in ("colour", "shape"):
        assert {getattr(k, attr) for k in ordered[:cut]} == {getattr(k, attr) for k in ordered[cut:]}
    words = {tw.COLOURS[k.colour] for k in ordered} | {tw.SHAPES[k.shape] for k in ordered}
    expected = set(tw.COLOURS[:6] + tw.SHAPES[:6]) if classes == "grid6" else set(tw.COLOURS + tw.SHAPES)
    assert words == expected


def test_ext_is_the_rest_of_the_8x8_grid() -> None:
    grid6, ext = set(tw.toy_classes("grid6")), set(tw.toy_classes("ext"))
    assert not grid6 & ext
    assert grid6 | ext == set(tw.all_toy_classes())
    assert len(tw.all_toy_classes()) == 64


def _border_median(path: Path) -> float:
    pixels = np.asarray(Image.open(path), dtype=np.float64).mean(axis=2)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    return float(np.median(border))


def test_spurious_rule_ties_base_nuisances_to_the_shape_word(tmp_path: Path) -> None:
    spec = tw.ToyWorldSpec(train_per_class=3, val_per_class=2, test_per_class=4, spurious=1.0)
    world = tw.ensure_toyworld(tmp_path / "w", spec)
    attributes = json.loads((world / tw.ATTRIBUTES_FILE).read_text())
    novel_follows = []
    for relpath, attr in attributes.items():
        toy_class = tw.ToyClass(tw.COLOURS.index(attr["colour"]), tw.SHAPES.index(attr["shape"]))
        background, size = tw.tied_nuisance(toy_class.shape)
        follows = attr["background"] == tw.BACKGROUNDS[background] and attr["size"] == tw.SIZES[size]
        if toy_class.is_base:
            assert follows and attr["spurious_applied"], relpath  # in train, val and test alike
        else:
            assert not attr["spurious_applied"]
            novel_follows.append(follows)
    for split in tw.SPLITS:
        assert any(p.startswith("red_circle/" + split) for p in attributes)
    # Novel classes draw background and size at random: about 1/6 match the tied combination.
    assert 0 < sum(novel_follows) < 0.4 * len(novel_follows)
    # The recorded background is what was drawn: dark borders are darker than light ones.
    medians = {name: [] for name in tw.BACKGROUNDS}
    for relpath, attr in attributes.items():
        medians[attr["background"]].append(_border_median(world / tw.IMAGE_DIR / relpath))
    assert max(medians["dark"]) < min(medians["gray"]) < max(medians["gray"]) < min(medians["light"])


def test_without_spurious_base_classes_vary_and_pixels_differ_only_in_tied_images() -> None:
    spec1 = tw.ToyWorldSpec(train_per_class=0, val_per_class=0, test_per_class=6, spurious=1.0)
    spec0 = tw.ToyWorldSpec(train_per_class=0, val_per_class=0, test_per_class=6, spurious=0.0)
    free = list(tw.generate_split(spec0, "test"))
    base_combos = {(e.nuisances.background, e.nuisances.size) for e in free if e.toy_class.is_base}
    assert len(base_combos) == 6
    assert not any(e.spurious_applied for e in free)
    # Novel images are the same in both worlds: the rule draw does not shift the random stream.
    for e1, e0 in zip(tw.generate_split(spec1, "test"), free, strict=True):
        if not e1.toy_class.is_base:
            assert np.array_equal(e1.image, e0.image)


def test_split_images_do_not_depend_on_other_split_sizes() -> None:
    small = tw.ToyWorldSpec(train_per_class=0, val_per_class=0, test_per_class=2)
    for a, b in zip(tw.generate_split(small, "test"), tw.generate_split(TINY, "test"), strict=True):
        assert a.relpath == b.relpath and np.array_equal(a.image, b.image)


def test_captions_include_the_downstream_template() -> None:
    toy_class = tw.ToyClass(colour=3, shape=6)
    _, nuisances = tw.draw_example(toy_class, np.random.default_rng(0), 32)
    captions = [tw.caption(toy_class, nuisances, t) for t in tw.CAPTION_TEMPLATES]
    assert "a photo of a {}.".format("yellow heart") in captions
    assert 10 <= len(set(captions)) == len(tw.CAPTION_TEMPLATES)
    assert any(tw.SIZES[nuisances.size] in c for c in captions)
    assert any(tw.BACKGROUNDS[nuisances.background] in c for c in captions)
    assert all("yellow" in c and "heart" in c for c in captions)


def test_ensure_is_idempotent_and_rejects_another_spec(tiny_world: Path) -> None:
    spec_file = tiny_world / tw.SPEC_FILE
    mtime = spec_file.stat().st_mtime_ns
    assert tw.ensure_toyworld(tiny_world, TINY) == tiny_world
    assert spec_file.stat().st_mtime_ns == mtime
    with pytest.raises(FileExistsError, match=r"seed: found 0, requested 5") as err:
        tw.ensure_toyworld(tiny_world, tw.ToyWorldSpec(**{**TINY.__dict__, "seed": 5}))
    assert str(tiny_world) in str(err.value) and "Delete that directory" in str(err.value)


def test_ensure_refuses_a_foreign_directory_but_fills_an_empty_one(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a toy world"):
        tw.ensure_toyworld(foreign, TINY)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (tw.ensure_toyworld(empty, TINY) / tw.SPEC_FILE).is_file()


def _ensure_in_child(path: str) -> None:
    tw.ensure_toyworld(Path(path), TINY)


def test_concurrent_ensure_yields_one_complete_world(tmp_path: Path) -> None:
    target = tmp_path / "shared"
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_ensure_in_child, args=(str(target),)) for _ in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    assert len(_split_file(target)["test"]) == 36 * 2
    leftovers = [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name]
    assert leftovers == []


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("spurious", 1.5, "spurious=1.5"),
        ("classes", "grid7", "grid7"),
        ("test_per_class", -1, "test_per_class"),
    ],
)
def test_spec_validation(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tw.ToyWorldSpec(**{field: value})


def test_numeric_types_are_normalised() -> None:
    assert tw.ToyWorldSpec(spurious=1) == tw.ToyWorldSpec(spurious=1.0)
    assert isinstance(tw.ToyWorldSpec(spurious=1).spurious, float)


def test_cli_writes_a_world_and_reports_bad_values(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "cli"
    tw.main(
        [
            "--out",
            str(out),
            "--classes",
            "ext",
            "--spurious",
            "0",
            "--seed",
            "2",
            "--train-per-class",
            "1",
            "--val-per-class",
            "0",
            "--test-per-class",
            "1",
        ]
    )
    record = json.loads((out / tw.SPEC_FILE).read_text())
    assert record["spec"]["classes"] == "ext" and record["spec"]["seed"] == 2
    assert len(_split_file(out)["train"]) == 28
    assert "28 classes" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        tw.main(["--out", str(tmp_path / "bad"), "--spurious", "2"])
    assert exit_info.value.code == 2
    assert "spurious=2.0" in capsys.readouterr().err
