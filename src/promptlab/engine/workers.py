"""Loader processes and pinned memory when the config leaves them to the machine (`loader.num_workers: null`,
`loader.pin_memory: null`, the defaults).

- Workers decode images in parallel with the encoder, but only for loaders whose output does not depend on a
  random stream (evaluation, feature extraction, the decoded-image cache): each worker draws its own random
  numbers, so a randomly augmented loader (the PIL training path, fixed augmented views) would give results that
  depend on the machine's core count. Those stay in-process unless `loader.num_workers` is set explicitly.
- Per rank: the CPUs this process may run on, shared by the ranks on the node, less one for the main process,
  at most MAX_WORKERS; none for a set smaller than MIN_IMAGES_FOR_WORKERS (starting a worker, a fork plus the
  dataset's pickling, costs more than it saves there, e.g. on the toy world's 32-pixel images).
- Pinned host memory when the batches go to a CUDA device (it makes their copies asynchronous), not otherwise.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from multiprocessing.context import BaseContext

import torch

#: Sets smaller than this decode in-process under the automatic rule.
MIN_IMAGES_FOR_WORKERS = 1000
#: Upper bound of the automatic rule per rank.
MAX_WORKERS = 8


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the platform has one, e.g. under SLURM or taskset)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def decode_workers(configured: int | None, n_images: int, ranks_per_node: int = 1) -> int:
    """Workers of a loader whose batches do not depend on a random stream: `configured` when set, else the rule."""
    if configured is not None:
        return int(configured)
    if n_images < MIN_IMAGES_FOR_WORKERS:
        return 0
    return max(0, min(MAX_WORKERS, usable_cpus() // max(1, ranks_per_node) - 1))


def random_stream_workers(configured: int | None) -> int:
    """Workers of a loader with random transforms: only what the config asks for (results must not depend on the
    machine)."""
    return int(configured) if configured is not None else 0


def pin_memory(configured: bool | None, device: torch.device) -> bool:
    """`configured` when set, else pinned exactly when the batches go to a CUDA device."""
    return bool(configured) if configured is not None else device.type == "cuda"


def worker_context(num_workers: int) -> BaseContext | None:
    """How a loader starts its worker processes: the platform's own method (fork on Linux, spawn elsewhere), named
    explicitly because a sweep job run by joblib's loky launcher inherits loky's default context, which cannot start
    a DataLoader's workers ("'Process' object has no attribute 'env'"). None without workers."""
    if num_workers <= 0:
        return None
    return multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
