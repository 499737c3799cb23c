"""Registering the schemas with Hydra's ConfigStore, the resolvers the YAML files use, and `compose`.

The YAML files of a group extend their schema: a method preset (`conf/method/tip_adapter_f.yaml`) starts
with `- /schema/method@method: <name>`, and a registered method without a preset is stored in the `method`
group as its dataclass; the logger files start with `- /schema/logger@<name>: <name>`; the root
`train.yaml` starts with `train_schema`, whose typed fields check model, dataset, protocol, trainer,
paths and loader. The optimiser is a group of schemas only (`optimizer=sgd|adamw|adam`), placed at
method.optim.optimizer.
"""

from __future__ import annotations

import copy
import hashlib
import re
from collections.abc import Mapping, Sequence
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from promptlab.config import schema
from promptlab.config.deprecated import apply_renames, drop_deprecated, rename_mapping
from promptlab.launch import is_launch_key

#: Hydra's package config path of the configs shipped inside promptlab.
CONFIG_PACKAGE = "pkg://promptlab.conf"

_registered = False
_stored_methods: dict[str, type] = {}


def safe_dirname(text: str) -> str:
    """A folder name for a job's overrides, safe on every file system (long names end in a hash)."""
    cleaned = re.sub(r"[^A-Za-z0-9=,._+-]+", "_", text).strip("_") or "default"
    if len(cleaned) > 120:  # keep it readable and unique
        cleaned = f"{cleaned[:100]}_{hashlib.sha1(text.encode()).hexdigest()[:10]}"
    return cleaned


def job_dirname(overrides: Sequence[str]) -> str:
    """A sweep job's folder: its overrides, sorted, without the launch-only ones (LAUNCH_KEYS)."""
    kept = []
    for override in overrides:
        key = str(override).split("=", 1)[0].lstrip("+~")
        if not is_launch_key(key):
            kept.append(str(override))
    return safe_dirname(",".join(sorted(kept)))


def register_configs() -> None:
    """Store the schemas in Hydra's ConfigStore and register the resolvers (idempotent; a method registered
    since the last call is stored by the next)."""
    global _registered
    cs = ConfigStore.instance()
    for name, node in schema.method_schemas().items():
        if _stored_methods.get(name) is node:
            continue
        cs.store(group="schema/method", name=name, node=node)
        if not _has_method_yaml(name):
            # A method without a preset file composes as its registered dataclass: `method=<name>` just works.
            cs.store(group="method", name=name, node=node)
        _stored_methods[name] = node
    if _registered:
        return
    cs.store(name="train_schema", node=schema.TrainConfig)
    for name, node in schema.LOGGER_SCHEMAS.items():
        cs.store(group="schema/logger", name=name, node=node)
    for name, node in schema.OPTIMIZER_SCHEMAS.items():
        cs.store(group="optimizer", name=name, node=node, package="method.optim.optimizer")
    OmegaConf.register_new_resolver("safe_dirname", safe_dirname, replace=True)
    OmegaConf.register_new_resolver("job_dirname", lambda overrides: job_dirname(list(overrides)), replace=True)
    # Hand-written prompts (schema.PromptsConf): the template list a set name or file stands for, a builtin set
    # by name (conf/dataset/imagenet*.yaml), and a description file's content hash.
    OmegaConf.register_new_resolver("prompt_templates", _prompt_templates, replace=True)
    OmegaConf.register_new_resolver("template_set", _template_set, replace=True)
    OmegaConf.register_new_resolver("file_sha256", _file_sha256, replace=True)
    _registered = True


def _has_method_yaml(name: str) -> bool:
    from importlib.resources import files

    return files("promptlab.conf").joinpath("method", f"{name}.yaml").is_file()


def _prompt_templates(spec: str, dataset_templates: Any, ensemble_templates: Any, dataset_name: str) -> list[str]:
    from promptlab.methods.prompts import resolve_templates

    def as_list(value: Any) -> list[str] | None:
        return None if value is None else [str(t) for t in value]

    return resolve_templates(str(spec), as_list(dataset_templates), as_list(ensemble_templates), str(dataset_name))


def _template_set(name: str) -> list[str]:
    from promptlab.methods.prompts import builtin_template_set

    return builtin_template_set(str(name))


def _file_sha256(path: str | None) -> str | None:
    from promptlab.methods.prompts import file_sha256

    return file_sha256(path)


def compose(overrides: Sequence[str] = (), config_name: str = "train", check: bool = True) -> DictConfig:
    """The config of a run from command-line style overrides, composed and checked as promptlab-train does.

    Outside a Hydra app `hydra:` interpolations are not available; the returned config is the job's
    config (no `hydra` node).
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    register_configs()
    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    with initialize_config_module(config_module="promptlab.conf", version_base="1.3"):
        cfg = hydra_compose(config_name=config_name, overrides=list(overrides))
    apply_renames(cfg, overrides)
    if check:
        from promptlab.config.validate import validate

        validate(cfg)
    return cfg


def plain(cfg: DictConfig) -> dict[str, Any]:
    """The config (or a node of it) as plain containers with interpolations resolved and enums as their names;
    the emptied deprecated keys left out (what promptlab writes holds only the current names)."""
    container = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    assert isinstance(container, dict)
    return drop_deprecated(container, root=cfg._get_full_key(None))  # type: ignore[return-value]


def choice(value: Any) -> str:
    """The plain string of a closed choice, whether the config holds the Enum or (from a record) its name."""
    return str(getattr(value, "value", value))


def typed(config: Mapping[str, Any]) -> DictConfig:
    """A saved config (a run record's `config`, plain containers) checked and typed against the schema again,
    so code reads it exactly as it reads a freshly composed one. Keys the schema does not know are refused."""
    register_configs()
    data = copy.deepcopy(dict(config))
    data.pop("hydra", None)
    rename_mapping(data)  # saved before a key was renamed: read under its new name
    # JSON turned the integer keys of epochs_by_shots into strings.
    datasets = [data.get("dataset")] + list(((data.get("protocol") or {}).get("targets") or {}).values())
    for node in datasets:
        if isinstance(node, dict) and isinstance(node.get("epochs_by_shots"), dict):
            node["epochs_by_shots"] = {int(k): v for k, v in node["epochs_by_shots"].items()}
    cfg = OmegaConf.structured(schema.TrainConfig)
    method = data.pop("method", None)
    cfg = OmegaConf.merge(cfg, data)
    if method is not None:
        node = schema.method_schemas().get(str(method.get("name")))
        method_cfg = OmegaConf.structured(node) if node is not None else OmegaConf.create({})
        if node is not None:
            # The saved optimiser node replaces the schema's empty slot (any optimiser class).
            method_cfg.optim.optimizer = None
        cfg.method = OmegaConf.merge(method_cfg, method)
    return cfg
