"""The prepared GPU check: `make gpu-check` (`python -m promptlab.gpu_check`), under 10 minutes on one GPU.

What it runs, each step in its own process so that one failure does not lose the others:
- every method of the config schema (zero-shot, CoOp, CoCoOp, KgCoOp, ...): training and evaluation through
  `promptlab-train` on a ViT-B/16 with random weights (no download needed) in bf16, on the toy world;
- the same CoOp job with Lightning DDP on 2 GPUs when two are visible;
- the throughput benchmark's GPU rows (`promptlab.bench`), with CoCoOp on 1,000 classes at batch 8 and its
  peak memory.
It writes `gpu_check.json` and `gpu_check.md` (date, hardware, commit, each step's status and numbers) into
`--out-dir` (default docs/, where the README cites them). `--smoke` runs the same steps on the CPU with the
tiny CLIP in seconds (what the test suite checks). Accuracies are meaningless with random weights: the check
is about running, speed and memory.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from promptlab.io import atomic_write_json, atomic_write_text

# Tiny toy world for --smoke (as the tests use it).
SMOKE_WORLD = ["dataset.generator.train_per_class=6", "dataset.generator.val_per_class=1",
               "dataset.generator.test_per_class=6", "shots=2"]


def environment() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "cpus": os.cpu_count(),
    }
    try:
        info["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                        timeout=10, cwd=Path(__file__).parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        info["commit"] = None
    return info


def _train_job(name: str, overrides: list[str], work: Path, timeout: int) -> dict[str, Any]:
    """One promptlab-train job in a subprocess; its record's status and timings."""
    run_dir = work / name
    cmd = [sys.executable, "-m", "promptlab.train", *overrides, f"hydra.run.dir={run_dir}",
           f"paths.output_dir={work / 'outputs'}", f"paths.data_root={work / 'data'}", "logger=none",
           "trainer.enable_progress_bar=false", f"run_name={name}"]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "wall_s": timeout, "command": " ".join(cmd[1:])}
    wall = time.perf_counter() - start
    step: dict[str, Any] = {"command": " ".join(cmd[1:]), "wall_s": round(wall, 2)}
    record_path = run_dir / "metrics.json"
    if proc.returncode != 0 or not record_path.is_file():
        return step | {"status": "failed", "error": (proc.stderr or proc.stdout)[-2000:]}
    record = json.loads(record_path.read_text(encoding="utf-8"))
    return step | {
        "status": record["status"],
        "metrics": record["metrics"],
        "precision": record["summary"].get("precision"),
        "epochs": record["summary"].get("epochs"),
        "timings": {k: round(v, 2) for k, v in record.get("timings", {}).items()},
    }


def method_names() -> list[str]:
    from promptlab.config.schema import METHOD_SCHEMAS

    return list(METHOD_SCHEMAS)


def run_check(
    smoke: bool, out_dir: Path, epochs: int, timeout: int, methods: list[str] | None = None
) -> dict[str, Any]:
    import torch

    result: dict[str, Any] = {"environment": environment(), "smoke": smoke, "steps": {}}
    if smoke:
        base = ["model=toyclip", "trainer=cpu", *SMOKE_WORLD, "num_threads=1"]
    else:
        if not torch.cuda.is_available():
            raise SystemExit("gpu_check: no GPU visible; use --smoke to try the check on the CPU.")
        base = ["model=vit_b16", "model.pretrained=null", "trainer=gpu"]
    with tempfile.TemporaryDirectory(prefix="promptlab-gpu-check-") as tmp:
        work = Path(tmp)
        for method in methods or method_names():
            overrides = [*base, f"method={method}"]
            if method != "zeroshot":
                overrides.append(f"method.optim.epochs={epochs}")
            result["steps"][f"train+eval {method}"] = _train_job(method, overrides, work, timeout)
        if not smoke and torch.cuda.device_count() >= 2:
            ddp = [*base, "method=coop", f"method.optim.epochs={epochs}", "trainer=ddp", "trainer.devices=2",
                   "trainer.accelerator=gpu", "trainer.precision=bf16-mixed"]
            result["steps"]["train+eval coop, DDP on 2 GPUs"] = _train_job("coop_ddp", ddp, work, timeout)
        bench_args = (["--repeats", "1", "--images", "200", "--out", str(work / "bench.json")] if smoke else
                      ["--model", "ViT-B-16", "--classes", "1000", "--batch", "8", "--precision", "bf16",
                       "--class-chunk", "100", "--repeats", "3", "--images", "2000", "--out", str(work / "bench.json")])
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "promptlab.bench", *bench_args], capture_output=True, text=True,
                              timeout=timeout)
        step: dict[str, Any] = {"command": "python -m promptlab.bench " + " ".join(bench_args[:-2]),
                                "wall_s": round(time.perf_counter() - start, 2)}
        if proc.returncode == 0 and (work / "bench.json").is_file():
            step |= {"status": "complete", "figures": json.loads((work / "bench.json").read_text(encoding="utf-8"))}
        else:
            step |= {"status": "failed", "error": (proc.stderr or proc.stdout)[-2000:]}
        result["steps"]["bench"] = step
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "gpu_check.json", result)
    atomic_write_text(out_dir / "gpu_check.md", to_markdown(result))
    return result


def to_markdown(result: dict[str, Any]) -> str:
    env = result["environment"]
    gpus = ", ".join(env["gpus"]) or "none (CPU)"
    lines = [
        "# GPU check" + (" (smoke run on the CPU)" if result["smoke"] else ""),
        "",
        f"Run {env['date']} at commit {env.get('commit') or '?'} with `python -m promptlab.gpu_check"
        + (" --smoke" if result["smoke"] else "") + f"`: {gpus}; torch {env['torch']} (CUDA {env['cuda']}), "
        f"Python {env['python']}. Random weights: accuracies only show that the run went through.",
        "",
        "| step | status | wall s | fit s | eval s | metrics |",
        "|---|---|---|---|---|---|",
    ]
    for name, step in result["steps"].items():
        if name == "bench":
            continue
        timings = step.get("timings", {})
        metrics = ", ".join(f"{k} {v:.1f}" for k, v in (step.get("metrics") or {}).items())
        lines.append(f"| {name} | {step['status']} | {step.get('wall_s', '')} | {timings.get('fit_s', '')} | "
                     f"{timings.get('eval_s', '')} | {metrics} |")
    bench = result["steps"].get("bench", {})
    lines += ["", f"Benchmark (`{bench.get('command', '')}`): {bench.get('status', 'not run')}", ""]
    for key, value in (bench.get("figures") or {}).items():
        lines.append(f"- {key}: {value:.3f}" if isinstance(value, float) else f"- {key}: {value}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="the same steps on the CPU with the tiny CLIP")
    parser.add_argument("--out-dir", type=Path, default=Path("docs"))
    parser.add_argument("--epochs", type=int, default=2, help="training epochs of each method")
    parser.add_argument("--timeout", type=int, default=240, help="seconds per step")
    parser.add_argument("--methods", nargs="*", default=None, help="a subset of the methods (default: all)")
    args = parser.parse_args(argv)
    result = run_check(args.smoke, args.out_dir, args.epochs, args.timeout, args.methods)
    print(to_markdown(result))
    failed = [name for name, step in result["steps"].items() if step["status"] != "complete"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
