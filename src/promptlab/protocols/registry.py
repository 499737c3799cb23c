"""The protocol registry: a protocol is one module under promptlab/protocols/ holding its `Protocol` subclass,
registered with `@register_protocol` on the class (as methods are with `@register_method`), plus its YAML in
conf/protocol/<name>.yaml. The config check, the engine and the tables read this registry; nothing else lists
protocols.

Every module of this package is imported by `discover()`, so a new file registers itself without an import line
anywhere else. `protocol_names()` lists the protocols in the order their tables appear: by each class's declared
`order`, then by registration.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from typing import TypeVar

from promptlab.errors import ConfigError
from promptlab.protocols.base import GenericProtocol, Protocol

P = TypeVar("P", bound=type[Protocol])

_PROTOCOLS: dict[str, Protocol] = {}
_discovered = False


def register_protocol(cls: P) -> P:
    """Class decorator: register one instance of the `Protocol` subclass under its `name` (`get_protocol`,
    `protocol.name=<name>` in a config, and the tables of its records). Returns the class unchanged."""
    if not isinstance(cls, type) or not issubclass(cls, Protocol):
        raise TypeError(f"register_protocol: {cls!r} is not a promptlab.protocols.Protocol subclass.")
    name = cls.name
    if not name:
        raise ConfigError(f"register_protocol: {cls.__module__}.{cls.__qualname__} has no name; set the class "
                          "attribute `name` (what protocol.name says in a config).")
    known = _PROTOCOLS.get(name)
    if known is not None and (type(known).__module__, type(known).__qualname__) != (cls.__module__,
                                                                                     cls.__qualname__):
        raise ConfigError(f"protocol {name!r} is registered twice: by {type(known).__module__}."
                          f"{type(known).__qualname__} and by {cls.__module__}.{cls.__qualname__}.")
    # The same class registered again (its module imported anew) replaces its object.
    _PROTOCOLS[name] = cls()
    return cls


def unregister_protocol(name: str) -> None:
    """Remove a registration (tests that register a protocol of their own clean up with this)."""
    _PROTOCOLS.pop(name, None)


def discover() -> None:
    """Import every module of promptlab.protocols once, so each registers its protocol."""
    global _discovered
    if _discovered:
        return
    import promptlab.protocols as package

    for info in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{info.name}")
    _discovered = True


def protocol_names() -> tuple[str, ...]:
    """The registered protocol names in table order: by the protocols' `order`, ties in registration order."""
    discover()
    # sorted() is stable, so protocols of equal order keep the order they were registered in.
    return tuple(sorted(_PROTOCOLS, key=lambda name: _PROTOCOLS[name].order))


def get_protocol(name: str) -> Protocol:
    """The registered protocol `name` (e.g. the config's protocol.name); ConfigError (a ValueError) naming
    the choices, and the closest one, for an unknown name."""
    discover()
    try:
        return _PROTOCOLS[name]
    except KeyError:
        raise ConfigError(unknown_protocol_message(name)) from None


def unknown_protocol_message(name: str) -> str:
    """Why `name` is refused: the registered protocols, the closest one, and how to add a protocol."""
    names = protocol_names()
    close = difflib.get_close_matches(name, names, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return (f"unknown protocol {name!r} (protocol.name in the config): expected one of {', '.join(names)}.{hint} "
            "Pick one with protocol=<name>, or add one: a module in promptlab/protocols/ with a @register_protocol "
            "class, plus conf/protocol/<name>.yaml (docs/protocols.md).")


def table_protocol(name: str) -> Protocol:
    """The protocol that fills the table of records with `summary.protocol == name`: the registered one,
    else a generic table of every numeric metric (records of a protocol this promptlab does not know)."""
    discover()
    return _PROTOCOLS.get(name) or GenericProtocol(name)
