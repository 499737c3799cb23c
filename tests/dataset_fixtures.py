"""Tiny on-disk fixtures in the exact layout of each dataset that promptlab reads.

`build_fixture(name, data_root)` writes `data_root/<dataset_dir>/...` for the dataset config `name`
(real folder names, file names and list/split-file formats from CoOp's datasets/*.py and DATASETS.md, a
handful of classes, 8x8 images) and returns an `Expected` with what the reader should find.
`dataset_config(name, **overrides)` loads the real conf/dataset/<name>.yaml with num_classes set to the
fixture's class count. Class names marked "synthetic" below are invented to give every dataset a name
with an underscore; all other names are real classes of the dataset.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from PIL import Image

CONF_DIR = Path(__file__).resolve().parents[1] / "src" / "promptlab" / "conf" / "dataset"
SPLITS = ("train", "val", "test")
DEFAULT_COUNTS = {"train": 3, "val": 2, "test": 2}


def _encode(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 90)).save(buf, format=fmt)
    return buf.getvalue()


IMAGE_BYTES = {"JPEG": _encode("JPEG"), "PNG": _encode("PNG")}


def write_image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(IMAGE_BYTES["PNG" if path.suffix.lower() == ".png" else "JPEG"])


@dataclass
class Expected:
    """What a reader should return for a fixture; paths are relative to the dataset folder."""

    dataset_dir: Path
    classnames: list[str]
    items: dict[str, list[tuple[str, int]]] = field(default_factory=dict)  # split -> sorted (path, label)

    def counts(self) -> dict[str, int]:
        return {split: len(self.items[split]) for split in SPLITS}


# --- split_zhou datasets ------------------------------------------------------------------------------
# Per dataset: the image path template (relative to image_dir) and classes as
# (folder on disk, class name as stored in the split file, class name the reader must return).
# Template fields: {folder}, {n} (an image counter unique within the dataset), {compact} (folder without
# "_" and "/"), {train_or_test} (StanfordCars keeps its images in cars_train/ and cars_test/).
SPLIT_ZHOU: dict[str, dict[str, Any]] = {
    "oxford_pets": {  # images/<Breed>_<n>.jpg, names lower case (CoOp oxford_pets.py, read_data)
        "path": "{folder}_{n}.jpg",
        "classes": [
            ("Abyssinian", "abyssinian", "abyssinian"),
            ("american_bulldog", "american_bulldog", "american bulldog"),
            ("great_pyrenees", "great_pyrenees", "great pyrenees"),
            ("scottish_terrier", "scottish_terrier", "scottish terrier"),
            ("yorkshire_terrier", "yorkshire_terrier", "yorkshire terrier"),
        ],
    },
    "caltech101": {  # 101_ObjectCategories/<folder>/image_<n>.jpg
        "path": "{folder}/image_{n:04d}.jpg",
        "classes": [
            ("accordion", "accordion", "accordion"),
            ("airplanes", "airplanes", "airplane"),  # folder name in the file: renamed by the config
            ("dollar_bill", "dollar_bill", "dollar bill"),
            ("Faces", "face", "face"),  # already renamed, as in the released split file
            ("water_lilly", "water_lilly", "water lilly"),
        ],
        # On disk but not in the split file: the reference excludes them (caltech101.py, IGNORED).
        "extra_files": ["BACKGROUND_Google/image_0001.jpg", "Faces_easy/image_0001.jpg"],
    },
    "stanford_cars": {  # paths relative to the dataset folder (image_dir "")
        "path": "cars_{train_or_test}/{n:05d}.jpg",
        "classes": [
            ("", "2000 AM General Hummer SUV", "2000 AM General Hummer SUV"),
            ("", "2012 Tesla Model S", "2012 Tesla Model S"),
            ("", "2012 Ram C/V Cargo Van Minivan", "2012 Ram C/V Cargo Van Minivan"),
            ("", "2007 Bentley Continental_GT Coupe", "2007 Bentley Continental GT Coupe"),  # synthetic "_"
        ],
    },
    "oxford_flowers": {  # jpg/image_<n>.jpg, names from cat_to_name.json
        "path": "image_{n:05d}.jpg",
        "classes": [
            ("", "pink primrose", "pink primrose"),
            ("", "hard-leaved pocket orchid", "hard-leaved pocket orchid"),
            ("", "canterbury bells", "canterbury bells"),
            ("", "sweet_pea", "sweet pea"),  # synthetic "_" (real: "sweet pea")
            ("", "english marigold", "english marigold"),
        ],
    },
    "food101": {  # images/<class>/<id>.jpg
        "path": "{folder}/{n:07d}.jpg",
        "classes": [(c, c, c.replace("_", " ")) for c in
                    ("apple_pie", "baby_back_ribs", "baklava", "beef_carpaccio", "bibimbap")],
    },
    "sun397": {  # SUN397/<letter>/<name>[/<sub>]/sun_<id>.jpg, name "<sub> <name>" (sun397.py, read_data)
        "path": "{folder}/sun_{n:012d}.jpg",
        "classes": [
            ("a/abbey", "abbey", "abbey"),
            ("a/apartment_building/outdoor", "outdoor apartment_building", "outdoor apartment building"),
            ("b/bakery/shop", "shop bakery", "shop bakery"),
            ("b/bus_interior", "bus_interior", "bus interior"),
        ],
    },
    "dtd": {  # images/<texture>/<texture>_<n>.jpg
        "path": "{folder}/{folder}_{n:04d}.jpg",
        "classes": [(c, c, c.replace("_", " ")) for c in
                    ("banded", "blotchy", "cobwebbed", "polka-dotted", "zig_zagged")],  # last: synthetic "_"
    },
    "eurosat": {  # 2750/<Folder>/<Folder>_<n>.jpg; descriptive names (eurosat.py, NEW_CNAMES)
        "path": "{folder}/{folder}_{n}.jpg",
        "classes": [
            ("AnnualCrop", "Annual Crop Land", "Annual Crop Land"),  # as in the released split file
            ("Forest", "Forest", "Forest"),
            ("Highway", "Highway", "Highway or Road"),  # folder name in the file: renamed by the config
            ("SeaLake", "Sea or Lake", "Sea or Lake"),
        ],
    },
    "ucf101": {  # UCF-101-midframes/<Action_Name>/v_<ActionName>_g<nn>_c01.jpg (ucf101.py, read_data)
        "path": "{folder}/v_{compact}_g{n:02d}_c01.jpg",
        "classes": [(c, c, c.replace("_", " ")) for c in
                    ("Apply_Eye_Makeup", "Baby_Crawling", "Basketball", "Playing_Daf", "Yo_Yo")],
    },
}

# --- ImageNet and variants ----------------------------------------------------------------------------
WNIDS = [
    ("n01440764", "tench"),
    ("n01443537", "goldfish"),
    ("n01484850", "great white shark"),
    ("n01496331", "electric_ray"),  # synthetic "_" (CLIP's list: "electric ray")
    ("n01498041", "stingray"),
    ("n02085620", "Chihuahua"),
]
# Which wnids (indices into WNIDS) have image folders: A and R are subsets of the 1000 classes.
VARIANT_WNIDS = {"imagenet_sketch": [0, 1, 2, 3, 4, 5], "imagenet_a": [1, 3, 5], "imagenet_r": [0, 3, 4, 5]}
VARIANT_FILE = {"imagenet_sketch": "sketch_{n}.JPEG", "imagenet_a": "0.{n:06d}_goldfish_0.86.jpg",
                "imagenet_r": "art_{n}.jpg"}

FGVC_VARIANTS = ["707-320", "A300B4", "Cessna 172", "F/A-18", "Tu_154"]  # last: synthetic "_" (real "Tu-154")

IMAGEFOLDER_CLASSES = ["golden_retriever", "tabby_cat", "zebra"]
IMAGEFOLDER_PER_CLASS = 10


def dataset_config(name: str, **overrides: Any) -> DictConfig:
    """The real conf/dataset/<name>.yaml, with `overrides` applied (e.g. num_classes=5)."""
    cfg = OmegaConf.load(CONF_DIR / f"{name}.yaml")
    for key, value in overrides.items():
        cfg[key] = value
    return cfg


def fixture_config(name: str, expected: Expected, **overrides: Any) -> DictConfig:
    cfg = dataset_config(name, num_classes=len(expected.classnames), **overrides)
    if name == "imagefolder" and "dataset_dir" not in overrides:
        cfg.dataset_dir = expected.dataset_dir.name
    return cfg


ALL_FIXTURES = [*SPLIT_ZHOU, "fgvc_aircraft", "imagenet", "imagenet_v2", "imagenet_sketch", "imagenet_a",
                "imagenet_r", "imagefolder"]


def build_fixture(name: str, data_root: Path, counts: dict[str, int] | None = None) -> Expected:
    """Write the fixture for dataset config `name` under `data_root`; return what should be read."""
    counts = counts or DEFAULT_COUNTS
    cfg = dataset_config(name)
    if name in SPLIT_ZHOU:
        return _build_split_zhou(name, cfg, data_root, counts)
    builders = {"fgvc_aircraft": _build_fgvc, "imagenet": _build_imagenet, "imagenet_v2": _build_imagenet_v2,
                "imagefolder": _build_imagefolder}
    builder = builders.get(name, _build_wnid_variant)
    return builder(name, cfg, data_root, counts)


def _sorted_items(items: dict[str, list[tuple[str, int]]]) -> dict[str, list[tuple[str, int]]]:
    return {split: sorted(items.get(split, [])) for split in SPLITS}


def _build_split_zhou(name: str, cfg: DictConfig, root: Path, counts: dict[str, int]) -> Expected:
    spec = SPLIT_ZHOU[name]
    dataset_dir = root / cfg.dataset_dir
    image_dir = str(cfg.image_dir or "")
    image_root = dataset_dir / image_dir
    split_json: dict[str, list[list[Any]]] = {s: [] for s in SPLITS}
    items: dict[str, list[tuple[str, int]]] = {s: [] for s in SPLITS}
    n = 0
    for label, (folder, stored, _) in enumerate(spec["classes"]):
        for split in SPLITS:
            for _ in range(counts[split]):
                n += 1
                compact = folder.replace("_", "").replace("/", "")
                train_or_test = "test" if split == "test" else "train"
                rel = spec["path"].format(folder=folder, n=n, compact=compact, train_or_test=train_or_test)
                write_image(image_root / rel)
                split_json[split].append([rel, label, stored])
                items[split].append(((Path(image_dir) / rel).as_posix(), label))
    for rel in spec.get("extra_files", []):
        write_image(image_root / rel)
    (dataset_dir / cfg.split_file).write_text(json.dumps(split_json, indent=2))
    return Expected(dataset_dir, [c[2] for c in spec["classes"]], _sorted_items(items))


def _build_fgvc(name: str, cfg: DictConfig, root: Path, counts: dict[str, int]) -> Expected:
    dataset_dir = root / cfg.dataset_dir
    dataset_dir.mkdir(parents=True)
    (dataset_dir / cfg.classnames_file).write_text("".join(f"{v}\n" for v in FGVC_VARIANTS))
    items: dict[str, list[tuple[str, int]]] = {s: [] for s in SPLITS}
    image_id = 1_000_000
    for split in SPLITS:
        lines = []
        for label, variant in enumerate(FGVC_VARIANTS):
            for _ in range(counts[split]):
                image_id += 37  # ids are not contiguous in the real lists either
                write_image(dataset_dir / cfg.image_dir / f"{image_id}.jpg")
                lines.append(f"{image_id} {variant}\n")
                items[split].append((f"{cfg.image_dir}/{image_id}.jpg", label))
        (dataset_dir / cfg.split_files[split]).write_text("".join(reversed(lines)))  # order must not matter
    return Expected(dataset_dir, [v.replace("_", " ") for v in FGVC_VARIANTS], _sorted_items(items))


def _write_classnames(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{wnid} {name}\n" for wnid, name in WNIDS))


def _build_imagenet(name: str, cfg: DictConfig, root: Path, counts: dict[str, int]) -> Expected:
    dataset_dir = root / cfg.dataset_dir
    _write_classnames(dataset_dir / cfg.classnames_file)
    items: dict[str, list[tuple[str, int]]] = {s: [] for s in SPLITS}
    n = 0
    # Folders written in reverse order: labels must follow the sorted wnids, not creation order.
    for label, (wnid, _) in reversed(list(enumerate(WNIDS))):
        for _ in range(counts["train"]):
            n += 1
            rel = f"{cfg.image_dir}/{cfg.train_dir}/{wnid}/{wnid}_{n}.JPEG"
            write_image(dataset_dir / rel)
            items["train"].append((rel, label))
        for _ in range(counts["test"]):
            n += 1
            rel = f"{cfg.image_dir}/{cfg.test_dir}/{wnid}/ILSVRC2012_val_{n:08d}.JPEG"
            write_image(dataset_dir / rel)
            items["test"].append((rel, label))
        (dataset_dir / cfg.image_dir / cfg.train_dir / wnid / ".DS_Store").write_bytes(b"hidden")
    items["val"] = list(items["test"])  # ImageNet's val set is its test set (CoOp imagenet.py)
    return Expected(dataset_dir, [c.replace("_", " ") for _, c in WNIDS], _sorted_items(items))


def _build_imagenet_v2(name: str, cfg: DictConfig, root: Path, counts: dict[str, int]) -> Expected:
    dataset_dir = root / cfg.dataset_dir
    _write_classnames(dataset_dir / cfg.classnames_file)
    items: list[tuple[str, int]] = []
    for label in range(len(WNIDS)):
        for i in range(counts["test"]):
            rel = f"{cfg.image_dir}/{label}/{label:03d}{i}fa9c4e.jpeg"
            write_image(dataset_dir / rel)
            items.append((rel, label))
    return Expected(dataset_dir, [c.replace("_", " ") for _, c in WNIDS], _sorted_items({"test": items}))


def _build_wnid_variant(name: str, cfg: DictConfig, root: Path, counts: dict[str, int]) -> Expected:
    dataset_dir = root / cfg.dataset_dir
    _write_classnames(dataset_dir / cfg.classnames_file)
    present = VARIANT_WNIDS[name]
    items: list[tuple[str, int]] = []
    n = 0
    for label, index in enumerate(present):  # relabelled 0..k-1 in sorted wnid order
        wnid = WNIDS[index][0]
        for _ in range(counts["test"]):
            n += 1
            rel = f"{cfg.image_dir}/{wnid}/{VARIANT_FILE[name].format(n=n)}"
            write_image(dataset_dir / rel)
            items.append((rel, label))
    (dataset_dir / cfg.image_dir / "README.txt").write_text("not a class folder\n")
    classnames = [WNIDS[i][1].replace("_", " ") for i in present]
    return Expected(dataset_dir, classnames, _sorted_items({"test": items}))


def _build_imagefolder(name: str, cfg: DictConfig, root: Path, counts: dict[str, int]) -> Expected:
    """Class folders directly under `my_photos/`; the split is derived, so `items` holds all images
    under "all" and the per-split lists are left to the reader's rule (see test_readers)."""
    dataset_dir = root / "my_photos"
    everything = []
    for label, folder in enumerate(IMAGEFOLDER_CLASSES):
        for i in range(IMAGEFOLDER_PER_CLASS):
            rel = f"{folder}/IMG_{i:04d}.png"
            write_image(dataset_dir / rel)
            everything.append((rel, label))
    (dataset_dir / "zebra" / "notes.txt").write_text("not an image\n")
    (dataset_dir / ".thumbnails").mkdir()
    classnames = [c.replace("_", " ") for c in IMAGEFOLDER_CLASSES]
    return Expected(dataset_dir, classnames, {"all": sorted(everything)})
