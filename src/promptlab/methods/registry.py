"""The method registry: a method is one module under promptlab/methods/ holding its learner and its config
dataclasses, registered with `@register_method(ItsMethodConf)` on the learner class (as timm's
`@register_model`). The config schema, Hydra's config store, the CLI's `method=` choices, the registry-wide
tests and the GPU check all read this registry; nothing else lists methods.

Every module of this package is imported by `discover()`, so a new file registers itself without an import line
anywhere else. A YAML under conf/method/<name>.yaml is needed only to add a preset on top of the dataclass
defaults (a note, an optimiser switch); without one, `method=<name>` composes the registered dataclass itself.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, TypeVar

from promptlab.errors import ConfigError

if TYPE_CHECKING:
    from promptlab.config.method import MethodConf
    from promptlab.methods.base import PromptLearner

L = TypeVar("L", bound=type)


@dataclass(frozen=True)
class MethodSpec:
    """One registered method: its name (`method=<name>`), learner class and config dataclass."""

    name: str
    learner: type[PromptLearner]
    config: type[MethodConf]

    @property
    def display_name(self) -> str:
        return str(_default(self.config, "display_name"))


_METHODS: dict[str, MethodSpec] = {}
_discovered = False


def _default(config: type, name: str) -> Any:
    for f in fields(config):
        if f.name == name:
            return f.default
    raise ConfigError(f"{config.__name__} has no field {name!r}.")


def register_method(config: type[MethodConf]) -> Callable[[L], L]:
    """Class decorator: register the learner class under `config.name` with its config dataclass.

    The dataclass (a `MethodConf` subclass) holds the method's defaults, written once: its `learner` node's
    fields are the learner's constructor arguments. Stack it to register one learner under several methods
    (IVLP and the deep language prompts)."""

    def register(cls: L) -> L:
        from promptlab.methods.base import PromptLearner

        name = str(_default(config, "name"))
        if not isinstance(cls, type) or not issubclass(cls, PromptLearner):
            raise TypeError(f"register_method({config.__name__}): {cls!r} is not a PromptLearner subclass.")
        known = _METHODS.get(name)
        if known is not None and (known.learner.__qualname__, known.config.__qualname__) != (
                cls.__qualname__, config.__qualname__):
            raise ConfigError(f"method {name!r} is registered twice: by {known.learner.__module__}."
                              f"{known.learner.__qualname__} and by {cls.__module__}.{cls.__qualname__}.")
        _METHODS[name] = MethodSpec(name, cls, config)
        return cls

    return register


def discover() -> None:
    """Import every module of promptlab.methods once, so each registers its methods."""
    global _discovered
    if _discovered:
        return
    import promptlab.methods as package

    for info in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{info.name}")
    _discovered = True


def registered_methods() -> dict[str, MethodSpec]:
    """Every registered method, by name, in registration order."""
    discover()
    return dict(_METHODS)


def method_spec(name: str) -> MethodSpec:
    """The registered method `name`; an unknown name is refused with the registered ones and the closest."""
    methods = registered_methods()
    if name not in methods:
        import difflib

        close = difflib.get_close_matches(name, list(methods), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"method {name!r} is not registered.{hint} Registered: {', '.join(methods)}.")
    return methods[name]


def unregister_method(name: str) -> None:
    """Remove a registration (tests that register a method of their own clean up with this)."""
    _METHODS.pop(name, None)


def learner_class(method: Any) -> type[PromptLearner]:
    """The class a composed method node builds: its learner's `_target_` (the registered class, or a user's
    subclass of it); refused unless it implements the contract (a PromptLearner subclass)."""
    from hydra.utils import get_class

    from promptlab.methods.base import PromptLearner

    target = str(method.learner._target_)
    try:
        cls = get_class(target)
    except Exception as err:  # noqa: BLE001 - Hydra wraps import errors in several types
        raise ConfigError(f"method.learner._target_={target}: cannot be imported ({err}).") from err
    if not (isinstance(cls, type) and issubclass(cls, PromptLearner)):
        raise ConfigError(f"method.learner._target_={target} is not a promptlab.methods.PromptLearner subclass: "
                          "a method's learner implements the method contract (CONTRIBUTING.md, 'Add a method').")
    return cls
