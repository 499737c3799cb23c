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
Each figure is the median of `--repeats` timed runs after a warm-up run. Results go to stdout and to
outputs/bench/latest.json (one key per figure, ratios included).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from promptlab.engine.datamodule import FeatureDataset
from promptlab.engine.features import encode_images
from promptlab.engine.module import PromptLearningModule
from promptlab.io import atomic_write_json
from promptlab.logs import quiet_libraries
from promptlab.methods import CoCoOpPrompts, CoOpPrompts, logits_from_features
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


def run_benchmark(args: argparse.Namespace) -> dict[str, float | str | int]:
    device = torch.device(args.device)
    torch.manual_seed(0)
    if args.model == "toyclip":
        clip = load_clip(checkpoint="builtin:toyclip", device=device)
    else:
        clip = load_clip(name=args.model, pretrained=None, device=device)  # random weights: speed only
    clip: FrozenCLIP
    amp = torch.autocast(device.type, dtype=AMP[args.precision]) if args.precision in AMP else nullcontext()
    size = clip.image_size
    images = torch.randn(args.images, 3, size, size)  # in host memory, as loaded images would be
    names = _classnames(args.classes)
    labels = torch.randint(len(names), (args.batch,), device=device)

    coop = CoOpPrompts(clip, n_ctx=4, ctx_init="a photo of a").to(device)
    coop.set_classnames(clip, names)
    cocoop = CoCoOpPrompts(clip, n_ctx=4, ctx_init="a photo of a", class_chunk=args.class_chunk).to(device)
    cocoop.set_classnames(clip, names)
    # The reference path: the same weights and learner, text transformer run on all 77 positions.
    clip_full = FrozenCLIP(clip.model, clip.tokenizer, clip.checkpoint_id, truncate_text=False)
    cocoop_full = CoCoOpPrompts(clip_full, n_ctx=4, ctx_init="a photo of a").to(device)
    cocoop_full.set_classnames(clip_full, names)
    scale = clip.logit_scale()

    def encode_loop() -> torch.Tensor:
        """The floor: a bare encode_image loop over the same in-memory images."""
        with torch.no_grad(), amp:
            return torch.cat([clip.encode_image(images[i : i + args.eval_batch].to(device))
                              for i in range(0, args.images, args.eval_batch)])

    image_set = _ImageTensors(images)
    eval_labels = torch.randint(len(names), (args.images,))
    precision = {"bf16": "bf16-mixed", "fp16": "16-mixed"}.get(args.precision, "32")

    def evaluate(learner) -> float:
        """promptlab's evaluation path: features.encode_images once, then the module's Lightning test loop."""
        module = PromptLearningModule(clip, learner)
        trainer = L.Trainer(accelerator=device.type, devices=1, precision=precision, logger=False,
                            enable_progress_bar=False, enable_model_summary=False)
        feats = encode_images(clip, image_set, batch_size=args.eval_batch, device=device, precision=precision)
        loader = DataLoader(FeatureDataset(feats, eval_labels), batch_size=args.eval_batch)
        trainer.test(module, dataloaders=loader, verbose=False)
        return module.last_eval["acc"]

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
    t_encode = timed(encode_loop, device, r)
    t_eval_coop = timed(lambda: evaluate(coop), device, r)
    t_eval_cocoop = timed(lambda: evaluate(cocoop), device, max(1, r // 2))
    t_coop = timed(coop_step, device, r)
    t_cocoop = timed(cocoop_step, device, r)
    t_loop = timed(loop_step, device, max(1, r // 2))
    t_reference = timed(reference_step, device, max(1, r // 2))
    n, b = args.images, args.batch
    result: dict[str, float | str | int] = {
        "model": args.model,
        "classes": len(names),
        "batch": b,
        "images": n,
        "precision": args.precision,
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "threads": torch.get_num_threads(),
        "repeats": r,
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
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if device.type == "cuda":
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return result


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
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, result, indent=1)
    print(f"written to {out}")
    return result


if __name__ == "__main__":
    main()
