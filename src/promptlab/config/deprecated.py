"""Config keys renamed so that each word means one thing (docs/glossary.md); the old names still work for now.

`RENAMED` is the one table of them. An old key composes (the schema keeps it as a deprecated field that defaults
to None), and `apply_renames` moves its value to the new key before the config is validated or used, logging
one deprecation warning per old key that names the new one. An old key and its new key given with different
values is a ConfigError. Configs saved under the old names (run records, prompt files) and mappings of model
keys (the Python API's `model_overrides`) go through `rename_mapping`. What promptlab writes (records, prompt
files, loggers' hyperparameters) holds only the new keys: `drop_deprecated` removes the emptied old ones.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, MutableMapping
from dataclasses import MISSING, fields, is_dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from promptlab.errors import ConfigError

log = logging.getLogger("promptlab")

#: old dotted key -> new dotted key. Each new key sits beside its old one (same parent node).
RENAMED: dict[str, str] = {
    "model.checkpoint": "model.weights_file",
    "model.cache_dir": "model.download_dir",
    "method.learner.checkpoint_blocks": "method.learner.recompute_blocks",
    "method.learner.checkpoint_chunks": "method.learner.recompute_chunks",
    "eval_cache": "test_feature_cache",
}

_warned: set[str] = set()


def _parts(dotted: str) -> tuple[str, str]:
    parent, _, leaf = dotted.rpartition(".")
    return parent, leaf


def _override_key(override: str) -> str:
    # "++model.weights_file=x", "+a=b", "~key": the dotted key alone.
    return str(override).split("=", 1)[0].lstrip("+~")


def _warn_once(old: str, new: str) -> None:
    if old in _warned:
        return
    _warned.add(old)
    log.warning("config key %s is deprecated: use %s (the old name still works for now and will be removed).",
                old, new)


def _schema_default(node: DictConfig, key: str) -> Any:
    node_type = OmegaConf.get_type(node)
    if is_dataclass(node_type):
        for f in fields(node_type):
            if f.name == key:
                return None if f.default is MISSING else f.default
    return None


def _conflict(old: str, old_value: Any, new: str, new_value: Any) -> str:
    return (f"{old}={old_value} and {new}={new_value}: {old} is the deprecated name of {new}, and the two say "
            f"different things; give {new} only.")


def apply_renames(cfg: DictConfig, given: Iterable[str] | None = None) -> DictConfig:
    """Move each deprecated key's value to its new key, in place (the old key is left None); returns `cfg`.

    `given`: the command-line overrides the config was composed with. The new key counts as given when an
    override names it; without overrides, when it differs from its schema default (a preset's value for the new
    key is replaced by the old key's). Raises ConfigError when both are given with different values."""
    explicit = None if given is None else {_override_key(o) for o in given}
    problems = []
    for old, new in RENAMED.items():
        parent_path, old_leaf = _parts(old)
        new_leaf = _parts(new)[1]
        parent = cfg if not parent_path else OmegaConf.select(cfg, parent_path, default=None)
        if not isinstance(parent, DictConfig) or old_leaf not in parent:
            continue
        value = parent[old_leaf]
        if value is None:
            continue
        current = parent.get(new_leaf)
        new_given = new in explicit if explicit is not None else current != _schema_default(parent, new_leaf)
        if new_given and current != value:
            problems.append(_conflict(old, value, new, current))
            continue
        parent[new_leaf] = value
        parent[old_leaf] = None
        _warn_once(old, new)
    if problems:
        raise ConfigError("invalid config: " + " ".join(problems))
    return cfg


def rename_mapping(data: MutableMapping[Any, Any], root: str = "", warn: bool = False) -> MutableMapping[Any, Any]:
    """The same renames on plain nested mappings, in place: a saved config (`root` ""), or a node of one such as
    the model keys of a prompt file (`root` "model"). `warn`: the mapping is the user's own (log the warning)."""
    prefix = f"{root}." if root else ""
    problems = []
    for old, new in RENAMED.items():
        if not old.startswith(prefix):
            continue
        parent_path, old_leaf = _parts(old[len(prefix):])
        new_leaf = _parts(new)[1]
        parent: Any = data
        for part in parent_path.split(".") if parent_path else []:
            parent = parent.get(part) if isinstance(parent, MutableMapping) else None
        if not isinstance(parent, MutableMapping) or old_leaf not in parent:
            continue
        value = parent.pop(old_leaf)
        if value is None:
            continue
        if new_leaf in parent and parent[new_leaf] != value:
            problems.append(_conflict(old, value, new, parent[new_leaf]))
            continue
        parent[new_leaf] = value
        if warn:
            _warn_once(old, new)
    if problems:
        raise ConfigError("invalid config: " + " ".join(problems))
    return data


def drop_deprecated(container: MutableMapping[Any, Any], root: str = "") -> MutableMapping[Any, Any]:
    """Remove the emptied (None) deprecated keys from a plain container of the node at `root`, in place."""
    prefix = f"{root}." if root else ""
    for old in RENAMED:
        if not old.startswith(prefix):
            continue
        parent_path, leaf = _parts(old[len(prefix):])
        parent: Any = container
        for part in parent_path.split(".") if parent_path else []:
            parent = parent.get(part) if isinstance(parent, MutableMapping) else None
        if isinstance(parent, MutableMapping) and leaf in parent and parent[leaf] is None:
            del parent[leaf]
    return container


def names_before_renames(container: MutableMapping[Any, Any]) -> dict[Any, Any]:
    """A deep copy of a plain config with each renamed key under its old name: what the resume hash reads, so a
    job recorded before the rename still matches its record and is skipped, not run again."""
    import copy

    view: dict[Any, Any] = copy.deepcopy(dict(container))
    for old, new in RENAMED.items():
        parent_path, new_leaf = _parts(new)
        old_leaf = _parts(old)[1]
        parent: Any = view
        for part in parent_path.split(".") if parent_path else []:
            parent = parent.get(part) if isinstance(parent, MutableMapping) else None
        if isinstance(parent, MutableMapping) and new_leaf in parent:
            parent[old_leaf] = parent.pop(new_leaf)
    return view
