"""From a composed config to the parts of a run: frozen CLIP, protocol data, prompt learner, data module,
schedule, loggers; and the saved prompt (prompt_learner.pt). Training (train.py) and promptlab-analyze
(analysis/runs.py) build runs the same way through `build_parts`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from promptlab.config.deprecated import rename_mapping
from promptlab.config.method import LrScaling, SGDConf
from promptlab.config.registry import choice, plain
from promptlab.engine.datamodule import PromptDataModule, feature_batch_size
from promptlab.errors import ConfigError, MissingPathError
from promptlab.io import atomic_torch_save
from promptlab.launch import is_launch_key
from promptlab.methods.base import PromptLearner, RunContext
from promptlab.methods.registry import learner_class
from promptlab.models import load_clip_from_config
from promptlab.protocols import ProtocolData, get_protocol

log = logging.getLogger(__name__)


def resolve_epochs(optim: DictConfig, dataset: DictConfig, shots: int) -> int:
    """Epochs of a run: method.optim.epochs if set, else the dataset's reference table by shot count (CoOp)."""
    if optim.get("epochs") is not None:
        return int(optim.epochs)
    table = dataset.get("epochs_by_shots") or {}
    if not table:
        raise ConfigError(f"method.optim.epochs is null and dataset {dataset.name} has no epochs_by_shots: set "
                          "method.optim.epochs.")
    keys = sorted(int(k) for k in table)
    # Largest shot count in the table not above ours (16 shots -> the 16 entry; -1 = all -> the largest).
    chosen = keys[-1] if shots < 0 else max([k for k in keys if k <= shots] or [keys[0]])
    return int(table[chosen] if chosen in table else table[str(chosen)])


def effective_lr(method: DictConfig) -> float:
    """method.optim.lr scaled for the batch size (optim.lr_scaling against optim.reference_batch_size)."""
    optim = method.optim
    lr = float(optim.lr)
    ratio = float(method.loader.batch_size) / float(optim.reference_batch_size)
    rule = LrScaling(optim.lr_scaling)
    if rule is LrScaling.linear:
        return lr * ratio
    if rule is LrScaling.sqrt:
        return lr * math.sqrt(ratio)
    return lr


def optimizer_factory(method: DictConfig) -> Callable[..., torch.optim.Optimizer]:
    """The optimiser of method.optim.optimizer as a partial that takes (params, lr=...)."""
    node = OmegaConf.select(method, "optim.optimizer", default=None, throw_on_missing=False)
    if node is None:  # composed without the optimizer group (e.g. a hand-made config): the reference SGD
        node = OmegaConf.structured(SGDConf)
    return instantiate(node, _convert_="all")


def run_label(cfg: DictConfig) -> str:
    """A job's name in loggers: its overrides without the launch-only ones, else the run name."""
    overrides = HydraConfig.get().overrides.task if HydraConfig.initialized() else []
    kept = [o for o in overrides if not is_launch_key(str(o).split("=", 1)[0].lstrip("+~"))]
    return ",".join(kept) or str(cfg.run_name)


def build_loggers(cfg: DictConfig, run_dir: Path) -> list:
    """Instantiate every Lightning logger node under `logger` (name -> _target_ node).

    What a node leaves out is filled in per job where the logger's class takes it: save_dir (the run's
    folder), the run's name (`name` for W&B, `run_name` for MLflow) and job_type (the method). Every
    logger then gets the resolved config as its hyperparameters.
    """
    import inspect

    from hydra.utils import get_class

    loggers = []
    label = run_label(cfg)
    for key, node in (cfg.get("logger") or {}).items():
        if node is None:
            continue
        if "_target_" not in node:
            raise ConfigError(f"logger.{key} has no _target_: a logger is a Lightning logger node, e.g. "
                              "_target_: lightning.pytorch.loggers.CSVLogger.")
        params = inspect.signature(get_class(str(node._target_)).__init__).parameters  # type: ignore[misc]
        fill: dict[str, Any] = {}
        if node.get("save_dir", None) is None and "save_dir" in params:
            fill["save_dir"] = str(run_dir)
        for name, value in (("name", label), ("run_name", label), ("job_type", str(cfg.method.name))):
            if name in params and name not in node:
                fill[name] = value
        if node.get("run_name", "") is None and "run_name" in params:
            fill["run_name"] = label
        logger = instantiate(node, _convert_="all", **fill)
        logger.log_hyperparams(plain(cfg))
        loggers.append(logger)
    return loggers


def finish_wandb() -> None:
    # WandbLogger reuses a live wandb.run: finish it so the next job of a sweep gets its own run.
    try:
        import wandb

        if wandb.run is not None:
            wandb.finish()
    except ImportError:
        pass


@dataclass
class RunParts:
    """What a run is made of: the frozen CLIP, the protocol's data, the prompt learner, the data module."""

    clip: Any
    data: ProtocolData
    learner: Any
    datamodule: PromptDataModule


def build_parts(cfg: DictConfig, device: str | torch.device = "cpu", prompt: Path | None = None) -> RunParts:
    """Build a run's parts from its config (training and promptlab-analyze share this)."""
    method, loader = cfg.method, cfg.method.loader
    clip = load_clip_from_config(cfg.model, device=device)
    if cfg.model.get("compile_image", False):
        clip.compile_image_tower()
    data = get_protocol(choice(cfg.protocol.name)).build_data(
        cfg.protocol, cfg.dataset, Path(cfg.paths.data_root).expanduser().resolve(), int(cfg.shots), int(cfg.seed),
        Path(cfg.paths.fewshot_dir) if cfg.paths.get("fewshot_dir") else None,
        on_error=choice(cfg.loader.on_error), save_fewshot=uses_fewshot(cfg),
    )
    context = RunContext(clip=clip, classnames=list(data.train_classnames), init_seed=int(cfg.seed),
                         dataset=str(cfg.dataset.name))
    learner = build_learner(method, context)
    learner.set_classnames(clip, data.train_classnames)
    if prompt is not None:
        load_learner(prompt, learner, clip=clip, strict=bool(cfg.get("load_prompt_strict", True)))
    learner.to(device)
    datamodule = PromptDataModule(
        clip, data.train_items, data.eval_sets, loader, cfg.loader, val_items=data.val_items, seed=int(cfg.seed),
        precision=str(cfg.trainer.precision), cache_dir=Path(cfg.paths.cache_dir),
        test_feature_cache=bool(cfg.test_feature_cache), encodes_images=learner.encodes_images,
        normalize_features=learner.normalize_features,
        feature_eval_batch_size=feature_batch_size(learner, int(loader.eval_batch_size)),
    )
    return RunParts(clip, data, learner, datamodule)


def learner_options(method: DictConfig) -> dict[str, Any]:
    """The learner node as constructor arguments (resolved, enums as their values, without `_target_`)."""
    options = OmegaConf.to_container(method.learner, resolve=True, enum_to_str=True)
    assert isinstance(options, dict)
    options.pop("_target_", None)
    # The constructor takes the current names only: a deprecated one (None, or a hand-made config's value) goes.
    rename_mapping(options, root="method.learner", warn=True)
    return options  # type: ignore[return-value]


def build_learner(method: DictConfig, context: RunContext) -> PromptLearner:
    """The run's learner: its class's `build` from the learner node and the run's context."""
    return learner_class(method).build(learner_options(method), context)


def uses_fewshot(cfg: DictConfig) -> bool:
    """Whether the run learns from its few-shot selection (so it is saved for the other runs to reuse): a
    learner fitted on features, or a trainable one with epochs to train. Zero-shot runs and the evaluation
    of a loaded prompt (epochs=0) draw it without writing a file into the data root."""
    learner = learner_class(cfg.method)
    if learner.fits_features:
        return True
    return learner.trainable and resolve_epochs(cfg.method.optim, cfg.dataset, int(cfg.shots)) > 0


def save_learner(path: Path, learner: PromptLearner, cfg: DictConfig, clip: Any = None) -> None:
    """The learned tensors only (loadable with torch.load(weights_only=True)) plus what rebuilds them, and the
    backbone fingerprint (architecture + weights) that load_learner compares."""
    payload = {
        "backbone": dict(clip.fingerprint) if clip is not None else None,
        "state_dict": {k: v.detach().cpu() for k, v in learner.state_dict().items()},
        "method": plain(cfg.method),
        "model": plain(cfg.model),
        "dataset": str(cfg.dataset.name),
        "train_classnames": list(learner.classnames),
    }
    atomic_torch_save(payload, path)


def load_learner(path: Path, learner: torch.nn.Module, clip: Any = None, strict: bool = True) -> None:
    """Load a saved prompt (prompt_learner.pt) with weights_only=True: tensors and plain containers only.

    With `clip`, the prompt's backbone fingerprint must match it (a prompt learned on another backbone of the
    same width would load silently and score near chance); strict=False (load_prompt_strict=false) loads it
    anyway with a warning."""
    if not path.is_file():
        raise MissingPathError(f"load_prompt={path}: no such file (a run's prompt_learner.pt is expected).")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if clip is not None:
        diffs = clip.check_fingerprint(payload.get("backbone"), f"load_prompt={path}", strict=strict)
        if diffs:
            log.warning("load_prompt=%s loaded with load_prompt_strict=false although %s", path, "; ".join(diffs))
    missing, unexpected = learner.load_state_dict(payload["state_dict"], strict=False)
    if missing or unexpected:
        raise ConfigError(
            f"load_prompt={path} does not fit method {type(learner).__name__}: missing {missing}, unexpected "
            f"{unexpected}. It was saved by method {payload.get('method', {}).get('name')!r}; use the same method "
            "config (and learner.n_ctx / learner.csc) to load it."
        )

