"""The offline toy world: small rendered images of coloured shapes, in the CoOp on-disk layout.

A class is a (colour, shape) pair such as "red circle". Every image also carries nuisances (position,
size, rotation, colour jitter, background, gradient, stripes, noise). The downstream world ("grid6")
splits its 6 x 6 classes like a checkerboard into base and novel halves, so that every colour and
every shape word occurs in both halves. With `spurious` > 0 the base classes' images take the
background and size tied to their shape word, a shortcut that a prompt learned on base classes can
latch onto and then wrongly apply to novel names (docs/toyworld.md, "The spurious rule").

Generation is a pure function of the spec: each image draws from its own numpy Generator seeded by
(stream, seed, split, colour, shape, index), so the same spec gives byte-identical files.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock
from PIL import Image

from promptlab.cli_errors import exit_on_user_error
from promptlab.errors import ConfigError, PathConflictError
from promptlab.io import atomic_write_json, make_shared_tempdir

# Bump when the rendered pixels or the file layout change: an existing world on disk with another
# version is then reported instead of silently mixed with new code.
GENERATOR_VERSION = 1

COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange", "pink", "cyan")
# Shapes chosen to stay distinguishable under any rotation at 32 px (a "diamond" is a rotated square).
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "ring", "heart", "crescent")
SIZES: tuple[str, ...] = ("small", "large")
BACKGROUNDS: tuple[str, ...] = ("dark", "gray", "light")
SPLITS: tuple[str, ...] = ("train", "val", "test")
CLASS_SETS: tuple[str, ...] = ("grid6", "ext")
GRID6_WORDS = 6  # grid6 uses the first 6 colours and the first 6 shapes

SPLIT_FILE = "split_zhou_ToyWorld.json"
SPEC_FILE = "toyworld.json"
ATTRIBUTES_FILE = "attributes.json"
IMAGE_DIR = "images"

# Seed-stream tags: the downstream worlds and the pretraining pool never share a random stream.
WORLD_STREAM = 1
PRETRAIN_STREAM = 2

_RGB: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (40, 175, 55),
    "blue": (40, 75, 225),
    "yellow": (235, 215, 35),
    "purple": (135, 45, 190),
    "orange": (245, 135, 25),
    "pink": (245, 125, 190),
    "cyan": (35, 205, 215),
}
_BACKGROUND_LEVELS: tuple[tuple[float, float], ...] = ((25.0, 60.0), (105.0, 145.0), (190.0, 230.0))
# Shape radius as a fraction of the image side, per size category.
_RADIUS_RANGE: tuple[tuple[float, float], ...] = ((0.17, 0.23), (0.30, 0.37))
_SUPERSAMPLE = 4  # render at 4x and average 4x4 blocks: anti-aliased edges at 32 px

CAPTION_TEMPLATES: tuple[str, ...] = (
    "a photo of a {colour} {shape}.",  # the downstream zero-shot template "a photo of a {}."
    "a {colour} {shape}.",
    "a {size} {colour} {shape}.",
    "a photo of a {size} {colour} {shape}.",
    "a {colour} {shape} on a {background} background.",
    "a {size} {colour} {shape} on a {background} background.",
    "a photo of a {colour} {shape} on a {background} background.",
    "a drawing of a {colour} {shape}.",
    "a {shape} that is {colour}.",
    "a {size} {shape} coloured {colour}.",
    "a {background} picture with a {colour} {shape}.",
    "a picture of the {colour} {shape}.",
)


@dataclass(frozen=True)
class ToyClass:
    """One class of a toy world: indices into COLOURS and SHAPES, and its base/novel half."""

    colour: int
    shape: int

    @property
    def is_base(self) -> bool:
        # Checkerboard split: every colour and every shape word occurs in both halves.
        return (self.colour + self.shape) % 2 == 0

    @property
    def name(self) -> str:
        return f"{COLOURS[self.colour]} {SHAPES[self.shape]}"

    @property
    def folder(self) -> str:
        return self.name.replace(" ", "_")


def toy_classes(classes: str = "grid6") -> list[ToyClass]:
    """Classes of a class set in label order: base classes first, then novel, each in (colour, shape) order.

    Base first makes the generic protocol rule (sorted labels, the first ceil(n/2) are base) give back
    exactly the checkerboard split: grid6 has 18 + 18 classes, ext 14 + 14.
    """
    if classes == "grid6":
        pairs = [(c, s) for c in range(GRID6_WORDS) for s in range(GRID6_WORDS)]
    elif classes == "ext":
        pairs = [
            (c, s) for c in range(len(COLOURS)) for s in range(len(SHAPES)) if c >= GRID6_WORDS or s >= GRID6_WORDS
        ]
    else:
        raise ConfigError(f"Unknown toy world class set {classes!r}; expected one of {CLASS_SETS}.")
    ordered = [ToyClass(c, s) for c, s in pairs]
    return [k for k in ordered if k.is_base] + [k for k in ordered if not k.is_base]


def all_toy_classes() -> list[ToyClass]:
    """All 64 (colour, shape) pairs of the 8 x 8 vocabulary (the pretraining classes)."""
    return [ToyClass(c, s) for c in range(len(COLOURS)) for s in range(len(SHAPES))]


@dataclass(frozen=True)
class ToyWorldSpec:
    """Everything that determines a generated world; equal specs give byte-identical worlds."""

    classes: str = "grid6"
    image_size: int = 32
    train_per_class: int = 40
    val_per_class: int = 8
    test_per_class: int = 50
    spurious: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        # Normalise numeric types so that 1 and 1.0 (CLI, Hydra, JSON) describe the same world.
        object.__setattr__(self, "spurious", float(self.spurious))
        for name in ("image_size", "train_per_class", "val_per_class", "test_per_class", "seed"):
            object.__setattr__(self, name, int(getattr(self, name)))
        if self.classes not in CLASS_SETS:
            raise ConfigError(f"ToyWorldSpec.classes={self.classes!r}; expected one of {CLASS_SETS}.")
        if self.image_size < 16 or self.image_size > 512:
            raise ConfigError(f"ToyWorldSpec.image_size={self.image_size}; expected 16..512 pixels.")
        for split in SPLITS:
            count = getattr(self, f"{split}_per_class")
            if count < 0:
                raise ConfigError(f"ToyWorldSpec.{split}_per_class={count}; expected a count >= 0.")
        if not 0.0 <= self.spurious <= 1.0:
            raise ConfigError(f"ToyWorldSpec.spurious={self.spurious}; expected a probability in [0, 1].")

    def per_class(self, split: str) -> int:
        return int(getattr(self, f"{split}_per_class"))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ToyWorldSpec:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"Unknown toy world spec keys {unknown}; expected a subset of {sorted(known)}.")
        return cls(**values)


def tied_nuisance(shape: int) -> tuple[int, int]:
    """(background, size) category indices that the spurious rule ties to a shape word."""
    return shape % len(BACKGROUNDS), (shape // len(BACKGROUNDS)) % len(SIZES)


# ----------------------------------------------------------------------------------------------
# Rendering


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside test in shape-local coordinates, where the shape fits in the unit disc (v points up)."""
    r2 = u * u + v * v
    if shape == "circle":
        return r2 <= 1.0
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.72
    if shape == "triangle":
        return _inside_polygon(u, v, _regular_polygon(3, 1.15, 1.15))
    if shape == "star":
        return _inside_polygon(u, v, _regular_polygon(5, 1.1, 0.45))
    if shape == "cross":
        arm = 0.3
        return ((np.abs(u) <= arm) & (np.abs(v) <= 0.95)) | ((np.abs(v) <= arm) & (np.abs(u) <= 0.95))
    if shape == "ring":
        return (r2 <= 1.0) & (r2 >= 0.55**2)
    if shape == "heart":
        # The classic implicit heart (x^2 + y^2 - 1)^3 - x^2 y^3 <= 0, scaled and centred into the unit disc.
        x, y = u * 1.2, v * 1.2 + 0.12
        return (x * x + y * y - 1.0) ** 3 - x * x * y**3 <= 0.0
    if shape == "crescent":
        return (r2 <= 1.0) & ((u - 0.45) ** 2 + v * v > 0.8**2)
    raise ValueError(f"Unknown shape {shape!r}; expected one of {SHAPES}.")


def _regular_polygon(points: int, outer: float, inner: float) -> np.ndarray:
    """Vertices of a regular polygon (inner == outer) or star (inner < outer), first vertex pointing up."""
    n = points if inner == outer else 2 * points
    angles = np.pi / 2 + 2 * np.pi * np.arange(n) / n
    radii = np.full(n, outer) if inner == outer else np.where(np.arange(n) % 2 == 0, outer, inner)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


def _inside_polygon(u: np.ndarray, v: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Even-odd crossing test, vectorised over the pixel grid."""
    inside = np.zeros(u.shape, dtype=bool)
    for (x0, y0), (x1, y1) in zip(vertices, np.roll(vertices, -1, axis=0), strict=True):
        if y0 == y1:
            continue
        crosses = (y0 > v) != (y1 > v)
        x_at = x0 + (v - y0) * (x1 - x0) / (y1 - y0)
        inside ^= crosses & (u < x_at)
    return inside


@dataclass(frozen=True)
class Nuisances:
    """The drawn nuisance values of one image (pixel units; categories as indices)."""

    size: int
    background: int
    radius: float
    cx: float
    cy: float
    angle: float
    rgb: tuple[float, float, float]
    bg_rgb: tuple[float, float, float]
    gradient: float
    gradient_angle: float
    stripes: float
    stripe_period: float
    stripe_angle: float
    noise: float


def sample_nuisances(rng: np.random.Generator, colour: int, image_size: int, tied: tuple[int, int] | None) -> Nuisances:
    """Draw the nuisances of one image; `tied` = (background, size) forces those two categories."""
    # Always draw the categories, even when tied, so the rest of the stream does not depend on the rule.
    background = int(rng.integers(len(BACKGROUNDS)))
    size = int(rng.integers(len(SIZES)))
    if tied is not None:
        background, size = tied
    lo, hi = _RADIUS_RANGE[size]
    radius = float(rng.uniform(lo, hi)) * image_size
    margin = radius + 1.0
    cx, cy = (float(x) for x in rng.uniform(margin, image_size - margin, size=2))
    angle = float(rng.uniform(0.0, 2 * np.pi))
    brightness = rng.uniform(0.85, 1.1)
    rgb = np.clip(np.asarray(_RGB[COLOURS[colour]]) * brightness + rng.normal(0.0, 10.0, size=3), 0, 255)
    level = rng.uniform(*_BACKGROUND_LEVELS[background])
    bg_rgb = np.clip(level + rng.normal(0.0, 8.0, size=3), 0, 255)
    gradient = float(rng.uniform(10.0, 30.0)) if rng.random() < 0.5 else 0.0
    gradient_angle = float(rng.uniform(0.0, 2 * np.pi))
    stripes = float(rng.uniform(10.0, 20.0)) if rng.random() < 0.3 else 0.0
    stripe_period = float(rng.uniform(4.0, 8.0)) * image_size / 32
    stripe_angle = float(rng.uniform(0.0, np.pi))
    noise = float(rng.uniform(2.0, 6.0))
    return Nuisances(
        size=size,
        background=background,
        radius=radius,
        cx=cx,
        cy=cy,
        angle=angle,
        rgb=(float(rgb[0]), float(rgb[1]), float(rgb[2])),
        bg_rgb=(float(bg_rgb[0]), float(bg_rgb[1]), float(bg_rgb[2])),
        gradient=gradient,
        gradient_angle=gradient_angle,
        stripes=stripes,
        stripe_period=stripe_period,
        stripe_angle=stripe_angle,
        noise=noise,
    )


def render(shape: int, nuisances: Nuisances, image_size: int, rng: np.random.Generator) -> np.ndarray:
    """Render one image as uint8 HxWx3; `rng` supplies the pixel noise."""
    n = nuisances
    k = _SUPERSAMPLE
    coords = (np.arange(image_size * k, dtype=np.float64) + 0.5) / k
    x, y = np.meshgrid(coords, coords)  # y grows downwards (image rows)

    # Background: tinted level, optional linear gradient, optional square-wave stripes.
    shade = np.zeros_like(x)
    if n.gradient:
        along = (x - image_size / 2) * math.cos(n.gradient_angle) + (y - image_size / 2) * math.sin(n.gradient_angle)
        shade += n.gradient * along / image_size
    if n.stripes:
        across = x * math.cos(n.stripe_angle) + y * math.sin(n.stripe_angle)
        shade += n.stripes * np.sign(np.sin(2 * np.pi * across / n.stripe_period))
    canvas = np.asarray(n.bg_rgb)[None, None, :] + shade[:, :, None]

    # Shape: rotate the grid into shape-local coordinates scaled by the radius (v up).
    dx, dy = (x - n.cx) / n.radius, (n.cy - y) / n.radius
    cos_a, sin_a = math.cos(n.angle), math.sin(n.angle)
    u, v = cos_a * dx + sin_a * dy, -sin_a * dx + cos_a * dy
    mask = _shape_mask(SHAPES[shape], u, v)
    canvas = np.where(mask[:, :, None], np.asarray(n.rgb)[None, None, :], canvas)

    small = canvas.reshape(image_size, k, image_size, k, 3).mean(axis=(1, 3))
    small += rng.normal(0.0, n.noise, size=small.shape)
    return np.clip(np.rint(small), 0, 255).astype(np.uint8)


def draw_example(
    toy_class: ToyClass, rng: np.random.Generator, image_size: int, tied: tuple[int, int] | None = None
) -> tuple[np.ndarray, Nuisances]:
    """Draw nuisances and render one image of a class."""
    nuisances = sample_nuisances(rng, toy_class.colour, image_size, tied)
    return render(toy_class.shape, nuisances, image_size, rng), nuisances


def caption(toy_class: ToyClass, nuisances: Nuisances, template: str) -> str:
    """Fill a caption template with the class words and the image's size and background words."""
    return template.format(
        colour=COLOURS[toy_class.colour],
        shape=SHAPES[toy_class.shape],
        size=SIZES[nuisances.size],
        background=BACKGROUNDS[nuisances.background],
    )


def world_rng(seed: int, split: str, toy_class: ToyClass, index: int) -> np.random.Generator:
    """The generator of one downstream image, independent of the class set, the split sizes and order."""
    key = [WORLD_STREAM, seed, SPLITS.index(split), toy_class.colour, toy_class.shape, index]
    return np.random.default_rng(key)


# ----------------------------------------------------------------------------------------------
# Writing a world to disk


@dataclass(frozen=True)
class ToyExample:
    """One generated image of a world split, with what the generator knows about it."""

    relpath: str  # relative to the world's images/ dir
    label: int
    toy_class: ToyClass
    image: np.ndarray  # uint8 HxWx3
    nuisances: Nuisances
    spurious_applied: bool

    def attributes(self) -> dict[str, Any]:
        return {
            "colour": COLOURS[self.toy_class.colour],
            "shape": SHAPES[self.toy_class.shape],
            "size": SIZES[self.nuisances.size],
            "background": BACKGROUNDS[self.nuisances.background],
            "spurious_applied": self.spurious_applied,
        }


def generate_split(spec: ToyWorldSpec, split: str) -> Iterator[ToyExample]:
    """Yield the examples of one split in label order, in memory (the pixels written by write_world).

    Each image has its own generator keyed by (seed, split, class, index), so a split's images do not
    depend on the other splits' sizes: a spec with fewer train images has the same test split.
    """
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; expected one of {SPLITS}.")
    for label, toy_class in enumerate(toy_classes(spec.classes)):
        for index in range(spec.per_class(split)):
            rng = world_rng(spec.seed, split, toy_class, index)
            # Drawn for every image so that the rest of the stream is the same for any `spurious`.
            rule_draw = float(rng.random())
            apply_rule = toy_class.is_base and rule_draw < spec.spurious
            # The rule is a property of the dataset: it holds in train, val and test of base classes.
            tied = tied_nuisance(toy_class.shape) if apply_rule else None
            image, nuisances = draw_example(toy_class, rng, spec.image_size, tied)
            relpath = f"{toy_class.folder}/{split}_{index:04d}.png"
            yield ToyExample(relpath, label, toy_class, image, nuisances, apply_rule)


def write_world(out_dir: Path, spec: ToyWorldSpec) -> None:
    """Generate a world into `out_dir` (created if needed). Not atomic: use ensure_toyworld."""
    out_dir = Path(out_dir)
    for toy_class in toy_classes(spec.classes):
        (out_dir / IMAGE_DIR / toy_class.folder).mkdir(parents=True, exist_ok=True)
    split_items: dict[str, list[list[Any]]] = {}
    attributes: dict[str, dict[str, Any]] = {}
    for split in SPLITS:
        split_items[split] = []
        for example in generate_split(spec, split):
            Image.fromarray(example.image, mode="RGB").save(out_dir / IMAGE_DIR / example.relpath)
            split_items[split].append([example.relpath, example.label, example.toy_class.name])
            attributes[example.relpath] = example.attributes()
    _write_json(out_dir / SPLIT_FILE, split_items)
    _write_json(out_dir / ATTRIBUTES_FILE, attributes)
    # Written last: its presence marks a complete world.
    _write_json(out_dir / SPEC_FILE, _spec_record(spec))


def _spec_record(spec: ToyWorldSpec) -> dict[str, Any]:
    return {"generator_version": GENERATOR_VERSION, "spec": asdict(spec)}


def _write_json(path: Path, payload: Any) -> None:
    atomic_write_json(path, payload, indent=1, sort_keys=True)


def ensure_toyworld(dataset_dir: Path, spec: ToyWorldSpec) -> Path:
    """Make sure `dataset_dir` holds the world of `spec`, generating it if absent; returns the dir.

    Safe when several processes (e.g. the jobs of a sweep) call it at once: they serialise on a lock
    file next to the dir, and the world is generated in a temporary sibling and renamed into place,
    so nobody ever sees a half-written world.
    """
    dataset_dir = Path(dataset_dir).resolve()
    dataset_dir.parent.mkdir(parents=True, exist_ok=True)
    if _existing_world_matches(dataset_dir, spec):
        return dataset_dir
    # filelock: an OS lock on POSIX and Windows alike (fcntl would break every import on Windows).
    with FileLock(str(dataset_dir.parent / f".{dataset_dir.name}.lock")):
        if _existing_world_matches(dataset_dir, spec):  # another process generated it meanwhile
            return dataset_dir
        # Not tempfile.mkdtemp: its 0700 would become the mode of the shared world after the rename.
        tmp_dir = make_shared_tempdir(dataset_dir.parent, prefix=f".{dataset_dir.name}.tmp-")
        try:
            write_world(tmp_dir, spec)
            if dataset_dir.is_dir():  # empty (checked above): replace it
                dataset_dir.rmdir()
            os.rename(tmp_dir, dataset_dir)
        finally:
            shutil.rmtree(tmp_dir, ignore_errors=True)
    return dataset_dir


def _existing_world_matches(dataset_dir: Path, spec: ToyWorldSpec) -> bool:
    """True if the dir holds this world; False if it is absent or empty; raises if it holds something else."""
    if not dataset_dir.exists():
        return False
    if not dataset_dir.is_dir():
        raise PathConflictError(f"Toy world path {dataset_dir} exists but is not a directory; remove it.")
    spec_path = dataset_dir / SPEC_FILE
    if not spec_path.exists():
        if not any(dataset_dir.iterdir()):
            return False
        raise PathConflictError(
            f"{dataset_dir} is not empty but has no {SPEC_FILE}, so it is not a toy world generated by "
            f"promptlab; move it away or choose another dataset dir."
        )
    try:
        found = json.loads(spec_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise PathConflictError(
            f"{spec_path} is not valid JSON ({err}); delete {dataset_dir} to regenerate the toy world."
        ) from err
    wanted = json.loads(json.dumps(_spec_record(spec)))  # same JSON types as the file (floats, ints)
    if found != wanted:
        differences = _describe_differences(found, wanted)
        raise PathConflictError(
            f"Toy world at {dataset_dir} does not match the requested one ({differences}). "
            f"Delete that directory to regenerate it, or point the dataset dir elsewhere "
            f"(each toy world spec needs its own directory)."
        )
    return True


def _describe_differences(found: dict[str, Any], wanted: dict[str, Any]) -> str:
    flat_found = {"generator_version": found.get("generator_version"), **found.get("spec", {})}
    flat_wanted = {"generator_version": wanted["generator_version"], **wanted["spec"]}
    keys = sorted(set(flat_found) | set(flat_wanted))
    return ", ".join(
        f"{key}: found {flat_found.get(key)!r}, requested {flat_wanted.get(key)!r}"
        for key in keys
        if flat_found.get(key) != flat_wanted.get(key)
    )


# ----------------------------------------------------------------------------------------------
# CLI

PROG = "promptlab-toyworld"


@exit_on_user_error(PROG)
def main(argv: Sequence[str] | None = None) -> None:
    """Console script `promptlab-toyworld`: write one toy world.

    Bad option values are usage errors (exit status 2, with the usage line); a path that holds something
    else is reported as one paragraph with exit status 1 (`exit_on_user_error`).
    """
    defaults = ToyWorldSpec()
    parser = argparse.ArgumentParser(prog=PROG, description="Generate an offline toy world in the CoOp layout.")
    parser.add_argument("--out", type=Path, required=True, help="directory of the world (created)")
    parser.add_argument("--classes", choices=CLASS_SETS, default=defaults.classes)
    parser.add_argument("--spurious", type=float, default=defaults.spurious)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--image-size", type=int, default=defaults.image_size)
    parser.add_argument("--train-per-class", type=int, default=defaults.train_per_class)
    parser.add_argument("--val-per-class", type=int, default=defaults.val_per_class)
    parser.add_argument("--test-per-class", type=int, default=defaults.test_per_class)
    args = parser.parse_args(argv)
    try:
        spec = ToyWorldSpec(
            classes=args.classes,
            image_size=args.image_size,
            train_per_class=args.train_per_class,
            val_per_class=args.val_per_class,
            test_per_class=args.test_per_class,
            spurious=args.spurious,
            seed=args.seed,
        )
    except ConfigError as err:
        parser.error(str(err))
    out = ensure_toyworld(args.out, spec)
    n_classes = len(toy_classes(spec.classes))
    print(f"Toy world {spec} ({n_classes} classes) at {out}")


if __name__ == "__main__":
    main()
