"""The Hydra entry point: one run = fit a prompt learner (unless zero-shot), evaluate it as the protocol
says, write the run record. `python -m promptlab.train <overrides>`; `-m` for sweeps.

`execute` is the recipe: each step is a function of promptlab.engine.run (module, plan, trainer, fit, validate,
evaluate); `run` adds the run states (running, interrupted, failed, complete), resume and the record.
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
from omegaconf import DictConfig, OmegaConf

from promptlab.cli_errors import user_errors_in_hydra_job
from promptlab.config import LAUNCH_KEYS, register_configs, validate
from promptlab.config.deprecated import apply_renames, names_before_renames
from promptlab.config.registry import choice, plain
from promptlab.engine import run as steps
from promptlab.engine.build import (
    RunParts,
    build_parts,
    effective_lr,
    finish_wandb,
    resolve_epochs,
    run_label,
    save_learner,
)
from promptlab.engine.checkpointing import remove_checkpoint
from promptlab.engine.module import PromptLearningModule
from promptlab.engine.run import DDP_STRATEGIES, gpu_for_job, is_multirun, job_devices  # noqa: F401 - re-exported
from promptlab.errors import ConfigError
from promptlab.logs import quiet_libraries
from promptlab.methods.base import PromptLearner, tuned_on
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


# --------------------------------------------------------------------------- helpers
def run_dir_of(cfg: DictConfig) -> Path:
    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return Path(cfg.paths.output_dir) / "runs" / str(cfg.run_name)


def check_launch(cfg: DictConfig) -> None:
    """Fail fast on a local multirun with DDP: Lightning would re-run the whole sweep in every rank."""
    strategy = str(cfg.trainer.get("strategy", "auto"))
    if not is_multirun() or not any(strategy.startswith(s) for s in DDP_STRATEGIES):
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


def summary_of(cfg: DictConfig, epochs: int, learner: PromptLearner | None = None, precision: str | None = None,
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
    if learner is None:
        if method.learner.get("n_ctx") is not None:
            summary["n_ctx"] = int(method.learner.n_ctx)
    else:
        if learner.text_prompts is not None:
            # Which hand-written prompts ran; a value that varies in a sweep also splits the result table's rows.
            summary["prompts"] = str(cfg.prompts.templates)
        summary.update(learner.summary())
    generator = cfg.dataset.get("generator")
    if generator is not None:
        summary["spurious"] = float(generator.spurious)
    return summary


@dataclass
class RunObjects:
    """The live parts of a finished run (for the record's writer, the analysis, the API)."""

    trainer: L.Trainer
    module: PromptLearningModule
    parts: RunParts

    @property
    def learner(self) -> PromptLearner:
        return self.parts.learner


# --------------------------------------------------------------------------- the run
def execute(cfg: DictConfig, run_dir: Path, config_digest: str | None = None) -> tuple[dict[str, Any], RunObjects]:
    """Fit and evaluate; returns (the record's fields: metrics, evaluations, timings, notes, ...; the live
    objects). With `config_digest` (the resume hash) training keeps in-run checkpoints (engine.run.resume_state)."""
    t_start = time.perf_counter()
    if cfg.get("num_threads"):
        torch.set_num_threads(int(cfg.num_threads))
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    epochs = resolve_epochs(cfg.method.optim, cfg.dataset, int(cfg.shots))
    parts = build_parts(cfg, prompt=Path(cfg.load_prompt) if cfg.get("load_prompt") else None)
    learner = parts.learner
    module = steps.build_module(cfg, parts, epochs)
    plan = steps.training_plan(cfg, learner, parts, epochs)
    resume = steps.resume_state(cfg, run_dir, plan, config_digest)
    trainer = steps.build_trainer(cfg, run_dir, plan, resume, config_digest)
    steps.attach_trainer(parts, trainer)
    t_setup = time.perf_counter()
    fitted = steps.fit(cfg, trainer, module, parts, plan, resume)
    validation = steps.validate(cfg, trainer, module, parts, plan)
    fit_s = time.perf_counter() - t_setup - fitted.precheck_s if (plan.trains or learner.fits_features) else 0.0
    if trainer.is_global_zero and learner.trainable:
        save_prompt(cfg, run_dir, parts, trainer)
    t_eval = time.perf_counter()
    evaluations, eval_notes = steps.evaluate(trainer, module, parts)
    eval_s = time.perf_counter() - t_eval + fitted.precheck_s
    training = module.loss_terms_logged() if plan.trains else {}
    summary = summary_of(cfg, epochs if learner.trainable else 0, learner=learner,
                         precision=str(trainer.precision), lr=effective_lr(cfg.method) if learner.trainable else None)
    tuned = steps.tuning(learner, plan)
    fields = {
        "summary": {**summary, **fitted.summary, "tuned_on": tuned_on(tuned)},
        "tuning": tuned,
        "fit": learner.fitted_values(),
        "metrics": steps.protocol_metrics(choice(cfg.protocol.name), evaluations),
        "evaluations": evaluations,
        "timings": {"total_s": time.perf_counter() - t_start, "setup_s": t_setup - t_start, "fit_s": fit_s,
                    "eval_s": eval_s},
        "notes": steps.run_notes(parts, plan) + fitted.notes + eval_notes
        + ([f"final train loss {training['loss']:.4f}"] if "loss" in training else []),
        "validation": validation,
        "training": training,
        "loader_workers": dict(parts.datamodule.workers_used),
    }
    return fields, RunObjects(trainer, module, parts)


def save_prompt(cfg: DictConfig, run_dir: Path, parts: RunParts, trainer: L.Trainer) -> None:
    """The learned tensors (prompt_learner.pt), and the W&B artifact when W&B logs the run."""
    save_learner(run_dir / "prompt_learner.pt", parts.learner, cfg, clip=parts.clip)
    log_prompt_artifact(trainer.loggers, run_dir / "prompt_learner.pt", run_label(cfg),
                        {"method": cfg.method.name, "dataset": cfg.dataset.name, "seed": int(cfg.seed),
                         "shots": int(cfg.shots), "backbone": cfg.model.display_name or cfg.model.name})


@dataclass
class Job:
    """What every record of a job repeats: its folder, config hash, overrides, config and launch."""

    run_dir: Path
    digest: str
    overrides: list[str]
    config: dict[str, Any]
    launch: dict[str, Any]

    def record(self, cfg: DictConfig, status: str, **fields: Any) -> dict[str, Any]:
        summary = fields.pop("summary", None)
        return make_record(self.run_dir, status=status, summary=summary if summary is not None else _safe_summary(cfg),
                           config_hash=self.digest, overrides=self.overrides, config=self.config, **fields)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Run one job with resume and failure records; returns the record."""
    # Deprecated key names moved to their current ones, then the checks: before anything is loaded or written.
    apply_renames(cfg, list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else None)
    validate(cfg)
    check_launch(cfg)
    run_dir = run_dir_of(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    plain_cfg = plain(cfg)
    digest = config_hash(names_before_renames(plain_cfg), exclude=LAUNCH_KEYS)  # stable across key renames
    if cfg.get("resume", True) and is_complete(run_dir, digest):
        log.info("skipping %s: %s already holds a complete record of this config", cfg.run_name, run_dir)
        return read_record(run_dir)
    job = Job(run_dir, digest, list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else [],
              plain_cfg, {"pid": os.getpid(), "host": socket.gethostname(),
                          "started": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    if _rank() == 0:
        # A job killed without a chance to say so (SIGKILL, power loss) leaves this `running` record behind.
        write_record(run_dir, job.record(cfg, STATUS_RUNNING, launch=job.launch))
    interruption = Interruption()
    try:
        with interrupt_signals() as interruption:
            fields, objects = execute(cfg, run_dir, config_digest=digest)
    except BaseException as err:
        _stopped(cfg, job, err, interruption)
        raise
    record = job.record(cfg, STATUS_COMPLETE, summary=fields["summary"], metrics=fields["metrics"],
                        evaluations=fields["evaluations"], timings=fields["timings"], notes=fields["notes"],
                        backbone=objects.parts.clip.record())
    # What ran: the validation, the optimised loss and its terms, worker processes per image loader, and each
    # tuned value with the data it was chosen on (`tuning`; the summary's `tuned_on` is the strongest source), and
    # what the fit chose from data (`fit`).
    for key in ("validation", "training", "loader_workers", "tuning", "fit"):
        record[key] = fields[key]
    if objects.trainer.is_global_zero:
        _finish(cfg, job, record, objects)
    finish_wandb()
    return record


def _stopped(cfg: DictConfig, job: Job, err: BaseException, interruption: Interruption) -> None:
    """A job that raised: a `failed` record, or (Ctrl-C, SIGTERM, SLURM's pre-emption) an `interrupted` one
    with how to go on; raises the exit to use, or returns to let the error propagate."""
    if not (isinstance(err, KeyboardInterrupt) or interruption.signum is not None):
        if _rank() == 0:
            write_record(job.run_dir, error_record(job.run_dir, err, summary=_safe_summary(cfg),
                                                   config_hash=job.digest, overrides=job.overrides,
                                                   config=job.config))
        finish_wandb()
        return
    if _rank() == 0:
        write_record(job.run_dir, job.record(cfg, STATUS_INTERRUPTED, launch=job.launch))
    finish_wandb()
    print(f"promptlab: {cfg.run_name} interrupted; rerun the same command to resume (finished jobs are "
          "skipped, this one continues from its last checkpoint).", file=sys.stderr, flush=True)
    if isinstance(err, SystemExit) and interruption.signum == _preemption_signal():
        return  # submitit requeued the job and asked to exit: keep its exit code
    raise SystemExit(EXIT_INTERRUPTED) from None


def _finish(cfg: DictConfig, job: Job, record: dict[str, Any], objects: RunObjects) -> None:
    """On rank 0: the optional analysis, the complete record (then the in-run checkpoint goes), loggers, table."""
    if cfg.get("analysis", False) and objects.learner.direct_logits:
        # The drift diagnostics compare learned class-text embeddings; these learners do not score by them.
        log.warning("analysis=true skipped: %s does not classify by text embeddings", cfg.method.name)
    elif cfg.get("analysis", False):
        from promptlab.analysis.runs import analyze_run_objects

        analyze_run_objects(job.run_dir, cfg, objects.parts, record["summary"])
    try:
        write_record(job.run_dir, record)
        if not OmegaConf.select(cfg, "checkpoint.keep", default=False):
            remove_checkpoint(job.run_dir)  # the job is complete: a rerun skips it and never resumes
    except OSError as err:  # the results are still shown; only the file is missing
        log.error("could not write the run record %s: %s", job.run_dir / "metrics.json", err)
    _log_test_metrics(objects.trainer, record)
    print_run(record, job.run_dir)


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
