"""The steps of one run, each a function: the module, the training plan, the Trainer, fitting, validating and
evaluating. `promptlab.train.execute` calls them in order (the recipe); each returns what the record says about
it, kept apart from the live objects (trainer, module, learner, data) the caller may still use.

Learners fitted on features (`fits_features`: linear probe, Tip-Adapter) get the cached few-shot train and val
features first (`learner.fit_features`), before Lightning's training if they also train (Tip-Adapter-F, then
`learner.finish_fit`). A learner that cannot score other classes (`scores_unseen_classes=False`) has those
evaluations recorded as not applicable, with the reason, instead of run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig

from promptlab.config.registry import choice
from promptlab.engine.build import RunParts, build_loggers, effective_lr, optimizer_factory
from promptlab.engine.checkpointing import CHECKPOINT_NAME, RunCheckpoint, resumable_checkpoint
from promptlab.engine.module import EpochSelector, PromptLearningModule, ValidationSelector
from promptlab.errors import ConfigError
from promptlab.methods.base import FitFeatures, PromptLearner
from promptlab.protocols import get_protocol

DDP_STRATEGIES = ("ddp", "ddp_spawn", "ddp_find_unused_parameters_true", "fsdp", "deepspeed")


def is_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


@dataclass
class TrainingPlan:
    """What the run will do, decided from the config and the learner before anything is fitted."""

    epochs: int
    trains: bool  # gradient training with at least one epoch
    validating: bool  # a few-shot val split exists and validation is configured
    every_val: int  # validate every N epochs during fit (0: only after it)
    selector: EpochSelector | None  # keeps the best epoch (held-out split or the validation loop)
    placement: tuple[list[int], str] | None  # a sweep job's own GPU, and the note saying so


@dataclass
class Resume:
    """In-run checkpoints: whether they are written, and the one this run continues from."""

    checkpoints: bool = False
    path: Path | None = None
    note: str | None = None


@dataclass
class FitOutcome:
    """What fitting gave the record: its notes and summary additions, and how long it took."""

    notes: list[str] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    fit_data: FitFeatures | None = None
    precheck_s: float = 0.0  # test images decoded (features extracted) before training: evaluation time


def build_module(cfg: DictConfig, parts: RunParts, epochs: int) -> PromptLearningModule:
    """The LightningModule of the run: frozen CLIP + learner, the method's optimiser and schedule."""
    method, optim = cfg.method, cfg.method.optim
    return PromptLearningModule(
        parts.clip, parts.learner, optimizer=optimizer_factory(method), lr=effective_lr(method),
        max_epochs=max(epochs, 1), warmup_epochs=int(optim.warmup_epochs), warmup_lr=float(optim.warmup_lr),
        run_name=str(cfg.run_name), schedule_unit=choice(optim.get("schedule_unit", "epoch")),
    )


def training_plan(cfg: DictConfig, learner: PromptLearner, parts: RunParts, epochs: int) -> TrainingPlan:
    trains = learner.trainable and epochs > 0
    selector = EpochSelector(split=learner.selection_split) if trains and learner.selects_epoch else None
    val_cfg = cfg.get("validation")
    validating = val_cfg is not None and bool(parts.data.val_items)
    every_val = int(val_cfg.every_n_epochs) if validating and trains else 0
    if selector is None and trains and validating and choice(val_cfg.selection) == "best_val":
        selector = ValidationSelector()
    return TrainingPlan(epochs, trains, validating, every_val, selector, job_devices(cfg))


def tuning(learner: PromptLearner, plan: TrainingPlan) -> dict[str, str]:
    """The run's tuned values and where their data came from: the learner's own (`tuned_values`) and, when the
    engine keeps the best epoch of a training run, the epoch (on the test set only for the labelled reproduction
    option of Tip-Adapter-F)."""
    values = dict(learner.tuned_values())
    if plan.selector is not None:
        on_test = learner.selects_epoch and learner.selection_split == "test"
        values["epoch"] = "test" if on_test else "few-shot val"
    return values


def resume_state(cfg: DictConfig, run_dir: Path, plan: TrainingPlan, config_digest: str | None) -> Resume:
    """With the resume hash and checkpoint.enabled, training writes `last.ckpt` at epoch ends and, with
    resume=true, continues from one this config left behind."""
    ckpt_cfg = cfg.get("checkpoint")
    if not (plan.trains and config_digest is not None and ckpt_cfg is not None and bool(ckpt_cfg.enabled)):
        return Resume()
    if not cfg.get("resume", True):
        return Resume(checkpoints=True)
    path, note = resumable_checkpoint(run_dir, config_digest)
    return Resume(True, path, note)


def build_trainer(cfg: DictConfig, run_dir: Path, plan: TrainingPlan, resume: Resume,
                  config_digest: str | None) -> L.Trainer:
    callbacks: list[L.Callback] = [plan.selector] if plan.selector is not None else []
    if resume.checkpoints:
        ckpt_cfg = cfg.checkpoint
        callbacks.append(RunCheckpoint(run_dir / CHECKPOINT_NAME, str(config_digest), ckpt_cfg.every_n_epochs,
                                       ckpt_cfg.every_n_minutes))
    epochs = max(plan.epochs, 1)
    return instantiate(cfg.trainer, max_epochs=epochs, logger=build_loggers(cfg, run_dir),
                       use_distributed_sampler=False, default_root_dir=str(run_dir),
                       callbacks=callbacks or None,
                       # Lightning refuses a Checkpoint callback unless checkpointing is enabled.
                       **({"enable_checkpointing": True} if resume.checkpoints else {}),
                       # every_n_epochs=0: no validation during fit (only the one after it).
                       check_val_every_n_epoch=plan.every_val or epochs + 1,
                       limit_val_batches=1.0 if plan.validating else 0,
                       **({"devices": plan.placement[0]} if plan.placement else {}))


def attach_trainer(parts: RunParts, trainer: L.Trainer) -> None:
    # Lightning may change the precision (16-mixed falls back to bf16-mixed on CPU): encode features as it runs.
    parts.datamodule.precision = str(trainer.precision)
    # The node's ranks share its CPUs among their loader workers, also for the test features extracted before fit
    # (the data module reads it from here, not from its trainer, which Lightning attaches only in fit).
    parts.datamodule.ranks_per_node = trainer.num_devices


def fit(cfg: DictConfig, trainer: L.Trainer, module: PromptLearningModule, parts: RunParts, plan: TrainingPlan,
        resume: Resume) -> FitOutcome:
    """Closed-form fit and/or gradient training, as the learner declares; the held-out data of epoch selection."""
    learner, clip, datamodule = parts.learner, parts.clip, parts.datamodule
    outcome = FitOutcome()
    if learner.fits_features:
        module.to(trainer.strategy.root_device)  # encode and fit on the run's device
        outcome.fit_data = datamodule.fit_features()  # few-shot train and val only: the test split is not read
        if cfg.get("load_prompt"):
            outcome.notes.append(f"fitted state loaded from {cfg.load_prompt}")  # not fitted again
        else:
            outcome.notes.append(chosen_note(learner.fit_features(clip, outcome.fit_data)))
    if plan.selector is not None and not isinstance(plan.selector, ValidationSelector):
        held_out(plan.selector, parts, outcome.fit_data)
    if resume.note is not None:
        outcome.notes.append(resume.note)
    if plan.trains:
        # Every test image is decoded before training (with cached features: they are extracted now and reused by
        # the evaluations): a bad test image stops the run here, not after the training it would waste.
        module.to(trainer.strategy.root_device)
        t_check = time.perf_counter()
        for eval_set in parts.data.eval_sets:
            if learner.scores_unseen_classes or list(eval_set.classnames) == list(parts.data.train_classnames):
                datamodule.check_eval_images(eval_set)
        outcome.precheck_s = time.perf_counter() - t_check
        # weights_only: a checkpoint holds tensors and plain containers only (RunCheckpoint writes nothing else).
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume.path, weights_only=True)
        if outcome.fit_data is not None:
            outcome.notes.append(chosen_note(learner.finish_fit(clip, outcome.fit_data)))
    selector = plan.selector
    if selector is not None and selector.best is not None:
        outcome.summary["epoch_selected_on"] = selector.split
        outcome.notes.append(f"epoch {selector.summary()['selected_epoch']} of {plan.epochs} kept: best accuracy "
                             f"on the {selector.split} split ({', '.join(f'{a:.2f}' for a in selector.history)} "
                             "by epoch)")
        if selector.split != "val":
            outcome.notes.append("EPOCH SELECTED ON THE TEST SET (method.learner.select_on_test=true, the "
                                 "reference's choice): the test accuracy is optimistic, not a held-out estimate")
    return outcome


def validate(cfg: DictConfig, trainer: L.Trainer, module: PromptLearningModule, parts: RunParts,
             plan: TrainingPlan) -> dict[str, Any]:
    """The record's `validation`: the accuracy on the few-shot val split of the prompt that is evaluated, and the
    history of the epochs validated during training. Validation after training runs unless the last epoch was
    validated and kept."""
    if not plan.validating:
        return {"split": "val", "n_images": 0, "note": "no few-shot val split: nothing validated"}
    val_cfg, selector = cfg.validation, plan.selector
    epochs = plan.epochs if plan.trains else 0
    history = list(module.val_history)
    restored = selector is not None and selector.best is not None and selector.best[1] + 1 != epochs
    if not history or history[-1]["epoch"] != epochs or restored:
        trainer.validate(module, datamodule=parts.datamodule, verbose=False)
    final = module.last_val
    record = {"split": "val", "acc": final["acc"], "n_correct": final["n_correct"], "n_images": final["n_images"],
              "every_n_epochs": int(val_cfg.every_n_epochs), "selection": choice(val_cfg.selection),
              "history": history}
    if selector is not None and selector.best is not None:
        record["selected_epoch"] = selector.best[1] + 1
    return record


def evaluate(trainer: L.Trainer, module: PromptLearningModule, parts: RunParts) -> tuple[list[dict], list[str]]:
    """Every evaluation set of the protocol (or its not-applicable entry); returns (evaluations, notes)."""
    learner, data = parts.learner, parts.data
    evaluations, notes = [], []
    for eval_set in data.eval_sets:
        entry = {"name": eval_set.name, "dataset": eval_set.dataset, "subset": eval_set.subset}
        if not learner.scores_unseen_classes and list(eval_set.classnames) != list(data.train_classnames):
            reason = learner.unseen_classes_reason or f"{type(learner).__name__} cannot score other classes"
            evaluations.append({**entry, "n_images": len(eval_set.items), "n_classes": len(eval_set.classnames),
                                "not_applicable": reason})
            notes.append(f"evaluation {eval_set.name!r} not applicable (not run): {reason}")
            continue
        learner.set_classnames(parts.clip, eval_set.classnames)
        parts.datamodule.active_eval = eval_set
        trainer.test(module, datamodule=parts.datamodule, verbose=False)
        result = module.last_eval
        evaluations.append({
            **entry, "acc": result["acc"], "n_correct": result["n_correct"], "n_images": result["n_images"],
            "n_classes": len(eval_set.classnames), "top5_acc": result["top5_acc"],
            "n_correct_top5": result["n_correct_top5"], "mean_per_class_acc": result["mean_per_class_acc"],
        })
    return evaluations, notes


def protocol_metrics(protocol_name: str, evaluations: list[dict[str, Any]]) -> dict[str, float]:
    protocol = get_protocol(protocol_name)
    return {**protocol.metrics(evaluations), **protocol.extra_metrics(evaluations)}


def held_out(selector: EpochSelector, parts: RunParts, fit_data: FitFeatures | None) -> None:
    """Give the selector its held-out set: the few-shot val split, or (select_on_test, the Tip-Adapter-F
    reference's choice) the source test set, the first evaluation, whose classes are the training classes."""
    if selector.split == "test":
        selector.features, selector.labels = parts.datamodule.eval_features(parts.data.eval_sets[0])
        return
    fit_data = fit_data if fit_data is not None else parts.datamodule.fit_features()
    if fit_data.val_labels.numel() == 0:
        raise ConfigError("the epoch is chosen on the few-shot val split, which is empty (dataset val split).")
    selector.features, selector.labels = fit_data.val, fit_data.val_labels


def chosen_note(chosen: dict[str, Any]) -> str:
    return "fitted on the few-shot train/val features: " + ", ".join(
        f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in chosen.items())


def run_notes(parts: RunParts, plan: TrainingPlan) -> list[str]:
    """The record's notes about the data and the learner (skipped images, prompts, the GPU placement)."""
    notes = list(parts.data.notes) + ([plan.placement[1]] if plan.placement else []) + parts.learner.notes()
    skipped = parts.datamodule.train_skipped + [s for e in parts.data.eval_sets for s in e.skipped]
    if skipped:
        notes.append(f"skipped {len(skipped)} unreadable images (on_error=skip): "
                     + ", ".join(s["impath"] for s in skipped[:20]))
    return notes


def gpu_for_job(job_num: int, n_gpus: int) -> int:
    """The GPU of a sweep's job: job numbers go round the visible GPUs, so N parallel jobs on N GPUs (or 2N
    on N) share them evenly."""
    return job_num % n_gpus


def job_devices(cfg: DictConfig, n_gpus: int | None = None) -> tuple[list[int], str] | None:
    """With assign_gpus, a single-device job of a multirun on a machine with several GPUs runs on its own GPU
    (launcher=joblib runs jobs in parallel; without this every job would land on GPU 0). Returns the
    Trainer's `devices` and a note for the record, or None when nothing is to be assigned."""
    if not cfg.get("assign_gpus", True) or not is_multirun():
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
