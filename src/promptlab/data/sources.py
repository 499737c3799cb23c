"""Where each dataset can be downloaded, how to check what arrives, and where its files go (the registry
behind `promptlab-data prepare`).

A `Source` lists `Download`s: a URL, the file name to keep it under, a checksum when one is published,
and what to do with it: an archive is unpacked and the `moves` put its folders where the CoOp layout
wants them (`"dtd/images" -> "images"`); a single file (a split file, a .mat) goes to `dest`. Datasets
that cannot be downloaded (ImageNet's licence, dead links) have `manual` steps instead.

Provenance of every URL and checksum:
- image archives and their MD5s: the download code of torchvision 0.29.1 (`torchvision/datasets/dtd.py`,
  `oxford_iiit_pet.py`, `flowers102.py`, `food101.py`, `eurosat.py`, `caltech.py`, `sun397.py`,
  `fgvc_aircraft.py`), which checks the same files; torchvision publishes MD5, not SHA-256, so MD5 is
  what is verified for them. No checksum is published for FGVCAircraft or the ImageNet variants: their
  SHA-256 is computed, printed and kept in the dataset folder (`prepared.json`), so a later download can
  be compared with it.
- the split files: the reference's own copies, linked from CoOp's DATASETS.md (github.com/KaiyangZhou/CoOp
  at ff61507) as Google Drive files; the ids are those of the links there. No checksum is published for
  them; what `prepare` verifies is their content (the class count of the config, every listed image
  present), which is what a wrong or truncated split file would fail.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: CoOp's DATASETS.md, the reference instructions these sources follow.
COOP_DATASETS = "https://github.com/KaiyangZhou/CoOp/blob/main/DATASETS.md"


def google_drive(file_id: str) -> str:
    """The direct download URL of a public Google Drive file (confirm=t: no interstitial page for large files)."""
    return f"https://drive.usercontent.google.com/download?id={file_id}&export=download&confirm=t"


@dataclass(frozen=True)
class Download:
    """One file to fetch. `md5` / `sha256`: the published checksum (None: none is published).

    An archive (`moves` given) is unpacked and each `(path in the archive, path in the dataset folder)` of
    `moves` is moved into place ("" as destination: the folder's content goes to the dataset folder itself).
    A plain file goes to `dest` in the dataset folder. `inner`: archives inside this one, unpacked in turn
    (Caltech101's zip holds a tar.gz).
    """

    url: str
    filename: str
    md5: str | None = None
    sha256: str | None = None
    moves: tuple[tuple[str, str], ...] = ()
    dest: str | None = None
    inner: tuple[str, ...] = ()

    @property
    def is_archive(self) -> bool:
        return bool(self.moves)


@dataclass(frozen=True)
class Source:
    """How to get one dataset (config name `dataset`) into its CoOp layout."""

    dataset: str
    downloads: tuple[Download, ...] = ()
    manual: str | None = None  # steps a person must take (then `prepare` finishes what it can)
    notes: tuple[str, ...] = field(default_factory=tuple)


def _split(name: str, drive_id: str) -> Download:
    return Download(google_drive(drive_id), f"split_zhou_{name}.json", dest=f"split_zhou_{name}.json")


SOURCES: dict[str, Source] = {
    "dtd": Source("dtd", (
        Download("https://www.robots.ox.ac.uk/~vgg/data/dtd/download/dtd-r1.0.1.tar.gz", "dtd-r1.0.1.tar.gz",
                 md5="fff73e5086ae6bdbea199a49dfb8a4c1", moves=(("dtd/images", "images"),)),
        _split("DescribableTextures", "1u3_QfB467jqHgNXC00UIzbLZRQCg2S7x"),
    )),
    "oxford_pets": Source("oxford_pets", (
        Download("https://www.robots.ox.ac.uk/~vgg/data/pets/data/images.tar.gz", "images.tar.gz",
                 md5="5c4f3ee8e5d25df40f4fd59a7f44e54c", moves=(("images", "images"),)),
        Download("https://www.robots.ox.ac.uk/~vgg/data/pets/data/annotations.tar.gz", "annotations.tar.gz",
                 md5="95a8c909bbe2e81eed6a22bccdf3f68f", moves=(("annotations", "annotations"),)),
        _split("OxfordPets", "1501r8Ber4nNKvmlFVQZ8SeUHTcdTTEqs"),
    )),
    "oxford_flowers": Source("oxford_flowers", (
        Download("https://www.robots.ox.ac.uk/~vgg/data/flowers/102/102flowers.tgz", "102flowers.tgz",
                 md5="52808999861908f626f3c1f4e79d11fa", moves=(("jpg", "jpg"),)),
        Download("https://www.robots.ox.ac.uk/~vgg/data/flowers/102/imagelabels.mat", "imagelabels.mat",
                 md5="e0620be6f572b9609742df49c70aed4d", dest="imagelabels.mat"),
        _split("OxfordFlowers", "1Pp0sRXzZFZq15zVOzKjKBu4A9i01nozT"),
    )),
    "food101": Source("food101", (
        Download("http://data.vision.ee.ethz.ch/cvl/food-101.tar.gz", "food-101.tar.gz",
                 md5="85eeb15f3717b99a5da872d97d918f87", moves=(("food-101/images", "images"),)),
        _split("Food101", "1QK0tGi096I0Ba6kggatX1ee6dJFIcEJl"),
    )),
    "eurosat": Source("eurosat", (
        Download("https://huggingface.co/datasets/torchgeo/eurosat/resolve/c877bcd43f099cd0196738f714544e355477f3fd/"
                 "EuroSAT.zip", "EuroSAT.zip", md5="c8fa014336c82ac7804f0398fcb19387", moves=(("2750", "2750"),)),
        _split("EuroSAT", "1Ip7yaCWFi0eaOFUGga0lUdVi_DDQth1o"),
    )),
    "caltech101": Source("caltech101", (
        Download("https://data.caltech.edu/records/mzrjq-6wc02/files/caltech-101.zip", "caltech-101.zip",
                 md5="3138e1922a9193bfa496528edbbc45d0", inner=("caltech-101/101_ObjectCategories.tar.gz",),
                 moves=(("101_ObjectCategories", "101_ObjectCategories"),)),
        _split("Caltech101", "1hyarUivQE36mY6jSomru6Fjd-JzwcCzN"),
    )),
    "fgvc_aircraft": Source("fgvc_aircraft", (
        Download("https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/archives/fgvc-aircraft-2013b.tar.gz",
                 "fgvc-aircraft-2013b.tar.gz", moves=(("fgvc-aircraft-2013b/data", ""),)),
    )),
    "sun397": Source("sun397", (
        Download("http://vision.princeton.edu/projects/2010/SUN/SUN397.tar.gz", "SUN397.tar.gz",
                 md5="8ca2778205c41d23104230ba66911c7a", moves=(("SUN397", "SUN397"),)),
        _split("SUN397", "1y2RD81BYuiyvebdN-JymPfyWYcd8_MUq"),
    ), notes=("SUN397.tar.gz is about 37 GB.",)),
    "ucf101": Source("ucf101", (
        Download(google_drive("10Jqome3vtUA2keJkNanAiFpgbyC9Hc2O"), "UCF-101-midframes.zip",
                 moves=(("UCF-101-midframes", "UCF-101-midframes"),)),
        _split("UCF101", "1I0S0q91hJfsV9Gf4xDIjgDq4AqBNJb1y"),
    ), notes=("The middle frames are the reference's own extraction (CoOp DATASETS.md, UCF101).",)),
    "stanford_cars": Source("stanford_cars", (
        _split("StanfordCars", "1ObCFbaAgVu0I-k_Au-gIUcefirdAuizT"),
    ), manual=(
        "The Stanford download links of StanfordCars are dead (CoOp issues #61, #29) and no public mirror "
        "with a published checksum is known. Get the images from a copy you trust (e.g. the Kaggle dataset "
        "'jessicali9530/stanford-cars-dataset') and place them as\n"
        "  <root>/stanford_cars/cars_train/00001.jpg ... (8,144 images)\n"
        "  <root>/stanford_cars/cars_test/00001.jpg ...  (8,041 images)\n"
        "then run `promptlab-data prepare stanford_cars --root <root>` again: it fetches the split file and "
        "checks every image it lists."
    )),
    "imagenet": Source("imagenet", manual=(
        "ImageNet cannot be downloaded without an account (its licence). To prepare it:\n"
        "  1. Register at https://image-net.org and download ILSVRC2012_img_train.tar (138 GB) and "
        "ILSVRC2012_img_val.tar (6.3 GB).\n"
        "  2. Extract the training set into class folders: mkdir -p <root>/imagenet/images/train && tar -xf "
        "ILSVRC2012_img_train.tar -C <root>/imagenet/images/train, then in that folder, for each n*.tar: "
        "mkdir -p \"${f%.tar}\" && tar -xf \"$f\" -C \"${f%.tar}\" && rm \"$f\".\n"
        "  3. Extract the validation set into the same class folders: <root>/imagenet/images/val/<wnid>/*.JPEG "
        "(e.g. with the valprep.sh script of the PyTorch ImageNet example, or torchvision.datasets.ImageNet("
        "root, split='val'), which sorts the images with the official devkit).\n"
        "  4. Run `promptlab-data prepare imagenet --root <root>`: it checks the 1,000 class folders and writes "
        "imagenet/classnames.txt from open_clip's class names (the same names CoOp's file holds), also into "
        "the ImageNet variant folders present."
    )),
    "imagenet_v2": Source("imagenet_v2", (
        Download("https://s3-us-west-2.amazonaws.com/imagenetv2public/imagenetv2-matched-frequency.tar.gz",
                 "imagenetv2-matched-frequency.tar.gz",
                 moves=(("imagenetv2-matched-frequency-format-val", "imagenetv2-matched-frequency-format-val"),)),
    )),
    "imagenet_a": Source("imagenet_a", (
        Download("https://people.eecs.berkeley.edu/~hendrycks/imagenet-a.tar", "imagenet-a.tar",
                 moves=(("imagenet-a", "imagenet-a"),)),
    ), notes=("Its 200 classes are named through imagenet/classnames.txt: prepare imagenet first.",)),
    "imagenet_r": Source("imagenet_r", (
        Download("https://people.eecs.berkeley.edu/~hendrycks/imagenet-r.tar", "imagenet-r.tar",
                 moves=(("imagenet-r", "imagenet-r"),)),
    ), notes=("Its 200 classes are named through imagenet/classnames.txt: prepare imagenet first.",)),
    "imagenet_sketch": Source("imagenet_sketch", manual=(
        "ImageNet-Sketch is distributed through Google Drive and Kaggle (github.com/HaohanWang/ImageNet-Sketch). "
        "Download ImageNet-Sketch.zip from there and extract it so that the class folders are "
        "<root>/imagenet-sketch/images/<wnid>/*.JPEG, then run `promptlab-data prepare imagenet_sketch --root "
        "<root>` to add the class names and check it."
    )),
}
