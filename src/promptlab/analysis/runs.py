"""Drift analyses of runs: at the end of a training run (analysis=true) or of a finished run dir
(`promptlab-analyze`)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from promptlab.analysis.drift import AnalysisError, FeaturesFn, analyze
from promptlab.analysis.report import write_analysis
from promptlab.engine.workers import worker_context
from promptlab.errors import MissingPathError
from promptlab.interpret import prompt_words

log = logging.getLogger(__name__)

ANALYSIS_DIRNAME = "analysis"


def prompted_features_fn(datamodule: Any, clip: Any, learner: Any) -> FeaturesFn | None:
    """The image features a learner with image-tower tokens (`encodes_images`) scores with: each evaluation
    image read with the test transform and encoded through the learner, as the run's test loop does (same
    items and order as `datamodule.eval_features`, same autocast). None for a learner that scores frozen features."""
    if not learner.encodes_images:
        return None
    from promptlab.data.image_dataset import ImageDataset
    from promptlab.engine.features import autocast_context

    def features(eval_set: Any) -> tuple[torch.Tensor, torch.Tensor]:
        dataset = ImageDataset(eval_set.items, datamodule.test_transform, on_error=datamodule.on_error,
                               check_cache_dir=datamodule.cache_dir)
        labels = torch.tensor([item.label for item in dataset.items], dtype=torch.long)
        workers = datamodule.decode_workers(len(dataset), f"analysis ({eval_set.name})")
        loader = DataLoader(dataset, batch_size=datamodule.eval_batch_size, shuffle=False, num_workers=workers,
                            multiprocessing_context=worker_context(workers))
        device = next(clip.parameters()).device
        was_training = learner.training
        learner.eval()
        parts = []
        try:
            with torch.no_grad(), autocast_context(datamodule.precision, device):
                for batch in loader:
                    parts.append(learner.encode_images(clip, batch["image"].to(device)).float().cpu())
        finally:
            learner.train(was_training)
        return (torch.cat(parts) if parts else torch.empty(0, clip.embed_dim)), labels

    return features


def _run_info(run_dir: Path, summary: Mapping[str, Any]) -> dict[str, Any]:
    keys = ("method", "dataset", "protocol", "shots", "seed", "epochs", "backbone")
    return {"run_dir": str(Path(run_dir).resolve())} | {k: summary[k] for k in keys if k in summary}


def analyze_run_objects(run_dir: Path, cfg: Any, parts: Any, summary: Mapping[str, Any]) -> dict[str, Path]:
    """Diagnostics of a run that has just finished (train.run with analysis=true), from its live parts
    (engine.build.RunParts) and its record's summary."""
    data, datamodule, clip, learner = parts.data, parts.datamodule, parts.clip, parts.learner
    dataset_dir = data.source_splits.dataset_dir if data.source_splits is not None else None
    analysis = analyze(clip, learner, list(cfg.dataset.templates), data.eval_sets,
                       datamodule.eval_features, dataset_dir=dataset_dir, seed=int(cfg.seed),
                       learned_features_fn=prompted_features_fn(datamodule, clip, learner))
    analysis["run"] = _run_info(Path(run_dir), summary or {})
    analysis["prompt_words"] = prompt_words(clip, learner)
    paths = write_analysis(analysis, Path(run_dir) / ANALYSIS_DIRNAME)
    log.info("prompt-drift analysis written to %s", Path(run_dir) / ANALYSIS_DIRNAME)
    return paths


def _complete_record(run_dir: Path) -> dict[str, Any]:
    from promptlab.results.records import STATUS_COMPLETE, RecordError, read_record

    if not run_dir.exists():
        raise MissingPathError(f"{run_dir} does not exist; pass a run directory (one that holds metrics.json).")
    if not run_dir.is_dir():
        raise AnalysisError(f"{run_dir}: not a directory; pass a run directory (one that holds metrics.json).")
    try:
        record = read_record(run_dir)
    except RecordError as err:
        raise AnalysisError(str(err)) from err
    if record is None:
        raise AnalysisError(f"{run_dir}: no metrics.json; pass the output directory of one finished run "
                            "(outputs/runs/... or one job folder of a sweep).")
    if record["status"] != STATUS_COMPLETE:
        raise AnalysisError(f"{run_dir}: the run record has status {record['status']!r}, expected "
                            f"{STATUS_COMPLETE!r}; rerun the job (it resumes) and analyse it when it has finished.")
    if not record.get("config"):
        raise AnalysisError(f"{run_dir}/metrics.json holds no resolved config; rerun the job with this promptlab.")
    return record


def analyze_run_dir(run_dir: Path, n_examples: int = 6) -> dict[str, Path]:
    """Rebuild a finished run's CLIP, data and learned prompt from its dir and write its diagnostics."""
    from hydra.utils import get_class

    from promptlab.config.registry import typed
    from promptlab.engine.build import build_parts

    run_dir = Path(run_dir)
    record = _complete_record(run_dir)
    cfg = typed(record["config"])
    prompt_path = run_dir / "prompt_learner.pt"
    learner_class = get_class(cfg.method.learner._target_)
    if learner_class.direct_logits:
        raise AnalysisError(f"{run_dir}: method {cfg.method.name!r} scores images itself (direct_logits), without "
                            "class-text embeddings: the drift diagnostics do not apply to it.")
    trainable = learner_class.trainable
    if trainable and not prompt_path.is_file():
        raise AnalysisError(f"{run_dir}: method {cfg.method.name!r} learns a prompt but {prompt_path.name} is missing; "
                            "it is written at the end of training: rerun the job with resume=false.")
    if cfg.get("num_threads"):
        torch.set_num_threads(int(cfg.num_threads))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    parts = build_parts(cfg, device=device, prompt=prompt_path if trainable else None)
    data = parts.data
    dataset_dir = data.source_splits.dataset_dir if data.source_splits is not None else None
    analysis = analyze(parts.clip, parts.learner, list(cfg.dataset.templates), data.eval_sets,
                       parts.datamodule.eval_features, dataset_dir=dataset_dir, n_examples=n_examples,
                       seed=int(cfg.seed),
                       learned_features_fn=prompted_features_fn(parts.datamodule, parts.clip, parts.learner))
    analysis["run"] = _run_info(run_dir, record["summary"])
    analysis["prompt_words"] = prompt_words(parts.clip, parts.learner)
    return write_analysis(analysis, run_dir / ANALYSIS_DIRNAME)
