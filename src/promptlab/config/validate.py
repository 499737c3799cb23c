"""The checks a type cannot express, run on the composed config before any model or data is loaded.

The schema already rejects unknown keys, values of the wrong type and values outside a closed choice
(at compose time, by OmegaConf). What is left is ranges and combinations; each failure is a
ConfigError naming the key, the value and what is allowed, and all failures are reported at once.
"""

from __future__ import annotations

from dataclasses import fields, is_dataclass
from functools import lru_cache
from typing import Any

from omegaconf import DictConfig, OmegaConf

from promptlab.config.schema import PRECISIONS, Augment, ScheduleUnit, Selection, TrainCache
from promptlab.errors import ConfigError


def _get(cfg: DictConfig, key: str) -> Any:
    return OmegaConf.select(cfg, key, default=None)


def unknown_keys(node: Any, path: str = "") -> list[str]:
    """Keys added to a typed node with `+key=value` (Hydra lets those past the schema): each would be read by
    nothing. A `_target_` node may hold any parameter of its class."""
    found: list[str] = []
    if not isinstance(node, DictConfig):
        return found
    node_type = OmegaConf.get_type(node)
    if is_dataclass(node_type):
        known = {f.name for f in fields(node_type)}
        target = node.get("_target_") if "_target_" in known else None
        accepted = _parameters(str(target)) if target else None
        for key in node.keys():
            if key in known or (accepted is not None and (key in accepted or "**" in accepted)):
                continue
            choices = ", ".join(sorted(k for k in known if not k.startswith("_")))
            found.append(f"{path}{key}: not a key of {node_type.__name__} (keys: {choices}).")
    for key in node.keys():
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_missing() and not child._is_none():
            found += unknown_keys(child, f"{path}{key}.")
    return found


@lru_cache(maxsize=64)
def _parameters(target: str) -> frozenset[str]:
    import inspect

    from hydra.utils import get_class

    try:
        params = inspect.signature(get_class(target)).parameters.values()
    except Exception:  # noqa: BLE001 - an unimportable target fails later, with Hydra's own message
        return frozenset({"**"})
    return frozenset("**" if p.kind is inspect.Parameter.VAR_KEYWORD else p.name for p in params)


def problems(cfg: DictConfig) -> list[str]:
    """Every range or combination problem of a composed train config (empty when it is fine)."""
    found: list[str] = unknown_keys(cfg)

    def need(ok: bool, message: str) -> None:
        if not ok:
            found.append(message)

    shots = _get(cfg, "shots")
    need(shots == -1 or (shots is not None and shots >= 1), f"shots={shots}: use a count >= 1, or -1 for all images.")

    method = cfg.method
    loader, optim = method.loader, method.optim
    for key in ("batch_size", "eval_batch_size"):
        value = loader[key]
        need(value >= 1, f"method.loader.{key}={value}: must be at least 1.")
    need(loader.train_views >= 0, f"method.loader.train_views={loader.train_views}: must be 0 (off) or more.")
    need(
        not (loader.train_cache == TrainCache.on and loader.augment != Augment.none and loader.train_views < 1),
        f"method.loader.train_cache=on with augment={loader.augment.value} would freeze one random crop per image "
        "for the whole run: set method.loader.train_views=K (K cached augmented views), train_cache=auto, or "
        "augment=none.",
    )
    need(optim.lr > 0, f"method.optim.lr={optim.lr}: must be positive.")
    need(optim.epochs is None or optim.epochs >= 0,
         f"method.optim.epochs={optim.epochs}: must be 0 or more (null: the dataset's epochs by shots).")
    need(optim.warmup_epochs >= 0, f"method.optim.warmup_epochs={optim.warmup_epochs}: must be 0 or more.")
    need(optim.warmup_lr > 0, f"method.optim.warmup_lr={optim.warmup_lr}: must be positive.")
    need(optim.reference_batch_size >= 1,
         f"method.optim.reference_batch_size={optim.reference_batch_size}: must be at least 1.")

    found += _method_problems(cfg)
    need(not (optim.get("schedule_unit") == ScheduleUnit.step and optim.warmup_epochs != 0),
         f"method.optim.schedule_unit=step with warmup_epochs={optim.warmup_epochs}: the per-iteration cosine "
         "(Tip-Adapter-F) has no warm-up; set method.optim.warmup_epochs=0.")
    found += _protocol_problems(cfg)

    precision = str(cfg.trainer.precision)
    need(precision in PRECISIONS, f"trainer.precision={precision}: expected one of {', '.join(PRECISIONS)}.")
    need(cfg.loader.num_workers is None or cfg.loader.num_workers >= 0,
         f"loader.num_workers={cfg.loader.num_workers}: must be 0 or more, or null (from the machine).")
    validation = cfg.get("validation")
    if validation is not None:
        every = validation.every_n_epochs
        need(every >= 0, f"validation.every_n_epochs={every}: must be 0 (once, after training) or more.")
        need(not (validation.selection == Selection.best_val and every < 1),
             f"validation.selection=best_val with validation.every_n_epochs={every}: the best epoch is chosen among "
             "the validated ones; set validation.every_n_epochs=1 (or N).")
    checkpoint = cfg.get("checkpoint")
    if checkpoint is not None:
        need(checkpoint.every_n_epochs >= 0,
             f"checkpoint.every_n_epochs={checkpoint.every_n_epochs}: must be 0 (only by time) or more.")
        minutes = checkpoint.every_n_minutes
        need(minutes is None or minutes > 0, f"checkpoint.every_n_minutes={minutes}: must be positive, or null.")
    threads = cfg.get("num_threads")
    need(threads is None or threads >= 1, f"num_threads={threads}: must be at least 1, or null.")

    if cfg.dataset.test_only:
        found.append(
            f"dataset={cfg.dataset.name} is evaluation-only (dataset.test_only=true: it has no training split). "
            "Train on its source dataset and evaluate on it as a target (e.g. dataset=imagenet "
            "protocol=domain_generalization)."
        )
    found += _reader_problems(cfg)
    found += _prompt_problems(cfg)
    return found


def _protocol_problems(cfg: DictConfig) -> list[str]:
    """protocol.name against the protocol registry, and what the protocol asks of the learner."""
    from promptlab.protocols import get_protocol, protocol_names

    name = str(cfg.protocol.name)
    try:
        protocol = get_protocol(name)
    except ConfigError as err:
        return [str(err)]
    if cfg.method.learner.get("csc") and protocol.evaluates_other_classes:
        alone = [p for p in protocol_names() if not get_protocol(p).evaluates_other_classes]
        use = " or ".join(f"protocol={p}" for p in alone) or "a protocol tested on its training classes only"
        return [
            f"method.learner.csc=true with protocol={name}: a class-specific context is learned for the "
            f"training classes only and cannot score other classes (novel classes, target datasets). Use {use}, "
            "or method.learner.csc=false."
        ]
    return []


def _prompt_problems(cfg: DictConfig) -> list[str]:
    """An unknown template set, an unreadable template or description file: named before anything loads."""
    from promptlab.methods.prompts import read_descriptions, resolve_templates

    prompts = cfg.get("prompts")
    if prompts is None:  # a config saved before prompts existed
        return []
    out = []
    dataset = cfg.dataset
    for check in (lambda: resolve_templates(prompts.templates, dataset.templates, dataset.get("ensemble_templates"),
                                            dataset.name),
                  lambda: prompts.descriptions is not None and read_descriptions(prompts.descriptions)):
        try:
            check()
        except ConfigError as err:
            out.append(str(err))
    if prompts.combine and prompts.descriptions is None:
        out.append("prompts.combine=true without prompts.descriptions: it adds the templates to the described "
                   "classes' sentences, so it needs a description file.")
    return out


def _method_problems(cfg: DictConfig) -> list[str]:
    """The method's own checks (`PromptLearner.config_problems`, beside each learner), with the run's model's
    tokenizer for phrase lengths (models/tokens.py: the rule the learner applies when it is built)."""
    from promptlab.methods.registry import learner_class
    from promptlab.models.tokens import token_counter

    try:
        cls = learner_class(cfg.method)
    except ConfigError as err:
        return [str(err)]
    try:
        count = token_counter(cfg.model)
    except Exception:  # noqa: BLE001 - no tokenizer without the model: the learner checks when it is built
        count = None
    return cls.config_problems(cfg.method.learner, count)


def _reader_problems(cfg: DictConfig) -> list[str]:
    import promptlab.toy.reader  # noqa: F401 - registers the toy world's reader
    from promptlab.data.readers import READERS

    out = []
    datasets = [("dataset", cfg.dataset)] + [
        (f"protocol.targets.{name}", target) for name, target in (cfg.protocol.targets or {}).items()
    ]
    for key, node in datasets:
        if node.reader not in READERS:
            out.append(f"{key}.reader={node.reader!r}: expected one of {', '.join(sorted(READERS))}.")
    return out


def validate(cfg: DictConfig) -> None:
    """Raise one ConfigError listing every problem of a composed train config."""
    found = problems(cfg)
    if found:
        raise ConfigError("invalid config: " + " ".join(found) if len(found) == 1
                          else "invalid config:\n  - " + "\n  - ".join(found))
