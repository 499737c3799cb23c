"""From a composed config to the parts of a run: frozen CLIP, protocol data, prompt learner, data module,
schedule, loggers; and the saved prompt (prompt_learner.pt). Training (train.py) and promptlab-analyze
(analysis/runs.py) build runs the same way through `build_parts`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from promptlab.engine.datamodule import PromptDataModule
from promptlab.engine.features import save_atomic
from promptlab.models import load_clip_from_config
from promptlab.protocols import ProtocolData, build_protocol_data


def resolve_epochs(method: DictConfig, dataset: DictConfig, shots: int) -> int:
    """Epochs of a run: method.epochs if set, else the reference's table by shot count (CoOp)."""
    if method.get("epochs") is not None:
        return int(method.epochs)
    table = dataset.get("epochs_by_shots") or {}
    if not table:
        raise ValueError(f"method.epochs is null and dataset {dataset.name} has no epochs_by_shots: set method.epochs.")
    keys = sorted(int(k) for k in table)
    # Largest shot count in the table not above ours (16 shots -> the 16 entry; -1 = all -> the largest).
    chosen = keys[-1] if shots < 0 else max([k for k in keys if k <= shots] or [keys[0]])
    return int(table[chosen] if chosen in table else table[str(chosen)])


def effective_lr(method: DictConfig) -> float:
    """lr scaled for the batch size (method.lr_scaling against method.reference_batch_size)."""
    lr = float(method.get("lr", 0.0))
    rule = method.get("lr_scaling", "none")
    ratio = float(method.get("batch_size", 1)) / float(method.get("reference_batch_size", method.get("batch_size", 1)))
    if rule == "none":
        return lr
    if rule == "linear":
        return lr * ratio
    if rule == "sqrt":
        return lr * math.sqrt(ratio)
    raise ValueError(f"method.lr_scaling={rule!r}; expected none, linear or sqrt.")


def build_loggers(cfg: DictConfig, run_dir: Path) -> list:
    name = cfg.logger.get("name", "none")
    if name == "none":
        return []
    if name == "csv":
        from lightning.pytorch.loggers import CSVLogger

        return [CSVLogger(save_dir=str(run_dir), name="csv", version="")]
    if name == "wandb":
        from lightning.pytorch.loggers import WandbLogger

        overrides = HydraConfig.get().overrides.task if HydraConfig.initialized() else []
        run_label = ",".join(o for o in overrides if not o.startswith(("sweep_name", "logger"))) or cfg.run_name
        kwargs = {"mode": cfg.logger.mode} if cfg.logger.get("mode") else {}
        return [WandbLogger(project=cfg.logger.project, entity=cfg.logger.get("entity"), group=str(cfg.logger.group),
                            job_type=cfg.method.name, name=run_label, tags=list(cfg.logger.get("tags") or []),
                            save_dir=str(run_dir), config=OmegaConf.to_container(cfg, resolve=True), **kwargs)]
    raise ValueError(f"logger.name={name!r}; expected none, csv or wandb.")


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
    method = cfg.method
    clip = load_clip_from_config(cfg.model, device=device)
    data = build_protocol_data(
        cfg.protocol, cfg.dataset, Path(cfg.paths.data_root).expanduser().resolve(), int(cfg.shots), int(cfg.seed),
        Path(cfg.paths.fewshot_dir) if cfg.paths.get("fewshot_dir") else None,
    )
    learner = instantiate(method.learner, clip=clip, **learner_kwargs(method, data.train_classnames, int(cfg.seed)))
    learner.set_classnames(clip, data.train_classnames)
    if prompt is not None:
        load_learner(prompt, learner)
    learner.to(device)
    datamodule = PromptDataModule(
        clip, data.train_items, data.eval_sets,
        batch_size=int(method.batch_size), eval_batch_size=int(method.get("eval_batch_size", 100)),
        num_workers=int(cfg.loader.num_workers), pin_memory=bool(cfg.loader.pin_memory),
        augment=str(method.get("augment", "none")), train_cache=str(method.get("train_cache", "auto")),
        train_views=int(method.get("train_views", 0)), eval_cache=bool(cfg.get("eval_cache", True)),
        cache_dir=Path(cfg.paths.cache_dir), on_error=str(cfg.loader.on_error),
        precision=str(cfg.trainer.precision), seed=int(cfg.seed),
    )
    return RunParts(clip, data, learner, datamodule)


def learner_kwargs(method: DictConfig, train_classnames: list[str], seed: int) -> dict[str, Any]:
    """Run-dependent constructor arguments, passed to the learners whose signature takes them."""
    import inspect

    from hydra.utils import get_class

    params = inspect.signature(get_class(str(method.learner._target_))).parameters.values()
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
    names = {p.name for p in params}
    candidates = {"num_classes": len(train_classnames), "init_seed": int(seed)}
    return {k: v for k, v in candidates.items() if takes_any or k in names}


def save_learner(path: Path, learner: torch.nn.Module, cfg: DictConfig) -> None:
    """The learned tensors only (loadable with torch.load(weights_only=True)) plus what rebuilds them."""
    payload = {
        "state_dict": {k: v.detach().cpu() for k, v in learner.state_dict().items()},
        "method": OmegaConf.to_container(cfg.method, resolve=True),
        "model": OmegaConf.to_container(cfg.model, resolve=True),
        "dataset": str(cfg.dataset.name),
        "train_classnames": list(learner.classnames),
    }
    save_atomic(payload, path)


def load_learner(path: Path, learner: torch.nn.Module) -> None:
    """Load a saved prompt (prompt_learner.pt) with weights_only=True: tensors and plain containers only."""
    if not path.is_file():
        raise FileNotFoundError(f"load_prompt={path}: no such file (a run's prompt_learner.pt is expected).")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    missing, unexpected = learner.load_state_dict(payload["state_dict"], strict=False)
    if missing or unexpected:
        raise ValueError(
            f"load_prompt={path} does not fit method {type(learner).__name__}: missing {missing}, unexpected "
            f"{unexpected}. It was saved by method {payload.get('method', {}).get('name')!r}; use the same method "
            "config (and n_ctx/csc) to load it."
        )

