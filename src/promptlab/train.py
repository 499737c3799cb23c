"""The Hydra entry point: one run = fit a prompt learner (unless zero-shot), evaluate it as the protocol
says, write the run record. `python -m promptlab.train <overrides>`; `-m` for sweeps.

Learners fitted on features (`fits_features`: linear probe, Tip-Adapter) get the cached few-shot train and
val features first (`learner.fit_features`), before Lightning's training if they also train (Tip-Adapter-F,
then `learner.finish_fit`). A learner that cannot score other classes (`scores_unseen_classes=False`) has
those evaluations recorded as not applicable, with the reason, instead of run.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from promptlab.cli_errors import user_errors_in_hydra_job
from promptlab.config import LAUNCH_KEYS, register_configs, validate
from promptlab.config.registry import choice, plain
from promptlab.engine.build import (
    build_loggers,
    build_parts,
    effective_lr,
    finish_wandb,
    optimizer_factory,
    resolve_epochs,
    run_label,
    save_learner,
)
from promptlab.engine.checkpointing import CHECKPOINT_NAME, RunCheckpoint, remove_checkpoint, resumable_checkpoint
from promptlab.engine.module import EpochSelector, PromptLearningModule, ValidationSelector
from promptlab.errors import ConfigError
from promptlab.logs import quiet_libraries
from promptlab.protocols import get_protocol
from promptlab.results.records import (
    STATUS_COMPLETE,
    STATUS_INTERRUPTED,
    STATUS_RUNNING,
    config_hash,
    error_record,
    is_complete,
    make_record,
    read_record,
    write_record,
)
from promptlab.results.wandb_log import log_prompt_artifact

log = logging.getLogger("promptlab")

register_configs()

DDP_STRATEGIES = ("ddp", "ddp_spawn", "ddp_find_unused_parameters_true", "fsdp", "deepspeed")


# --------------------------------------------------------------------------- helpers
def run_dir_of(cfg: DictConfig) -> Path:
    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return Path(cfg.paths.output_dir) / "runs" / str(cfg.run_name)


def _is_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def check_launch(cfg: DictConfig) -> None:
    """Fail fast on a local multirun with DDP: Lightning would re-run the whole sweep in every rank."""
    strategy = str(cfg.trainer.get("strategy", "auto"))
    if not _is_multirun() or not any(strategy.startswith(s) for s in DDP_STRATEGIES):
        return
    launcher = str(OmegaConf.select(HydraConfig.get(), "launcher._target_", default=""))
    if "submitit" in launcher.lower():
        return  # each SLURM job runs its ranks through srun; nothing is re-launched
    raise ConfigError(
        f"trainer.strategy={strategy} inside a local multirun (-m): Lightning re-launches the script with its "
        "original arguments, so every rank would run the whole sweep (Lightning issue #11300). Run sweeps as "
        "parallel single-device jobs (launcher=joblib, trainer=default) or on SLURM with DDP inside each job "
        "(launcher=submitit_slurm trainer=ddp); run a single DDP job without -m."
    )


def summary_of(cfg: DictConfig, epochs: int, learner: Any = None, precision: str | None = None,
               lr: float | None = None) -> dict[str, Any]:
    """The record's summary: what ran. With the built parts, the effective values (the learner's context
    length, the precision Lightning ran, the scaled lr) rather than the requested ones."""
    method = cfg.method
    summary = {
        "protocol": choice(cfg.protocol.name),
        "method": method.name,
        "method_display": method.display_name,
        "dataset": cfg.dataset.name,
        "dataset_display": cfg.dataset.display_name or cfg.dataset.name,
        "backbone": cfg.model.display_name or cfg.model.name,
        "shots": int(cfg.shots),
        "seed": int(cfg.seed),
        "epochs": epochs,
        "precision": precision if precision is not None else str(cfg.trainer.precision),
    }
    if lr is not None:
        summary["lr"] = lr
    n_ctx = getattr(learner, "n_ctx", None) if learner is not None else method.learner.get("n_ctx")
    if n_ctx is not None:
        summary["n_ctx"] = int(n_ctx)
    text_prompts = getattr(learner, "text_prompts", None)
    if text_prompts is not None:
        # Which hand-written prompts ran; a value that varies in a sweep also splits the result table's rows.
        summary["prompts"] = str(cfg.prompts.templates)
        summary.update(text_prompts.summary())
    generator = cfg.dataset.get("generator")
    if generator is not None:
        summary["spurious"] = float(generator.spurious)
    return summary


def gpu_for_job(job_num: int, n_gpus: int) -> int:
    """The GPU of a sweep's job: job numbers go round the visible GPUs, so N parallel jobs on N GPUs (or 2N
    on N) share them evenly."""
    return job_num % n_gpus


def job_devices(cfg: DictConfig, n_gpus: int | None = None) -> tuple[list[int], str] | None:
    """With assign_gpus, a single-device job of a multirun on a machine with several GPUs runs on its own GPU
    (launcher=joblib runs jobs in parallel; without this every job would land on GPU 0). Returns the
    Trainer's `devices` and a note for the record, or None when nothing is to be assigned."""
    if not cfg.get("assign_gpus", True) or not _is_multirun():
        return None
    trainer = cfg.trainer
    if str(trainer.devices) != "1" or str(trainer.accelerator) not in ("auto", "gpu", "cuda"):
        return None
    if any(str(trainer.strategy).startswith(s) for s in DDP_STRATEGIES):
        return None
    n_gpus = torch.cuda.device_count() if n_gpus is None else n_gpus
    if n_gpus < 2:
        return None
    job_num = int(HydraConfig.get().job.num)
    gpu = gpu_for_job(job_num, n_gpus)
    return [gpu], f"job {job_num} of the sweep placed on GPU {gpu} of {n_gpus} (assign_gpus=true)"


# --------------------------------------------------------------------------- the run
def execute(cfg: DictConfig, run_dir: Path, config_digest: str | None = None) -> dict[str, Any]:
    """Fit and evaluate; returns the record's fields (metrics, evaluations, timings, notes).

    With `config_digest` (the resume hash) and checkpoint.enabled, training writes `last.ckpt` at epoch ends
    and, with resume=true, continues from one this config left behind."""
    t_start = time.perf_counter()
    if cfg.get("num_threads"):
        torch.set_num_threads(int(cfg.num_threads))
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    method, optim = cfg.method, cfg.method.optim
    epochs = resolve_epochs(optim, cfg.dataset, int(cfg.shots))
    parts = build_parts(cfg, prompt=Path(cfg.load_prompt) if cfg.get("load_prompt") else None)
    clip, data, learner, datamodule = parts.clip, parts.data, parts.learner, parts.datamodule
    lr = effective_lr(method)
    module = PromptLearningModule(
        clip, learner, optimizer=optimizer_factory(method), lr=lr, max_epochs=max(epochs, 1),
        warmup_epochs=int(optim.warmup_epochs), warmup_lr=float(optim.warmup_lr), run_name=str(cfg.run_name),
        schedule_unit=choice(optim.get("schedule_unit", "epoch")),
    )
    trains = learner.trainable and epochs > 0
    selector = None
    if trains and learner.selects_epoch:
        selector = EpochSelector(split="test" if getattr(learner, "select_on_test", False) else "val")
    val_cfg = cfg.get("validation")
    validating = val_cfg is not None and bool(data.val_items)
    every_val = int(val_cfg.every_n_epochs) if validating and trains else 0
    if selector is None and trains and validating and choice(val_cfg.selection) == "best_val":
        selector = ValidationSelector()
    placement = job_devices(cfg)
    callbacks: list[L.Callback] = [selector] if selector is not None else []
    ckpt_cfg = cfg.get("checkpoint")
    resume_from, resume_note = None, None
    checkpoints = trains and config_digest is not None and ckpt_cfg is not None and bool(ckpt_cfg.enabled)
    if checkpoints:
        callbacks.append(RunCheckpoint(run_dir / CHECKPOINT_NAME, config_digest, ckpt_cfg.every_n_epochs,
                                       ckpt_cfg.every_n_minutes))
        if cfg.get("resume", True):
            resume_from, resume_note = resumable_checkpoint(run_dir, config_digest)
    trainer: L.Trainer = instantiate(cfg.trainer, max_epochs=max(epochs, 1), logger=build_loggers(cfg, run_dir),
                                     use_distributed_sampler=False, default_root_dir=str(run_dir),
                                     callbacks=callbacks or None,
                                     # Lightning refuses a Checkpoint callback unless checkpointing is enabled.
                                     **({"enable_checkpointing": True} if checkpoints else {}),
                                     # every_n_epochs=0: no validation during fit (only the one after it).
                                     check_val_every_n_epoch=every_val or max(epochs, 1) + 1,
                                     limit_val_batches=1.0 if validating else 0,
                                     **({"devices": placement[0]} if placement else {}))
    # Lightning may change the precision (16-mixed falls back to bf16-mixed on CPU): encode features as it runs.
    datamodule.precision = str(trainer.precision)
    # The node's ranks share its CPUs among their loader workers, also for the test features extracted before fit
    # (the data module reads it from here, not from its trainer, which Lightning attaches only in fit).
    datamodule.ranks_per_node = trainer.num_devices
    t_setup = time.perf_counter()
    precheck_s = 0.0
    fit_notes: list[str] = []
    fit_summary: dict[str, Any] = {}
    fit_data = None
    if learner.fits_features:
        module.to(trainer.strategy.root_device)  # encode and fit on the run's device
        fit_data = datamodule.fit_features()  # few-shot train and val only: the test split is not read
        if cfg.get("load_prompt"):
            fit_notes.append(f"fitted state loaded from {cfg.load_prompt}")  # not fitted again
        else:
            fit_notes.append(_chosen_note(learner.fit_features(clip, fit_data)))
    if selector is not None and not isinstance(selector, ValidationSelector):
        _held_out(selector, data, datamodule, fit_data)
    if resume_note is not None:
        fit_notes.append(resume_note)
    if trains:
        # Every test image is decoded before training (with cached features: they are extracted now and reused by
        # the evaluations): a bad test image stops the run here, not after the training it would waste.
        module.to(trainer.strategy.root_device)
        t_check = time.perf_counter()
        for eval_set in data.eval_sets:
            if learner.scores_unseen_classes or list(eval_set.classnames) == list(data.train_classnames):
                datamodule.check_eval_images(eval_set)
        precheck_s = time.perf_counter() - t_check  # test features extracted now: counted as evaluation time
        # weights_only: a checkpoint holds tensors and plain containers only (RunCheckpoint writes nothing else).
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from, weights_only=True)
        if fit_data is not None:
            fit_notes.append(_chosen_note(learner.finish_fit(clip, fit_data)))
    if selector is not None and selector.best is not None:
        fit_summary["epoch_selected_on"] = selector.split
        fit_notes.append(f"epoch {selector.summary()['selected_epoch']} of {epochs} kept: best accuracy on the "
                         f"{selector.split} split ({', '.join(f'{a:.2f}' for a in selector.history)} by epoch)")
        if selector.split != "val":
            fit_notes.append("EPOCH SELECTED ON THE TEST SET (method.learner.select_on_test=true, the reference's "
                             "choice): the test accuracy is optimistic, not a held-out estimate")
    validation = _validate(trainer, module, datamodule, data, val_cfg, epochs if trains else 0, selector) \
        if validating else {"split": "val", "n_images": 0, "note": "no few-shot val split: nothing validated"}
    fit_s = time.perf_counter() - t_setup - precheck_s if (trains or learner.fits_features) else 0.0
    if trainer.is_global_zero and learner.trainable:
        save_learner(run_dir / "prompt_learner.pt", learner, cfg, clip=clip)
        log_prompt_artifact(trainer.loggers, run_dir / "prompt_learner.pt", run_label(cfg),
                            {"method": cfg.method.name, "dataset": cfg.dataset.name, "seed": int(cfg.seed),
                             "shots": int(cfg.shots), "backbone": cfg.model.display_name or cfg.model.name})

    t_eval = time.perf_counter()
    evaluations = []
    for eval_set in data.eval_sets:
        if not learner.scores_unseen_classes and list(eval_set.classnames) != list(data.train_classnames):
            reason = learner.unseen_classes_reason or f"{type(learner).__name__} cannot score other classes"
            evaluations.append({
                "name": eval_set.name, "dataset": eval_set.dataset, "subset": eval_set.subset,
                "n_images": len(eval_set.items), "n_classes": len(eval_set.classnames), "not_applicable": reason,
            })
            fit_notes.append(f"evaluation {eval_set.name!r} not applicable (not run): {reason}")
            continue
        learner.set_classnames(clip, eval_set.classnames)
        datamodule.active_eval = eval_set
        trainer.test(module, datamodule=datamodule, verbose=False)
        evaluations.append({
            "name": eval_set.name, "dataset": eval_set.dataset, "subset": eval_set.subset,
            "acc": module.last_eval["acc"], "n_correct": module.last_eval["n_correct"],
            "n_images": module.last_eval["n_images"], "n_classes": len(eval_set.classnames),
            "top5_acc": module.last_eval["top5_acc"], "n_correct_top5": module.last_eval["n_correct_top5"],
            "mean_per_class_acc": module.last_eval["mean_per_class_acc"],
        })
    eval_s = time.perf_counter() - t_eval + precheck_s
    prompt_notes = list(getattr(getattr(learner, "text_prompts", None), "notes", []))
    notes = list(data.notes) + ([placement[1]] if placement else []) + prompt_notes
    skipped = datamodule.train_skipped + [s for e in data.eval_sets for s in e.skipped]
    if skipped:
        notes.append(f"skipped {len(skipped)} unreadable images (on_error=skip): "
                     + ", ".join(s["impath"] for s in skipped[:20]))
    train_loss = trainer.callback_metrics.get("train/loss_epoch")
    summary = summary_of(cfg, epochs if learner.trainable else 0, learner=learner,
                         precision=str(trainer.precision), lr=lr if learner.trainable else None)
    return {
        "summary": {**summary, **fit_summary},
        "metrics": _metrics(choice(cfg.protocol.name), evaluations),
        "evaluations": evaluations,
        "timings": {"total_s": time.perf_counter() - t_start, "setup_s": t_setup - t_start, "fit_s": fit_s,
                    "eval_s": eval_s},
        "notes": notes + fit_notes
        + ([f"final train loss {float(train_loss):.4f}"] if train_loss is not None else []),
        "validation": validation,
        "loader_workers": dict(datamodule.workers_used),
        "trainer": trainer,
        "learner": learner,
        "clip": clip,
        "data": data,
        "datamodule": datamodule,
    }


def _metrics(protocol_name: str, evaluations: list[dict[str, Any]]) -> dict[str, float]:
    protocol = get_protocol(protocol_name)
    return {**protocol.metrics(evaluations), **protocol.extra_metrics(evaluations)}


def _validate(trainer: L.Trainer, module: PromptLearningModule, datamodule: Any, data: Any, val_cfg: DictConfig,
              epochs: int, selector: EpochSelector | None) -> dict[str, Any]:
    """The record's `validation`: the accuracy on the few-shot val split of the prompt that is evaluated, and the
    history of the epochs validated during training. Validation after training runs unless the last epoch was
    validated and kept."""
    history = list(module.val_history)
    restored = selector is not None and selector.best is not None and selector.best[1] + 1 != epochs
    if not history or history[-1]["epoch"] != epochs or restored:
        trainer.validate(module, datamodule=datamodule, verbose=False)
    final = module.last_val
    record = {"split": "val", "acc": final["acc"], "n_correct": final["n_correct"], "n_images": final["n_images"],
              "every_n_epochs": int(val_cfg.every_n_epochs), "selection": choice(val_cfg.selection),
              "history": history}
    if selector is not None and selector.best is not None:
        record["selected_epoch"] = selector.best[1] + 1
    return record


def _held_out(selector: EpochSelector, data: Any, datamodule: Any, fit_data: Any) -> None:
    """Give the selector its held-out set: the few-shot val split, or (select_on_test, the Tip-Adapter-F
    reference's choice) the source test set, the first evaluation, whose classes are the training classes."""
    if selector.split == "test":
        selector.features, selector.labels = datamodule.eval_features(data.eval_sets[0])
        return
    fit_data = fit_data if fit_data is not None else datamodule.fit_features()
    if fit_data.val_labels.numel() == 0:
        raise ConfigError("the epoch is chosen on the few-shot val split, which is empty (dataset val split).")
    selector.features, selector.labels = fit_data.val, fit_data.val_labels


def _chosen_note(chosen: dict[str, Any]) -> str:
    return "fitted on the few-shot train/val features: " + ", ".join(
        f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in chosen.items())


def run(cfg: DictConfig) -> dict[str, Any]:
    """Run one job with resume and failure records; returns the record."""
    validate(cfg)  # before anything is loaded or written
    check_launch(cfg)
    run_dir = run_dir_of(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    plain_cfg = plain(cfg)
    digest = config_hash(plain_cfg, exclude=LAUNCH_KEYS)
    if cfg.get("resume", True) and is_complete(run_dir, digest):
        log.info("skipping %s: %s already holds a complete record of this config", cfg.run_name, run_dir)
        return read_record(run_dir)
    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    launch = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    if _rank() == 0:
        # A job killed without a chance to say so (SIGKILL, power loss) leaves this `running` record behind.
        write_record(run_dir, make_record(run_dir, status=STATUS_RUNNING, summary=_safe_summary(cfg),
                                          config_hash=digest, overrides=overrides, config=plain_cfg, launch=launch))
    interruption = Interruption()
    try:
        with interrupt_signals() as interruption:
            result = execute(cfg, run_dir, config_digest=digest)
    except BaseException as err:
        if not (isinstance(err, KeyboardInterrupt) or interruption.signum is not None):
            if _rank() == 0:
                write_record(run_dir, error_record(run_dir, err, summary=_safe_summary(cfg), config_hash=digest,
                                                   overrides=overrides, config=plain_cfg))
            finish_wandb()
            raise
        # Ctrl-C, SIGTERM or SLURM's pre-emption signal: say so, and how to go on.
        if _rank() == 0:
            write_record(run_dir, make_record(run_dir, status=STATUS_INTERRUPTED, summary=_safe_summary(cfg),
                                              config_hash=digest, overrides=overrides, config=plain_cfg,
                                              launch=launch))
        finish_wandb()
        print(f"promptlab: {cfg.run_name} interrupted; rerun the same command to resume (finished jobs are "
              "skipped, this one continues from its last checkpoint).", file=sys.stderr, flush=True)
        if isinstance(err, SystemExit) and interruption.signum == _preemption_signal():
            raise  # submitit requeued the job and asked to exit: keep its exit code
        raise SystemExit(EXIT_INTERRUPTED) from None
    record = make_record(
        run_dir, status=STATUS_COMPLETE, summary=result["summary"], config_hash=digest, overrides=overrides,
        config=plain_cfg, metrics=result["metrics"], evaluations=result["evaluations"],
        timings=result["timings"], notes=result["notes"], backbone=result["clip"].record(),
    )
    record["validation"] = result["validation"]
    # What ran: worker processes per image loader (loader.num_workers=null decides them from the machine).
    record["loader_workers"] = result["loader_workers"]
    trainer = result["trainer"]
    if trainer.is_global_zero:
        if cfg.get("analysis", False) and result["learner"].direct_logits:
            # The drift diagnostics compare learned class-text embeddings; these learners do not score by them.
            log.warning("analysis=true skipped: %s does not classify by text embeddings", cfg.method.name)
        elif cfg.get("analysis", False):
            from promptlab.analysis.runs import analyze_run_objects

            analyze_run_objects(run_dir, cfg, result)
        try:
            write_record(run_dir, record)
            if not OmegaConf.select(cfg, "checkpoint.keep", default=False):
                remove_checkpoint(run_dir)  # the job is complete: a rerun skips it and never resumes
        except OSError as err:  # the results are still shown; only the file is missing
            log.error("could not write the run record %s: %s", run_dir / "metrics.json", err)
        _log_test_metrics(trainer, record)
        print_run(record, run_dir)
    finish_wandb()
    return record


EXIT_INTERRUPTED = 130  # the shell's code for a job stopped by SIGINT


@dataclass
class Interruption:
    """The signal that stopped the job, if any (Lightning turns a KeyboardInterrupt into SystemExit(1), so
    the exception alone cannot tell an interruption from a failure)."""

    signum: int | None = None


def _preemption_signal() -> int | None:
    """The signal a SLURM job gets before its time limit or pre-emption when submitit runs it (USR2 unless
    SUBMITIT_PREEMPT_SIGNAL says otherwise); None where the platform has no such signal (Windows)."""
    name = "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")
    return getattr(signal, name, None)


@contextmanager
def interrupt_signals() -> Iterator[Interruption]:
    """Within the block, SIGINT (Ctrl-C) and SIGTERM (a cluster's pre-emption, `scancel`, `kill`) raise
    KeyboardInterrupt and are remembered, so the job records `interrupted` instead of `failed` or nothing.
    The pre-emption signal (SIGUSR2) is remembered too and then handed to the handler that was there before:
    under launcher=submitit_slurm that is submitit's, which requeues the job (hydra.launcher.max_num_timeout)
    and exits; the requeued job resumes from its last.ckpt. Main thread only (signal handlers cannot be set
    elsewhere)."""
    state = Interruption()
    if threading.current_thread() is not threading.main_thread():
        yield state
        return

    def handler(signum: int, frame: Any) -> None:
        state.signum = signum
        raise KeyboardInterrupt(f"signal {signum}")

    signals = [signal.SIGINT, signal.SIGTERM]
    previous = {sig: signal.signal(sig, handler) for sig in signals}
    preemption = _preemption_signal()
    if preemption is not None:
        before = signal.getsignal(preemption)

        def preempted(signum: int, frame: Any) -> None:
            state.signum = signum
            if callable(before):
                before(signum, frame)  # submitit: requeue, then SystemExit
            raise KeyboardInterrupt(f"signal {signum}")

        previous[preemption] = signal.signal(preemption, preempted)
    try:
        yield state
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _rank() -> int:
    import os

    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", 0)))


def _safe_summary(cfg: DictConfig) -> dict[str, Any]:
    try:
        return summary_of(cfg, -1)
    except Exception:  # noqa: BLE001 - the error record must be written even for a broken config
        return {}


def _log_test_metrics(trainer: L.Trainer, record: dict[str, Any]) -> None:
    for logger in trainer.loggers:
        logger.log_metrics({f"test/{k}": v for k, v in record["metrics"].items()})
        if hasattr(logger, "experiment") and type(logger).__name__ == "WandbLogger":
            logger.experiment.summary.update({f"test/{k}": v for k, v in record["metrics"].items()})
        logger.finalize("success")


def print_run(record: dict[str, Any], run_dir: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    summary = record["summary"]
    table = Table(title=f"{summary['method_display']} on {summary['dataset_display']} "
                        f"({summary['protocol']}, {summary['shots']} shots, seed {summary['seed']})")
    for column in ("evaluation", "classes", "images", "top-1 %"):
        table.add_column(column, justify="right" if column != "evaluation" else "left")
    for e in record["evaluations"]:
        acc = "n/a" if e.get("not_applicable") else f"{e['acc']:.2f}"
        table.add_row(e["name"], str(e["n_classes"]), str(e["n_images"]), acc)
    if "hm" in record["metrics"]:
        table.add_row("HM", "", "", f"{record['metrics']['hm']:.2f}")
    console = Console()
    console.print(table)
    console.print(f"run record: {run_dir / 'metrics.json'}")


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    quiet_libraries()
    with user_errors_in_hydra_job("promptlab-train"):
        record = run(cfg)
    # What a Hydra sweeper (Optuna, hparams_search) optimises: the accuracy on the few-shot val split, never a
    # test metric (the test split is not read to compute it).
    return objective(record)


def objective(record: dict[str, Any] | None) -> float | None:
    """A run's value for a sweeper: its validation accuracy (None when it had no val split)."""
    return ((record or {}).get("validation") or {}).get("acc")


if __name__ == "__main__":
    main()
