"""In-run checkpoints: a job's `last.ckpt`, and resuming from it.

A Lightning checkpoint of a promptlab run holds only what training changes: the learned tensors (the module's
state dict is the learner's), the optimiser and scheduler, Lightning's loop counters, the callbacks' state,
the data order (the training loader's generator, `PromptDataModule.state_dict`) and the random number
generators of torch, CUDA, NumPy and Python. For CoOp that is a few KB. It is written atomically, stamped with
the job's config hash, at the first epoch end `checkpoint.every_n_minutes` after the previous write (1 by
default: a write costs about 10 ms, much of a toy-world epoch but nothing next to a real one), at every
`checkpoint.every_n_epochs`-th epoch end when that is set, and after the last epoch. A rerun of the same job
continues from it and ends with the same learned tensors as an uninterrupted run (bitwise on one CPU process:
tests/engine/test_checkpointing.py kills a run mid-way). Under DDP every rank restores rank 0's generator states.

Checkpoints are taken at epoch ends only: Lightning cannot restore a data loader's position inside an
epoch, so a mid-epoch checkpoint would not resume exactly. A job interrupted mid-epoch loses that epoch.
"""

from __future__ import annotations

import logging
import os
import random
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Checkpoint

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "last.ckpt"
_STAMP = "promptlab"  # the checkpoint's key for what promptlab adds (config hash, RNG states)


# --------------------------------------------------------------------------- random number generators
def rng_states() -> dict[str, Any]:
    """The global generators' states, as tensors and plain containers (loadable with weights_only=True)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": str(name), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": int(version), "internal": list(internal), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore what `rng_states` returned."""
    torch.set_rng_state(states["torch"])
    numpy_state = states["numpy"]
    np.random.set_state((numpy_state["name"], numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                         numpy_state["has_gauss"], numpy_state["gauss"]))
    python_state = states["python"]
    random.setstate((python_state["version"], tuple(python_state["internal"]), python_state["gauss_next"]))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


# --------------------------------------------------------------------------- the callback
class RunCheckpoint(Checkpoint):
    """Writes `<run dir>/last.ckpt` atomically at epoch ends: every `every_n_epochs` epochs (0: never by count),
    at the first epoch end `every_n_minutes` after the previous write (or the start), and after the last epoch.
    A `Checkpoint` subclass, so Lightning runs it after every other callback's and the module's epoch-end hooks:
    the state it saves is the epoch's final one."""

    def __init__(self, path: Path, config_hash: str, every_n_epochs: int = 0,
                 every_n_minutes: float | None = 1.0) -> None:
        self.path = Path(path)
        self.config_hash = config_hash
        self.every_n_epochs = int(every_n_epochs)
        self.every_n_minutes = every_n_minutes
        self._last_write = time.monotonic()
        self.writes = 0

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        finished = trainer.current_epoch + 1
        by_epochs = self.every_n_epochs > 0 and finished % self.every_n_epochs == 0
        by_time = (self.every_n_minutes is not None
                   and time.monotonic() - self._last_write >= 60.0 * float(self.every_n_minutes))
        # The last epoch too: a job stopped during its (possibly long) evaluation does not train again.
        last = trainer.max_epochs is not None and finished >= trainer.max_epochs
        if by_epochs or by_time or last:
            self.save(trainer)

    def save(self, trainer: L.Trainer) -> None:
        # Written under a temporary name and renamed: a job killed while writing leaves the previous
        # checkpoint intact. Every rank calls save_checkpoint (it synchronises them); rank 0 writes.
        staging = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        trainer.save_checkpoint(staging, weights_only=False)  # a full checkpoint: optimiser, loops, callbacks
        if trainer.is_global_zero:
            os.replace(staging, self.path)
        self._last_write = time.monotonic()
        self.writes += 1

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        checkpoint[_STAMP] = {"config_hash": self.config_hash, "rng": rng_states()}

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        # Called while Lightning restores the run, before the next epoch draws anything.
        set_rng_states(checkpoint[_STAMP]["rng"])


# --------------------------------------------------------------------------- finding a checkpoint to resume
def resumable_checkpoint(run_dir: Path, config_hash: str) -> tuple[Path | None, str | None]:
    """The run's `last.ckpt` if it belongs to this config, and a note for the record.

    A checkpoint of another config (the same job folder after a config change) or an unreadable one is kept
    beside, renamed with a `.stale` suffix, never deleted, and the job starts from epoch 0.
    """
    path = run_dir / CHECKPOINT_NAME
    if not path.is_file():
        return None, None
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        stamp = checkpoint[_STAMP]
        epoch = int(checkpoint["epoch"]) + 1
    except Exception as err:  # noqa: BLE001 - any unreadable checkpoint is set aside, not fatal
        return None, _set_aside(path, f"it cannot be read ({type(err).__name__}: {err})")
    if stamp.get("config_hash") != config_hash:
        return None, _set_aside(path, "it was written by another config of this job folder")
    return path, f"resumed from {path.name} after epoch {epoch} (checkpoint.every_n_epochs / every_n_minutes)"


def _set_aside(path: Path, why: str) -> str:
    stale = path.with_name(path.name + ".stale")
    try:
        os.replace(path, stale)
    except FileNotFoundError:  # another DDP rank of this job moved it first
        pass
    message = f"{path} not resumed: {why}; kept as {stale.name}, training starts from epoch 0"
    log.warning(message)
    return message


def remove_checkpoint(run_dir: Path) -> None:
    """Drop the job's checkpoint once its record is complete (a finished job is skipped, never resumed)."""
    (run_dir / CHECKPOINT_NAME).unlink(missing_ok=True)
