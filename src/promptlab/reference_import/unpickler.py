"""A restricted unpickler for the reference's files (Dassl checkpoints `model.pth.tar-N`, few-shot selections
`split_fewshot/shot_K-seed_S.pkl`); usable as torch.load's `pickle_module`.

Unpickling runs whatever a file names, so nothing outside an allow-list is ever imported:
- real callables that only rebuild data: torch's tensor/parameter rebuild functions (storages are resolved by
  torch.load itself), dtypes and torch.Size, collections.OrderedDict/defaultdict, the builtin containers and
  scalar constructors, and `_codecs.encode` (how protocol 2 stores bytes);
- inert stand-ins (`InertObject`) for the harmless classes a Dassl file holds as objects: torch optimisers and
  the schedulers Dassl builds (its warm-up scheduler's `state_dict()` keeps the successor scheduler object, which
  holds the optimiser), Dassl's own warm-up schedulers and RAdam, and Dassl's `Datum`. A stand-in keeps the
  object's pickled state as plain data and runs none of the class's code, so Dassl need not be installed.
Anything else (os.system, eval, subprocess, an unknown class) raises RefusedPickleError before it is imported.
"""

from __future__ import annotations

import _codecs
import builtins
import collections
import io
import pickle
import types
from typing import IO, Any

import torch

from promptlab.errors import PromptlabError


class RefusedPickleError(PromptlabError, pickle.UnpicklingError):
    """A pickle names something outside the allow-list: it was not imported, nothing it names ran."""


class InertObject:
    """Stand-in for an allow-listed harmless class: holds the pickled constructor arguments and state only."""

    __slots__ = ("args", "state")
    qualified_name = "InertObject"

    def __new__(cls, *args: Any, **kwargs: Any) -> InertObject:
        obj = object.__new__(cls)
        obj.args, obj.state = args, None
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # REDUCE calls cls(*args): nothing to run
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def get(self, key: str, default: Any = None) -> Any:
        """An attribute of the pickled object (its __dict__ entry), e.g. Datum's `_impath`."""
        state = self.state[0] if isinstance(self.state, tuple) else self.state
        return state.get(key, default) if isinstance(state, dict) else default

    def __repr__(self) -> str:
        return f"<inert {self.qualified_name}>"


# (module, name) of the harmless classes replaced by inert stand-ins.
INERT_CLASSES: frozenset[tuple[str, str]] = frozenset(
    [("torch.optim.sgd", "SGD"), ("torch.optim.adam", "Adam"), ("torch.optim.adamw", "AdamW"),
     ("torch.optim.rmsprop", "RMSprop")]
    + [("torch.optim.lr_scheduler", name) for name in ("CosineAnnealingLR", "StepLR", "MultiStepLR", "LambdaLR")]
    + [("dassl.optim.lr_scheduler", name) for name in ("ConstantWarmupScheduler", "LinearWarmupScheduler",
                                                        "_BaseWarmupScheduler")]
    + [("dassl.optim.radam", name) for name in ("RAdam", "PlainRAdam", "AdamW")]
    + [("dassl.data.datasets.base_dataset", "Datum")]
)

_REBUILDERS = ("_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_parameter", "_rebuild_parameter_with_state")
_BUILTINS = ("set", "frozenset", "dict", "list", "tuple", "int", "float", "complex", "bool", "str", "bytes",
             "bytearray", "slice")


def _allowed_callables() -> dict[tuple[str, str], Any]:
    import torch._tensor
    import torch._utils

    allowed: dict[tuple[str, str], Any] = {("torch._utils", n): getattr(torch._utils, n) for n in _REBUILDERS
                                           if hasattr(torch._utils, n)}
    allowed[("torch._tensor", "_rebuild_from_type_v2")] = torch._tensor._rebuild_from_type_v2
    allowed[("torch._tensor", "Tensor")] = allowed[("torch", "Tensor")] = torch.Tensor
    allowed[("torch.nn.parameter", "Parameter")] = torch.nn.Parameter
    allowed[("torch", "Size")] = torch.Size
    allowed |= {("torch", name): value for name, value in vars(torch).items() if isinstance(value, torch.dtype)}
    allowed[("collections", "OrderedDict")] = collections.OrderedDict
    allowed[("collections", "defaultdict")] = collections.defaultdict
    allowed |= {("builtins", name): getattr(builtins, name) for name in _BUILTINS}
    allowed[("_codecs", "encode")] = _codecs.encode
    return allowed


_ALLOWED: dict[tuple[str, str], Any] | None = None
_INERT: dict[tuple[str, str], type] = {}


def inert_class(module: str, name: str) -> type:
    """The stand-in class of an allow-listed (module, name); one class per name so `isinstance` tells them apart."""
    key = (module, name)
    if key not in _INERT:
        _INERT[key] = type(name, (InertObject,), {"__slots__": (), "qualified_name": f"{module}.{name}"})
    return _INERT[key]


class Unpickler(pickle.Unpickler):
    """pickle.Unpickler that resolves only allow-listed globals (see the module docstring)."""

    source = "the pickle"

    def find_class(self, module: str, name: str) -> Any:
        global _ALLOWED
        if _ALLOWED is None:
            _ALLOWED = _allowed_callables()
        # Protocol 2 (torch.save's) names Python 2's builtins module; pickle maps it only in its own find_class.
        key = ("builtins" if module == "__builtin__" else module, name)
        if key in _ALLOWED:
            return _ALLOWED[key]
        if key in INERT_CLASSES:
            return inert_class(module, name)
        raise RefusedPickleError(
            f"refused to load {self.source}: it references {module}.{name}, which is not on promptlab's allow-list "
            "(tensors, containers, torch/Dassl optimiser and scheduler state, Dassl's Datum). A Dassl checkpoint or "
            "few-shot file holds nothing else, so this file is damaged, from another tool, or malicious; nothing "
            "it names was imported or run (docs/reference_artefacts.md, \"What the unpickler allows\")."
        )


def load(file: IO[bytes], **kwargs: Any) -> Any:
    """pickle.load with the restricted Unpickler (torch.load calls this for the legacy format's headers)."""
    return Unpickler(file, **kwargs).load()


def loads(data: bytes, **kwargs: Any) -> Any:
    return load(io.BytesIO(data), **kwargs)


def load_file(path: Any) -> Any:
    """A plain pickle file (Dassl's few-shot selection), restricted; errors name the file."""
    with open(path, "rb") as f:
        unpickler = Unpickler(f)
        unpickler.source = str(path)
        return unpickler.load()


def torch_load(path: Any) -> Any:
    """torch.load of a Dassl checkpoint with this module as its pickle module (weights_only=False is what lets a
    pickle module be given at all; the allow-list above is the restriction)."""
    class _Named(Unpickler):
        source = str(path)

    # A module object of its own per call, so that errors name this file (torch subclasses its Unpickler).
    module = types.ModuleType(f"{__name__}.for_file")
    module.Unpickler = _Named  # type: ignore[attr-defined]
    module.load = lambda f, **kwargs: _Named(f, **kwargs).load()  # type: ignore[attr-defined]
    return torch.load(path, map_location="cpu", pickle_module=module, weights_only=False)
