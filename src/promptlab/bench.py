"""Throughput benchmark: `make bench` / `python -m promptlab.bench [--model ViT-B-16 --classes 1000 ...]`.

Measured in one process, on the same images, so the ratios are meaningful on a noisy machine:
- encode loop:   the bare `encode_image` loop over the images (the floor of any evaluation);
- evaluation:    promptlab's evaluation path (encode the images once, text side once, logits), for CoOp
                 (static prompts) and CoCoOp (per-image prompts, batched);
- CoOp train:    one optimisation step (text encoder forward + backward + SGD) per batch on frozen features;
- CoCoOp train:  the same for CoCoOp, batched, against two per-image Python loops: the reference's
                 (trainers/cocoop.py: one text-encoder call of C full 77-token prompts per image) and the same
                 loop with promptlab's exact truncation of the causal text transformer (to tell the two gains
                 apart).

The augmented path (`--rows augmented`; `all` runs both), on `--aug-images` generated JPEGs of 500x375 (the
typical size of the real datasets' photos), one timed run = one epoch over them in batches of `--batch`:
- aug only:        the tensor augmentation alone (crop boxes, crop + resize, flip, normalise) and, for
                   comparison, the reference's PIL decode + crop + flip + ToTensor alone;
- aug floor:       the bare image-encoder forward on the same augmented images (already in memory);
- aug CoOp/CoCoOp: promptlab's augmented training step: decoded-once uint8 images (data/decoded_cache.py),
                   crop + flip + normalise per batch on the device (data/tensor_augment.py), image encoder,
                   text side forward + backward, SGD;
- aug reference:   the reference-equivalent CoOp pipeline: every JPEG decoded again and cropped by PIL in each
                   epoch (torchvision RandomResizedCrop, bicubic, + flip), fp32, attention through PyTorch's
                   unfused math kernel, all 77 text positions; for CoCoOp its per-image loop (batch 1).
The targets of the augmented path (docs/tensor_augment.md) are printed with pass/fail.
The deep rows (`--rows deep`; `all` includes them): MaPLe and PromptSRC, one training step of `--deep-batch`
(default 4, the reference's) and one evaluation of `--deep-images`, promptlab's path against the reference's
per-step path (77 text tokens, no shared-prefix reuse, fp32, unfused attention, text re-encoded per test batch);
`deep_conditions` says how they were measured (deep_rows).
Each figure is the median of `--repeats` timed runs after a warm-up run. Results go to stdout and to
outputs/bench/latest.json (one key per figure, ratios included).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from PIL import Image
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.data import DataLoader, Dataset

from promptlab.data.decoded_cache import build_decoded_images
from promptlab.data.tensor_augment import TensorAugment
from promptlab.data.transforms import build_transform
from promptlab.data.types import Datum
from promptlab.engine.datamodule import FeatureDataset, feature_batch_size
from promptlab.engine.features import encode_images
from promptlab.engine.module import PromptLearningModule
from promptlab.io import atomic_write_json
from promptlab.logs import quiet_libraries
from promptlab.methods import CoCoOpPrompts, CoOpPrompts, logits_from_features
from promptlab.methods.base import TrainingStep
from promptlab.models import FrozenCLIP, load_clip

AMP = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median wall seconds of `fn` over `repeats` runs, after one untimed warm-up run."""
    fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def timed_interleaved(fns: dict[str, Callable[[], object]], device: torch.device, repeats: int) -> dict[str, float]:
    """Median wall seconds of each function, run in turn within each round (after one warm-up round), so that
    a change of machine load during the measurement weighs on every row alike and ratios stay fair."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for round_ in range(repeats + 1):
        for name, fn in fns.items():
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            if round_:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


class _ImageTensors(Dataset):
    """Preprocessed images held in memory, in the dict format of promptlab's image datasets."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> dict:
        return {"image": self.images[index], "label": 0, "index": index}


def _classnames(n: int) -> list[str]:
    from promptlab.toy.world import COLOURS, SHAPES

    names = [f"{c} {s}" for c in COLOURS for s in SHAPES]
    return [names[i % len(names)] + ("" if i < len(names) else f" {i // len(names)}") for i in range(n)]


def _prompts(cls: type, model: FrozenCLIP, names: list[str], device: torch.device, **kwargs):
    """A CoOp / CoCoOp learner with the bench's context (4 vectors from "a photo of a") for `names`, on `device`."""
    learner = cls(model, n_ctx=4, ctx_init="a photo of a", **kwargs).to(device)
    learner.set_classnames(model, names)
    return learner


def run_benchmark(args: argparse.Namespace) -> dict[str, float | str | int]:
    device = torch.device(args.device)
    torch.manual_seed(0)
    if args.model == "toyclip":
        clip = load_clip(weights_file="builtin:toyclip", device=device)
    else:
        clip = load_clip(name=args.model, pretrained=None, device=device)  # random weights: speed only
    clip: FrozenCLIP
    amp = torch.autocast(device.type, dtype=AMP[args.precision]) if args.precision in AMP else nullcontext()
    result: dict[str, float | str | int] = {
        "model": args.model, "classes": args.classes, "batch": args.batch, "precision": args.precision,
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "threads": torch.get_num_threads(), "repeats": args.repeats,
    }
    if args.rows in ("all", "features"):
        result |= feature_rows(args, clip, device, amp)
    if args.rows in ("all", "augmented"):
        result |= augmented_rows(args, clip, device, amp)
    if args.rows in ("all", "deep"):
        result |= deep_rows(args, clip, device, amp)
    result |= {"torch": torch.__version__, "python": platform.python_version()}
    if device.type == "cuda":
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return result


def feature_rows(args: argparse.Namespace, clip: FrozenCLIP, device: torch.device, amp) -> dict[str, float | int]:
    """Evaluation and training on frozen features against the bare encode loop and the per-image loops."""
    size = clip.image_size
    images = torch.randn(args.images, 3, size, size)  # in host memory, as loaded images would be
    names = _classnames(args.classes)
    labels = torch.randint(len(names), (args.batch,), device=device)

    coop = _prompts(CoOpPrompts, clip, names, device)
    cocoop = _prompts(CoCoOpPrompts, clip, names, device, class_chunk=args.class_chunk)
    # The reference path: the same weights and learner, text transformer run on all 77 positions.
    clip_full = FrozenCLIP(clip.model, clip.tokenizer, clip.weights_id, truncate_text=False)
    cocoop_full = _prompts(CoCoOpPrompts, clip_full, names, device)
    scale = clip.logit_scale()

    def encode_loop() -> torch.Tensor:
        """The floor: a bare encode_image loop over the same in-memory images."""
        with torch.no_grad(), amp:
            return torch.cat([clip.encode_image(images[i : i + args.eval_batch].to(device))
                              for i in range(0, args.images, args.eval_batch)])

    image_set = _ImageTensors(images)
    eval_labels = torch.randint(len(names), (args.images,))
    precision = {"bf16": "bf16-mixed", "fp16": "16-mixed"}.get(args.precision, "32")

    def evaluation(learner) -> Callable[[], float]:
        """promptlab's evaluation path: features.encode_images once, then the module's Lightning test loop over the
        features in the run's batches (engine.datamodule.feature_batch_size). The trainer is made once, outside
        the timing, as a run makes one trainer for its fit and all its evaluations."""
        module = PromptLearningModule(clip, learner)
        trainer = L.Trainer(accelerator=device.type, devices=1, precision=precision, logger=False,
                            enable_progress_bar=False, enable_model_summary=False)

        def run() -> float:
            feats = encode_images(clip, image_set, batch_size=args.eval_batch, device=device, precision=precision)
            loader = DataLoader(FeatureDataset(feats, eval_labels),
                                batch_size=feature_batch_size(learner, args.eval_batch))
            trainer.test(module, dataloaders=loader, verbose=False)
            return module.last_eval["acc"]

        return run

    feats = F.normalize(torch.randn(args.batch, clip.embed_dim, device=device), dim=-1)

    def train_step(learner, forward) -> Callable[[], None]:
        optimizer = torch.optim.SGD(learner.parameters(), lr=1e-3, momentum=0.9)

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            with amp:
                text = forward(feats).float()
                loss = F.cross_entropy(logits_from_features(feats, text, scale), labels)
            loss.backward()
            optimizer.step()

        return step

    coop_step = train_step(coop, lambda f: coop(clip))
    cocoop_step = train_step(cocoop, lambda f: cocoop(clip, f))
    loop_step = train_step(cocoop, lambda f: cocoop.reference_forward(clip, f))
    reference_step = train_step(cocoop_full, lambda f: cocoop_full.reference_forward(clip_full, f))

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    r = args.repeats
    # The floor and the CoOp evaluation in turn within each round (their ratio is a target).
    t = timed_interleaved({"encode": encode_loop, "eval_coop": evaluation(coop)}, device, r)
    t_encode, t_eval_coop = t["encode"], t["eval_coop"]
    t_eval_cocoop = timed(evaluation(cocoop), device, max(1, r // 2))
    t_coop = timed(coop_step, device, r)
    t_cocoop = timed(cocoop_step, device, r)
    t_loop = timed(loop_step, device, max(1, r // 2))
    t_reference = timed(reference_step, device, max(1, r // 2))
    n, b = args.images, args.batch
    return {
        "images": n,
        "encode_loop_img_s": n / t_encode,
        "eval_coop_img_s": n / t_eval_coop,
        "eval_cocoop_img_s": n / t_eval_cocoop,
        "train_coop_img_s": b / t_coop,
        "train_cocoop_batched_img_s": b / t_cocoop,
        "train_cocoop_per_image_loop_img_s": b / t_loop,
        "train_cocoop_reference_loop_img_s": b / t_reference,
        "ratio_eval_coop_vs_encode_time": t_eval_coop / t_encode,
        "ratio_cocoop_batched_vs_loop_speed": t_loop / t_cocoop,
        "ratio_cocoop_batched_vs_reference_loop_speed": t_reference / t_cocoop,
    }


def write_jpegs(folder: Path, n: int, size: tuple[int, int] = (500, 375), seed: int = 0) -> list[Datum]:
    """`n` JPEGs of `size` (quality 90) with photo-like detail (smooth waves + noise), as training items."""
    gen = torch.Generator().manual_seed(seed)
    w, h = size
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing="ij")
    items = []
    for i in range(n):
        phase = torch.rand(3, generator=gen) * 6.28
        waves = torch.stack([128 + 100 * torch.sin(xx / (5 + c + i % 7) + phase[c]) * torch.cos(yy / (9 + c))
                             for c in range(3)], -1)
        pixels = (waves + 20 * torch.randn(waves.shape, generator=gen)).clamp(0, 255).to(torch.uint8)
        path = folder / f"img_{i:04d}.jpg"
        Image.fromarray(pixels.numpy()).save(path, quality=90)
        items.append(Datum(str(path), 0, "image"))
    return items


def augmented_rows(args: argparse.Namespace, clip: FrozenCLIP, device: torch.device, amp) -> dict[str, float | str]:
    """The augmented training step (tensor path) against its floor and the reference-equivalent pipeline."""
    size, pre, b, r = clip.image_size, clip.preprocess_cfg, args.batch, args.repeats
    names = _classnames(args.classes)
    spec = {"mean": tuple(pre["mean"]), "std": tuple(pre["std"]), "interpolation": pre["interpolation"]}
    coop = _prompts(CoOpPrompts, clip, names, device)
    cocoop = _prompts(CoCoOpPrompts, clip, names, device, class_chunk=args.class_chunk)
    clip_full = FrozenCLIP(clip.model, clip.tokenizer, clip.weights_id, truncate_text=False)
    coop_full = _prompts(CoOpPrompts, clip_full, names, device)
    cocoop_full = _prompts(CoCoOpPrompts, clip_full, names, device)
    scale = clip.logit_scale()
    coop_text = _prompts(CoOpPrompts, clip, names, device)  # its own copy: the same work as the step's text side
    text_optimizer = torch.optim.SGD(coop_text.parameters(), lr=1e-3, momentum=0.9)
    pil_transform = build_transform(size, train=True, augment="coop", **spec)
    augment = TensorAugment(size, mean=spec["mean"], std=spec["std"], interpolation=spec["interpolation"],
                            generator=torch.Generator().manual_seed(0))

    with tempfile.TemporaryDirectory() as tmp:
        items = write_jpegs(Path(tmp), args.aug_images)
        n = len(items)
        starts = range(0, n, b)
        labels = torch.arange(n, device=device) % len(names)

        start = time.perf_counter()
        decoded, _ = build_decoded_images(items, size, augment="coop", interpolation=spec["interpolation"])
        t_decode = time.perf_counter() - start
        stored = decoded.images[0].shape

        def device_batch(i: int) -> list[torch.Tensor]:
            return [image.to(device, non_blocking=True) for image in decoded.images[i : i + b]]

        fixed = [augment(device_batch(i)) for i in starts]  # the floor's input: augmented images in memory

        def floor() -> None:
            with torch.no_grad(), amp:
                for x in fixed:
                    clip.encode_image(x)

        with torch.no_grad(), amp:
            fixed_feats = [clip.encode_image(x).float() for x in fixed]

        def coop_text_only() -> None:
            """The CoOp step without the encoder: text side forward + backward + SGD on the floor's features."""
            for feats, i in zip(fixed_feats, starts, strict=True):
                text_optimizer.zero_grad(set_to_none=True)
                with amp:
                    loss = F.cross_entropy(logits_from_features(feats, coop_text(clip).float(), scale),
                                           labels[i : i + b])
                loss.backward()
                text_optimizer.step()

        def augment_only() -> None:
            for i in starts:
                augment(device_batch(i))

        def tensor_epoch(learner) -> Callable[[], None]:
            optimizer = torch.optim.SGD(learner.parameters(), lr=1e-3, momentum=0.9)

            def run() -> None:
                for i in starts:
                    _train_step(learner, augment(device_batch(i)), labels[i : i + b], optimizer, clip, scale,
                                lambda: amp)
            return run

        n_ref = min(n, args.cocoop_reference_images)
        coop_epoch, cocoop_epoch = tensor_epoch(coop), tensor_epoch(cocoop)
        ref = _reference_epochs(items, labels, pil_transform, (coop_full, cocoop_full), clip_full, scale, device, b,
                                n_ref)
        t = timed_interleaved({
            "augment": augment_only, "pil": ref["pil"], "floor": floor, "coop_text": coop_text_only,
            "coop": coop_epoch, "cocoop": cocoop_epoch, "ref_coop": ref["ref_coop"], "ref_cocoop": ref["ref_cocoop"],
        }, device, r)
    conditions = (f"{n} JPEGs 500x375 q90 (decoded once, stored {tuple(stored[1:])}), output {size}px, batch {b}, "
                  f"{torch.get_num_threads()} thread(s), one timed run = one epoch, rows run in turn, median of {r} "
                  f"rounds after a warm-up round; CoCoOp reference loop (batch 1) on {n_ref} images")
    return {"aug_conditions": conditions, "aug_decode_once_img_s": n / t_decode, **_augmented_figures(t, n, n_ref)}


def _reference_epochs(items: list[Datum], labels: torch.Tensor, pil_transform: Callable, learners: tuple,
                      model: FrozenCLIP, scale: torch.Tensor, device: torch.device, batch: int,
                      n_ref: int) -> dict[str, Callable[[], None]]:
    """The reference-equivalent pipeline's timed rows: each image decoded and augmented through PIL every epoch
    ("pil"), and the CoOp step ("ref_coop") and CoCoOp's per-image loop at batch 1 on the first `n_ref` images
    ("ref_cocoop") on it. `learners`: (CoOp, CoCoOp) on `model`, a FrozenCLIP with untruncated text."""
    coop_full, cocoop_full = learners

    def pil_batch(batch_items: list[Datum]) -> torch.Tensor:
        return torch.stack([pil_transform(Image.open(it.impath).convert("RGB")) for it in batch_items]).to(device)

    def pil_only() -> None:
        for i in range(0, len(items), batch):
            pil_batch(items[i : i + batch])

    def reference_epoch(learner, size: int, per_image: bool, limit: int) -> Callable[[], None]:
        optimizer = torch.optim.SGD(learner.parameters(), lr=1e-3, momentum=0.9)

        def run() -> None:
            # fp32, no autocast, attention through the unfused math kernel (the reference's nn.MultiheadAttention
            # path of 2022 ran unfused); torch.backends.mha's fast path off for the same reason.
            for i in range(0, limit, size):
                _train_step(learner, pil_batch(items[i : i + size]), labels[i : i + size], optimizer, model, scale,
                            _reference_attention, per_image=per_image)
        return run

    return {"pil": pil_only, "ref_coop": reference_epoch(coop_full, batch, False, len(items)),
            "ref_cocoop": reference_epoch(cocoop_full, 1, True, n_ref)}


def _augmented_figures(t: dict[str, float], n: int, n_ref: int) -> dict[str, float]:
    """Speeds and ratios of the augmented rows from their timings (`t`: seconds per epoch of each row)."""
    t_floor, t_coop, t_cocoop, t_ref_coop, t_ref_cocoop = (
        t["floor"], t["coop"], t["cocoop"], t["ref_coop"], t["ref_cocoop"])
    floor_s, coop_s, cocoop_s = n / t_floor, n / t_coop, n / t_cocoop
    ref_coop_s, ref_cocoop_s = n / t_ref_coop, n_ref / t_ref_cocoop
    return {
        "aug_tensor_augment_only_img_s": n / t["augment"],
        "aug_pil_decode_and_augment_only_img_s": n / t["pil"],
        "aug_floor_encoder_forward_img_s": floor_s,
        "aug_coop_text_side_only_img_s": n / t["coop_text"],
        "aug_train_coop_img_s": coop_s,
        "aug_train_cocoop_img_s": cocoop_s,
        "aug_reference_coop_img_s": ref_coop_s,
        "aug_reference_cocoop_per_image_img_s": ref_cocoop_s,
        "ratio_aug_coop_vs_floor_time": floor_s / coop_s,
        # What no augmentation can remove: the encoder plus CoOp's text side (one text pass per step).
        "ratio_aug_floor_plus_text_vs_floor_time": (t_floor + t["coop_text"]) / t_floor,
        # No CoCoOp step with this encoder can beat the encoder alone: the most any path could reach here.
        "ratio_aug_floor_vs_reference_cocoop_speed": floor_s / ref_cocoop_s,
        "ratio_aug_coop_vs_reference_speed": coop_s / ref_coop_s,
        "ratio_aug_cocoop_vs_reference_loop_speed": cocoop_s / ref_cocoop_s,
    }


def _train_step(learner, x: torch.Tensor, y: torch.Tensor, optimizer, model: FrozenCLIP, scale: torch.Tensor,
                context: Callable, per_image: bool = False) -> None:
    """One cross-entropy step of a CoOp or CoCoOp learner; `per_image`: CoCoOp's reference loop (one text pass
    per image)."""
    optimizer.zero_grad(set_to_none=True)
    with context():
        feats = model.encode_image(x)
        text = (learner.reference_forward(model, feats) if per_image else
                learner(model, feats) if isinstance(learner, CoCoOpPrompts) else learner(model)).float()
        loss = F.cross_entropy(logits_from_features(feats, text, scale), y)
    loss.backward()
    optimizer.step()


@contextmanager
def _reference_attention():
    """fp32 attention through the unfused math kernel with nn.MultiheadAttention's fast path off, as the deep
    prompts' reference ran it (its own CLIP copy, 2022-era PyTorch)."""
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with sdpa_kernel([SDPBackend.MATH]):
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(True)


def deep_rows(args: argparse.Namespace, clip: FrozenCLIP, device: torch.device, amp) -> dict[str, float | str]:
    """MaPLe and PromptSRC (images through the learner): one training step and one evaluation, promptlab's path
    against the reference's per-step path.

    promptlab: the learner's text side with the exact text speed-ups (truncation after the last EOT, shared
    [SOS, context] prefix), images through the prompted image tower, the module's loss (cross-entropy, PromptSRC's
    self-regulating terms with the frozen tower on the same images), SGD; evaluation through the module's
    Lightning test loop (text once per evaluation, each image once). Reference (trainers/maple.py,
    PromptSRC/trainers/promptsrc.py CustomCLIP.forward): the same learner and weights on a FrozenCLIP with both
    speed-ups off (all 77 text positions, no prefix reuse), fp32, unfused attention, and in evaluation the text
    encoder run again for every test batch of --deep-eval-batch (Dassl's test batch size is 100).
    """
    from promptlab.methods.maple import MaPLePrompts
    from promptlab.methods.promptsrc import PromptSRCPrompts

    b, r, size = args.deep_batch, args.repeats, clip.image_size
    names = _classnames(args.classes)
    clip_ref = FrozenCLIP(clip.model, clip.tokenizer, clip.weights_id, truncate_text=False, share_prefix=False)
    # The reference's depths (9 in both towers) where the backbone has that many blocks, else all of them.
    text_depth, vision_depth = min(9, clip.text_layers), min(9, clip.vision_layers)
    maple_depth = min(text_depth, vision_depth)

    def build(kind: str, model: FrozenCLIP):
        if kind == "maple":
            learner = MaPLePrompts(model, depth=maple_depth, init_seed=0)
        else:
            learner = PromptSRCPrompts(model, text_depth=text_depth, vision_depth=vision_depth, gpa=False,
                                       init_seed=0)
        learner.set_classnames(model, names)
        return learner.to(device)

    learners = {(kind, path): build(kind, model) for kind in ("maple", "promptsrc")
                for path, model in (("ours", clip), ("ref", clip_ref))}
    images = torch.randn(args.deep_images, 3, size, size)  # in host memory, as loaded images would be
    x = torch.randn(b, 3, size, size, device=device)
    y = torch.randint(len(names), (b,), device=device)

    def train_step(learner, model: FrozenCLIP, context) -> Callable[[], None]:
        """One optimisation step as PromptLearningModule.training_step computes its loss."""
        optimizer = torch.optim.SGD([p for p in learner.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            with context():
                feats = learner.encode_images(model, x)
                text = learner(model, feats).float()
                logits = logits_from_features(feats, text, model.logit_scale())
                loss = learner.training_loss(model, TrainingStep(x, feats, text, logits, y)).optimised
            loss.backward()
            optimizer.step()

        return step

    precision = {"bf16": "bf16-mixed", "fp16": "16-mixed"}.get(args.precision, "32")
    loader = DataLoader(_ImageTensors(images), batch_size=args.deep_eval_batch)

    def evaluate(learner) -> Callable[[], None]:
        def run() -> None:
            trainer = L.Trainer(accelerator=device.type, devices=1, precision=precision, logger=False,
                                enable_progress_bar=False, enable_model_summary=False)
            trainer.test(PromptLearningModule(clip, learner), dataloaders=loader, verbose=False)
        return run

    def reference_evaluate(learner) -> Callable[[], None]:
        def run() -> None:
            with torch.no_grad(), _reference_attention():
                for batch in loader:
                    image = batch["image"].to(device)
                    logits_from_features(learner.encode_images(clip_ref, image), learner(clip_ref).float(),
                                         clip_ref.logit_scale()).argmax(dim=-1)
        return run

    fns: dict[str, Callable[[], None]] = {}
    for kind in ("maple", "promptsrc"):
        fns[f"train_{kind}"] = train_step(learners[kind, "ours"], clip, lambda: amp)
        fns[f"train_{kind}_ref"] = train_step(learners[kind, "ref"], clip_ref, _reference_attention)
        fns[f"eval_{kind}"] = evaluate(learners[kind, "ours"])
        fns[f"eval_{kind}_ref"] = reference_evaluate(learners[kind, "ref"])
    t = timed_interleaved(fns, device, r)
    n = args.deep_images
    out: dict[str, float | str] = {
        "deep_conditions": (
            f"{clip.name} ({clip.text_layers} text / {clip.vision_layers} image blocks, {size}px), {len(names)} "
            f"classes; MaPLe depth {maple_depth} (2 text tokens from 'a photo of a'), PromptSRC 4+4 tokens depth "
            f"{text_depth}/{vision_depth} with its three loss terms (GPA is per epoch, not timed); training: one "
            f"step of batch {b}; evaluation: {n} in-memory images in batches of {args.deep_eval_batch}; "
            f"promptlab at precision {args.precision} with text truncation and prefix reuse; reference path: fp32, "
            f"77 text tokens, no prefix reuse, unfused attention, text re-encoded per test batch; "
            f"{torch.get_num_threads()} thread(s), rows run in turn, median of {r} rounds after a warm-up round"),
    }
    for kind in ("maple", "promptsrc"):
        out |= {
            f"deep_train_{kind}_img_s": b / t[f"train_{kind}"],
            f"deep_train_{kind}_reference_img_s": b / t[f"train_{kind}_ref"],
            f"deep_eval_{kind}_img_s": n / t[f"eval_{kind}"],
            f"deep_eval_{kind}_reference_img_s": n / t[f"eval_{kind}_ref"],
            f"ratio_deep_train_{kind}_vs_reference_speed": t[f"train_{kind}_ref"] / t[f"train_{kind}"],
            f"ratio_deep_eval_{kind}_vs_reference_speed": t[f"eval_{kind}_ref"] / t[f"eval_{kind}"],
        }
    return out


#: The targets of the augmented path (issue "fast augmented training"): (key, comparison, bound, text, and the
#: key and wording of the measured limit that says what the device allows, or None).
TARGETS = (
    ("ratio_aug_coop_vs_floor_time", "<=", 1.3, "augmented CoOp step within 1.3x of the bare encoder forward",
     ("ratio_aug_floor_plus_text_vs_floor_time", "encoder + CoOp's text side alone: {:.2f}x")),
    ("ratio_eval_coop_vs_encode_time", "<=", 1.2, "evaluation within 1.2x of a bare encode loop", None),
    ("ratio_aug_cocoop_vs_reference_loop_speed", ">=", 15.0,
     "CoCoOp (batch --batch) at least 15x the reference-equivalent per-image loop",
     ("ratio_aug_floor_vs_reference_cocoop_speed", "the bare encoder alone is {:.1f}x the reference loop here")),
    ("ratio_aug_coop_vs_reference_speed", ">=", 5.0, "augmented CoOp at least 5x the reference-equivalent "
     "pipeline (a GPU target)", None),
)


def target_lines(result: dict) -> list[str]:
    lines = []
    for key, op, bound, text, limit in TARGETS:
        if key not in result:
            continue
        value = float(result[key])
        ok = value <= bound if op == "<=" else value >= bound
        context = f"; {limit[1].format(float(result[limit[0]]))}" if limit and limit[0] in result else ""
        lines.append(f"  {'PASS' if ok else 'FAIL'}  {text}: {value:.2f}{'x' if op == '<=' else 'x faster'} "
                     f"(target {op} {bound}{context})")
    return lines


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="toyclip", help="toyclip, or an open_clip model name (random weights)")
    parser.add_argument("--classes", type=int, default=18)
    parser.add_argument("--batch", type=int, default=32, help="training batch size")
    parser.add_argument("--images", type=int, default=4000, help="evaluation images")
    parser.add_argument("--eval-batch", type=int, default=100)
    parser.add_argument("--class-chunk", type=int, default=None, help="CoCoOp classes per text-encoder call")
    parser.add_argument("--precision", default="32", choices=["32", "bf16", "fp16"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads on CPU (1 is steadiest)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rows", default="all", choices=["all", "features", "augmented", "deep"],
                        help="features: evaluation and training on frozen features; augmented: the augmented path; "
                             "deep: MaPLe and PromptSRC against the reference's per-step path")
    parser.add_argument("--deep-batch", type=int, default=4, help="training batch of the deep rows (reference: 4)")
    parser.add_argument("--deep-images", type=int, default=1000, help="evaluation images of the deep rows")
    parser.add_argument("--deep-eval-batch", type=int, default=100,
                        help="evaluation batch of the deep rows (Dassl's test batch size: 100)")
    parser.add_argument("--aug-images", type=int, default=64, help="generated 500x375 JPEGs of the augmented rows")
    parser.add_argument("--cocoop-reference-images", type=int, default=32,
                        help="images of the reference CoCoOp per-image loop (it is slow on large models)")
    parser.add_argument("--out", default="outputs/bench/latest.json")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    quiet_libraries()
    torch.set_num_threads(args.threads)
    result = run_benchmark(args)
    width = max(len(k) for k in result)
    print(f"promptlab benchmark (median of {args.repeats} runs after a warm-up; one process, same images)")
    for key, value in result.items():
        print(f"  {key:<{width}}  {value:.3f}" if isinstance(value, float) else f"  {key:<{width}}  {value}")
    lines = target_lines(result)
    if lines:
        print("targets:")
        print("\n".join(lines))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, result, indent=1)
    print(f"written to {out}")
    return result


if __name__ == "__main__":
    main()
