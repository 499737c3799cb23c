"""Pretrain the tiny offline CLIP ("toyclip") from scratch on the toy world vocabulary.

`python -m promptlab.toy.pretrain [overrides]` (config: conf/pretrain.yaml). The model is open_clip's own
`CLIP` class with QuickGELU and OpenAI-style shapes, trained with the CLIP contrastive loss on
rendered images of all 64 (colour, shape) classes with random nuisances (no spurious rule), captioned
from `toyworld.CAPTION_TEMPLATES`. The images come from their own random stream, disjoint from the
downstream worlds. The result is saved as an OpenAI-format fp16 state dict, so that
`open_clip.load_openai_model(path)` rebuilds it from tensor shapes like any OpenAI checkpoint, plus a
JSON record of how it was made and how well it does zero-shot on the downstream worlds.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
from open_clip.tokenizer import SimpleTokenizer

from promptlab.cli_errors import user_errors_in_hydra_job
from promptlab.errors import ConfigError, MissingPathError
from promptlab.io import atomic_torch_save, atomic_write_bytes, atomic_write_json
from promptlab.models.frozen import encode_text_embeddings
from promptlab.models.loading import file_sha256
from promptlab.toy import world as tw

log = logging.getLogger(__name__)

ZERO_SHOT_TEMPLATE = "a photo of a {}."  # the template the downstream zero-shot baseline uses
ASSET_DIR = Path(__file__).resolve().parent / "assets"
# The configs ship inside the package (promptlab/conf).
CONFIG_DIR = Path(__file__).resolve().parents[1] / "conf"


# ----------------------------------------------------------------------------------------------
# Model


@dataclass(frozen=True)
class TinyClipArch:
    """Shapes of the tiny CLIP. Widths are multiples of 64 because OpenAI-format loaders infer
    heads = width // 64 (open_clip build_model_from_openai_state_dict)."""

    embed_dim: int = 64
    image_size: int = 32
    patch_size: int = 8
    vision_width: int = 64
    vision_layers: int = 4
    text_width: int = 64
    text_layers: int = 3
    context_length: int = 77
    vocab_size: int = 49408  # the OpenAI BPE vocabulary of open_clip's SimpleTokenizer

    def __post_init__(self) -> None:
        for name in ("vision_width", "text_width"):
            width = getattr(self, name)
            if width <= 0 or width % 64:
                raise ConfigError(f"{name}={width}; expected a positive multiple of 64 (heads = width // 64).")
        if self.image_size % self.patch_size:
            raise ConfigError(
                f"image_size={self.image_size} is not a multiple of patch_size={self.patch_size}; "
                f"choose a patch size that divides the image size."
            )


def build_tiny_clip(arch: TinyClipArch) -> CLIP:
    """An fp32 open_clip CLIP with QuickGELU, as OpenAI's CLIP (and its checkpoint format) has it."""
    vision_cfg = CLIPVisionCfg(
        layers=arch.vision_layers,
        width=arch.vision_width,
        patch_size=arch.patch_size,
        image_size=arch.image_size,
    )
    text_cfg = CLIPTextCfg(
        context_length=arch.context_length,
        vocab_size=arch.vocab_size,
        width=arch.text_width,
        heads=arch.text_width // 64,
        layers=arch.text_layers,
    )
    return CLIP(arch.embed_dim, vision_cfg=vision_cfg, text_cfg=text_cfg, quick_gelu=True)


def encode_text_trimmed(model: CLIP, tokens: torch.Tensor) -> torch.Tensor:
    """`model.encode_text` run on the first L positions only, L = last EOT index + 1 (exact: causal mask)."""
    return encode_text_embeddings(model, model.token_embedding(tokens), tokens.argmax(dim=-1), truncate=True)


@functools.cache
def _tokenizer() -> SimpleTokenizer:
    return SimpleTokenizer(context_length=77)


def tokenize(texts: Sequence[str]) -> torch.Tensor:
    """Token ids [N, 77] with open_clip's SimpleTokenizer (the OpenAI BPE, 49408 tokens)."""
    return _tokenizer()(list(texts))


def images_to_tensor(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> float [N, 3, H, W] normalised with CLIP's mean/std, as the downstream
    test transform does (at 32 px its resize and centre crop are the identity)."""
    x = torch.as_tensor(images).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_DATASET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


# ----------------------------------------------------------------------------------------------
# Pretraining data


@dataclass
class CaptionedPool:
    """Rendered pretraining images with what is needed to caption them on the fly."""

    images: torch.Tensor  # uint8 [N, H, W, 3]
    class_index: torch.Tensor  # index into tw.all_toy_classes()
    caption_ids: torch.Tensor  # [N, n_templates]: row of `caption_tokens` per template
    caption_tokens: torch.Tensor  # [n_captions, 77]


def render_pool(images_per_class: int, image_size: int, seed: int, first_index: int = 0) -> CaptionedPool:
    """Render `images_per_class` images of each of the 64 classes, nuisances random (no spurious rule).

    Image i of class k draws from the pretraining stream keyed by (seed, k, first_index + i), which
    never meets the downstream worlds' stream (toyworld.WORLD_STREAM).
    """
    classes = tw.all_toy_classes()
    images, class_index, captions = [], [], []
    for k, toy_class in enumerate(classes):
        for i in range(first_index, first_index + images_per_class):
            rng = np.random.default_rng([tw.PRETRAIN_STREAM, seed, k, i])
            image, nuisances = tw.draw_example(toy_class, rng, image_size)
            images.append(image)
            class_index.append(k)
            captions.append([tw.caption(toy_class, nuisances, t) for t in tw.CAPTION_TEMPLATES])
    unique = sorted({c for row in captions for c in row})
    row_of = {c: i for i, c in enumerate(unique)}
    return CaptionedPool(
        images=torch.from_numpy(np.stack(images)),
        class_index=torch.tensor(class_index),
        caption_ids=torch.tensor([[row_of[c] for c in row] for row in captions]),
        caption_tokens=tokenize(unique),
    )


# ----------------------------------------------------------------------------------------------
# Training


@dataclass(frozen=True)
class TrainSettings:
    """Optimisation of the pretraining run (AdamW, linear warm-up then cosine decay)."""

    steps: int = 3000
    batch_size: int = 128
    lr: float = 2e-3
    min_lr: float = 1e-5
    weight_decay: float = 0.1
    warmup_steps: int = 200
    log_every: int = 100
    eval_every: int = 500


def clip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE of CLIP (Radford et al. 2021): the i-th image matches the i-th caption."""
    image_features = F.normalize(image_features, dim=-1)
    text_features = F.normalize(text_features, dim=-1)
    logits = logit_scale.exp() * image_features @ text_features.T
    targets = torch.arange(len(logits))
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


def _param_groups(model: CLIP, weight_decay: float) -> list[dict[str, Any]]:
    # As in CLIP/open_clip training: no decay on gains, biases, embeddings and the logit scale.
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        skip = param.ndim < 2 or "embedding" in name or "logit_scale" in name
        (no_decay if skip else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _adamw(param_groups: list[dict[str, Any]], lr: float) -> torch.optim.AdamW:
    # CLIP's betas/eps (Radford et al. 2021). The fused CPU kernel (torch >= 2.4) makes the step ~7x
    # faster here, where the 49408-row token embedding is most of the parameters.
    try:
        return torch.optim.AdamW(param_groups, lr=lr, betas=(0.9, 0.98), eps=1e-6, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(param_groups, lr=lr, betas=(0.9, 0.98), eps=1e-6)


def _lr_at(step: int, settings: TrainSettings) -> float:
    """Linear warm-up, then cosine decay to min_lr."""
    if step < settings.warmup_steps:
        return settings.lr * (step + 1) / settings.warmup_steps
    progress = (step - settings.warmup_steps) / max(1, settings.steps - settings.warmup_steps)
    return settings.min_lr + 0.5 * (settings.lr - settings.min_lr) * (1 + math.cos(math.pi * progress))


def train_tiny_clip(
    model: CLIP,
    pool: CaptionedPool,
    settings: TrainSettings,
    seed: int,
    holdout: CaptionedPool | None = None,
) -> list[dict[str, float]]:
    """Train in place with AdamW; returns the logged history (loss, lr, holdout zero-shot)."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = _adamw(_param_groups(model, settings.weight_decay), settings.lr)
    n_templates = pool.caption_ids.shape[1]
    history: list[dict[str, float]] = []
    model.train()
    order = torch.randperm(len(pool.images), generator=generator)
    cursor = 0
    started = time.perf_counter()
    for step in range(settings.steps):
        if cursor + settings.batch_size > len(order):  # reshuffle at each pass over the pool
            order, cursor = torch.randperm(len(pool.images), generator=generator), 0
        batch = order[cursor : cursor + settings.batch_size]
        cursor += settings.batch_size
        templates = torch.randint(n_templates, (len(batch),), generator=generator)
        tokens = pool.caption_tokens[pool.caption_ids[batch, templates]]
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, settings)

        image_features = model.encode_image(images_to_tensor(pool.images[batch]))
        text_features = encode_text_trimmed(model, tokens)
        loss = clip_loss(image_features, text_features, model.logit_scale)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():  # CLIP clamps the learned temperature at 100
            model.logit_scale.clamp_(0, math.log(100))

        last = step + 1 == settings.steps
        if (step + 1) % settings.log_every == 0 or last:
            entry = {
                "step": step + 1,
                "loss": loss.item(),
                "lr": optimizer.param_groups[0]["lr"],
                "logit_scale": model.logit_scale.exp().item(),
                "elapsed_s": time.perf_counter() - started,
            }
            if holdout is not None and ((step + 1) % settings.eval_every == 0 or last):
                entry["holdout_zero_shot_64"] = holdout_zero_shot(model, holdout)
                model.train()
            history.append(entry)
            log.info(_format_entry(entry))
    model.eval()
    return history


def _format_entry(entry: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in entry.items())


# ----------------------------------------------------------------------------------------------
# Zero-shot evaluation


@torch.no_grad()
def zero_shot_accuracy(
    model: CLIP,
    images: torch.Tensor,
    labels: torch.Tensor,
    classnames: Sequence[str],
    template: str = ZERO_SHOT_TEMPLATE,
    batch_size: int = 500,
) -> float:
    """Top-1 accuracy (percent, micro) of zero-shot classification among `classnames`.

    `images` are normalised [N, 3, H, W]; logits = logit_scale.exp() * cosine(image, prompt).
    """
    model.eval()
    text = F.normalize(encode_text_trimmed(model, tokenize([template.format(c) for c in classnames])), dim=-1)
    correct = 0
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        image = F.normalize(model.encode_image(chunk), dim=-1)
        logits = model.logit_scale.exp() * image @ text.T
        correct += int((logits.argmax(dim=-1) == labels[start : start + batch_size]).sum())
    return 100.0 * correct / len(images)


def holdout_zero_shot(model: CLIP, holdout: CaptionedPool) -> float:
    """64-way zero-shot accuracy on held-out pretraining images (progress signal during training)."""
    names = [k.name for k in tw.all_toy_classes()]
    return zero_shot_accuracy(model, images_to_tensor(holdout.images), holdout.class_index, names)


def world_zero_shot(model: CLIP, spec: tw.ToyWorldSpec, split: str = "test") -> dict[str, float]:
    """Zero-shot accuracy on a toy world split: among base classes, among novel classes, and among all.

    Base and novel are the protocol's halves (labels sorted, first ceil(n/2) base), each classified
    among its own classes only, as base-to-novel papers measure novel accuracy.
    """
    examples = list(tw.generate_split(spec, split))
    classes = tw.toy_classes(spec.classes)
    images = images_to_tensor(np.stack([e.image for e in examples]))
    labels = torch.tensor([e.label for e in examples])
    n_base = math.ceil(len(classes) / 2)
    names = [k.name for k in classes]
    result = {"all": zero_shot_accuracy(model, images, labels, names)}
    for subset, keep, offset in (("base", labels < n_base, 0), ("novel", labels >= n_base, n_base)):
        subset_names = names[:n_base] if subset == "base" else names[n_base:]
        result[subset] = zero_shot_accuracy(model, images[keep], labels[keep] - offset, subset_names)
    return result


@torch.no_grad()
def attribute_zero_shot(model: CLIP, spec: tw.ToyWorldSpec, split: str = "test") -> dict[str, float]:
    """Does the model read size and background words? For each image, pick the size (2-way) and the
    background (3-way) caption of its true class. The spurious rule of the downstream world relies on
    the image encoder representing these nuisances."""
    model.eval()
    examples = list(tw.generate_split(spec, split))
    images = images_to_tensor(np.stack([e.image for e in examples]))
    image_features = F.normalize(model.encode_image(images), dim=-1)
    result = {}
    for attribute, words, template in (
        ("size", tw.SIZES, "a photo of a {word} {name}."),
        ("background", tw.BACKGROUNDS, "a {name} on a {word} background."),
    ):
        correct = 0
        for example, feature in zip(examples, image_features, strict=True):
            prompts = tokenize([template.format(word=w, name=example.toy_class.name) for w in words])
            text = F.normalize(encode_text_trimmed(model, prompts), dim=-1)
            truth = getattr(example.nuisances, attribute)
            correct += int((text @ feature).argmax()) == truth
        result[attribute] = 100.0 * correct / len(examples)
    return result


def report_zero_shot(model: CLIP, seed: int = 0, test_per_class: int = 50) -> dict[str, Any]:
    """The numbers recorded next to the checkpoint: default world (grid6, spurious 1), its
    spurious-free twin, the ext world, and the size/background readout."""
    n_test = test_per_class
    worlds = {
        "grid6_spurious1": tw.ToyWorldSpec(classes="grid6", spurious=1.0, seed=seed, test_per_class=n_test),
        "grid6_spurious0": tw.ToyWorldSpec(classes="grid6", spurious=0.0, seed=seed, test_per_class=n_test),
        "ext_spurious1": tw.ToyWorldSpec(classes="ext", spurious=1.0, seed=seed, test_per_class=n_test),
    }
    report: dict[str, Any] = {"template": ZERO_SHOT_TEMPLATE, "split": "test", "test_per_class": n_test}
    for key, spec in worlds.items():
        report[key] = {k: round(v, 2) for k, v in world_zero_shot(model, spec).items()}
    attrs = attribute_zero_shot(model, worlds["grid6_spurious0"])
    report["grid6_spurious0_attributes"] = {k: round(v, 2) for k, v in attrs.items()}
    return report


# ----------------------------------------------------------------------------------------------
# Checkpoint format


def save_openai_checkpoint(model: CLIP, path: Path) -> str:
    """Save an OpenAI-format fp16 state dict; returns its sha256.

    open_clip's CLIP already uses OpenAI's parameter names; OpenAI checkpoints hold fp16 tensors,
    and open_clip.load_openai_model infers the architecture from the tensor shapes.
    """
    state = {name: t.detach().to(torch.float16).contiguous() for name, t in model.state_dict().items()}
    path = atomic_torch_save(state, path)  # equal weights give an equal file (and sha256)
    return file_sha256(path)


def load_toyclip(path: Path | None = None) -> CLIP:
    """Load a toyclip checkpoint (default: the committed asset) as an fp32 model on the CPU."""
    path = Path(path) if path is not None else ASSET_DIR / "toyclip.pt"
    if not path.is_file():
        raise MissingPathError(
            f"No toyclip checkpoint at {path}; expected an OpenAI-format state dict written by "
            f"`python -m promptlab.toy.pretrain`. Run it, or pass the path of an existing checkpoint."
        )
    return open_clip.load_openai_model(str(path), precision="fp32", device="cpu").eval()


def library_versions() -> dict[str, str]:
    from importlib import metadata

    import PIL

    # The installed distribution's version, not `promptlab.__version__`: the package's __init__ sits in the
    # top layer (public API), which this module must not import (tests/test_layers.py).
    try:
        promptlab_version = metadata.version("promptlab")
    except metadata.PackageNotFoundError:
        promptlab_version = "unknown"
    return {
        "python": platform.python_version(),
        "promptlab": promptlab_version,
        "torch": torch.__version__,
        "open_clip_torch": open_clip.__version__,
        "numpy": np.__version__,
        "pillow": PIL.__version__,
        "toyworld_generator": str(tw.GENERATOR_VERSION),
    }


# ----------------------------------------------------------------------------------------------
# Hydra task


def run_pretraining(cfg: Any, out_dir: Path, command: str) -> dict[str, Any]:
    """Pretrain; save toyclip.pt and toyclip.json into `out_dir` (and `cfg.asset_dir` if set)."""
    torch.set_num_threads(int(cfg.threads))
    torch.manual_seed(int(cfg.seed))
    arch = TinyClipArch(**cfg.model)
    settings = TrainSettings(**cfg.train)
    started = time.perf_counter()
    pool = render_pool(int(cfg.data.images_per_class), arch.image_size, int(cfg.seed))
    holdout = render_pool(
        int(cfg.data.holdout_per_class),
        arch.image_size,
        int(cfg.seed),
        first_index=int(cfg.data.images_per_class),
    )
    render_s = time.perf_counter() - started
    log.info(
        "rendered %d pretraining images (+%d held out) in %.1f s",
        len(pool.images),
        len(holdout.images),
        render_s,
    )

    model = build_tiny_clip(arch)
    history = train_tiny_clip(model, pool, settings, int(cfg.seed), holdout)
    train_s = time.perf_counter() - started - render_s

    out_dir = Path(out_dir)
    checkpoint = out_dir / "toyclip.pt"
    digest = save_openai_checkpoint(model, checkpoint)
    reloaded = load_toyclip(checkpoint)  # evaluate exactly what downstream code will load
    report = report_zero_shot(reloaded, int(cfg.report.world_seed), int(cfg.report.test_per_class))
    record = {
        "command": command,
        "seed": int(cfg.seed),
        "sha256": digest,
        "file_bytes": checkpoint.stat().st_size,
        "format": "OpenAI-format fp16 state dict: open_clip.load_openai_model(path, precision='fp32')",
        "architecture": {
            **asdict(arch),
            "quick_gelu": True,
            "vision_heads": arch.vision_width // 64,
            "text_heads": arch.text_width // 64,
        },
        "parameters": sum(p.numel() for p in model.parameters()),
        "data": {
            "images_per_class": int(cfg.data.images_per_class),
            "classes": 64,
            "templates": list(tw.CAPTION_TEMPLATES),
            "stream": "toyworld.PRETRAIN_STREAM",
        },
        "train": asdict(settings),
        "threads": int(cfg.threads),
        "wall_time_s": {
            "render": round(render_s, 1),
            "train": round(train_s, 1),
            "total": round(time.perf_counter() - started, 1),
        },
        "zero_shot": report,
        "history": history,
        "versions": library_versions(),
    }
    _write_record(out_dir / "toyclip.json", record)
    if cfg.get("asset_dir"):
        asset_dir = Path(cfg.asset_dir)
        atomic_write_bytes(asset_dir / "toyclip.pt", checkpoint.read_bytes())
        _write_record(asset_dir / "toyclip.json", record)
        log.info("installed the checkpoint into %s", asset_dir)
    log.info("zero-shot: %s", json.dumps(report))
    return record


def _write_record(path: Path, record: dict[str, Any]) -> None:
    atomic_write_json(path, record, indent=2)


def main() -> None:
    """Entry point of `python -m promptlab.toy.pretrain` / `promptlab-pretrain` (Hydra overrides allowed)."""
    import hydra
    from hydra.core.hydra_config import HydraConfig

    @hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="pretrain")
    def _task(cfg: Any) -> None:
        # Inside the task: hydra.main prints any exception that leaves it with a traceback.
        with user_errors_in_hydra_job("promptlab-pretrain"):
            overrides = list(HydraConfig.get().overrides.task)
            command = shlex.join(["python", "-m", "promptlab.toy.pretrain", *overrides])
            run_pretraining(cfg, Path(HydraConfig.get().runtime.output_dir), command)

    _task()


if __name__ == "__main__":
    sys.exit(main())
