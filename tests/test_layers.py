"""Imports point one way: every module of promptlab sits in a layer and imports only its own layer and lower
ones. The map below is the design, written as data; a new module must be placed in it deliberately.

What counts as an import of a promptlab module: `import promptlab...`, `from promptlab... import ...`,
relative imports, and `importlib.import_module("promptlab...")` with a literal (or f-string-prefixed) name;
at module level, inside functions and methods (a late import is still a dependency), and under
`if TYPE_CHECKING:` (reported as typing-only: no cycle at run time, but still a dependency of the design).
`from package import name` is an import of the submodule `package.name` when that module exists, else of
the package itself.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
ROOT_PACKAGE = "promptlab"

# Module prefix -> layer, lowest first. A prefix covers the module of that name and every module below it;
# the longest matching prefix wins ("promptlab.results.metrics" is 1 although "promptlab.results" is 4).
LAYERS: dict[str, int] = {
    # 0: foundations, no other promptlab imports
    "promptlab.errors": 0,
    "promptlab.io": 0,
    "promptlab.logs": 0,
    "promptlab.cli_errors": 0,
    "promptlab.launch": 0,  # the launch-only keys (resume hash, job folders)
    "promptlab.conf": 0,  # the Hydra config package: YAML, and an __init__ that makes it importable
    # 1: frozen CLIP loading, data (readers, types, few-shot, transforms, image dataset), per-run metrics and
    # records, the toy world generator
    "promptlab.models": 1,
    "promptlab.data": 1,
    "promptlab.results.metrics": 1,
    "promptlab.results.records": 1,
    "promptlab.toy.world": 1,
    # 2: prompt learners, the toy world's reader and CLIP pretraining, typed config schemas
    "promptlab.methods": 2,
    "promptlab.toy.reader": 2,
    "promptlab.toy.pretrain": 2,
    "promptlab.config": 2,
    # 3: evaluation protocols, the Lightning engine (module, data module, features, build)
    "promptlab.protocols": 3,
    "promptlab.engine": 3,
    # 4: everything else in results (tables, plots, aggregation, W&B, Hydra callback), diagnostics
    "promptlab.results": 4,
    "promptlab.analysis": 4,
    "promptlab.interpret": 4,  # nearest words of a learned context (the analysis output uses it)
    "promptlab.reference_import": 4,  # the reference's checkpoints and few-shot files -> promptlab's
    "promptlab.reference_import.unpickler": 1,  # the allow-list unpickler: tensors and inert stand-ins only
    # 5: entry points and the public API
    "promptlab.train": 5,
    "promptlab.api": 5,
    "promptlab.bench": 5,
    "promptlab.gpu_check": 5,
    "promptlab.results.cli": 5,
    "promptlab.analysis.cli": 5,
    "promptlab.data.cli": 5,  # promptlab-data: composes a dataset's config (layer 2) above the data readers
    "promptlab.reference_import.cli": 5,
}

# Single modules, not prefixes: package __init__ files whose submodules sit in several layers.
EXACT: dict[str, int] = {
    "promptlab": 5,  # the package's public API re-exports
    "promptlab.toy": 1,  # an empty package __init__
}

# Imports inside one top-level function (or "Class.method"): "module:function" -> layer. For command-line
# mains that live in a lower module.
FUNCTIONS: dict[str, int] = {
    "promptlab.analysis.study:main": 5,
    # The config check asks the protocol registry (layer 3) whether protocol.name is registered, and what the
    # protocol asks of the learner: the registry replaced a closed Enum in the schema.
    "promptlab.config.validate:_protocol_problems": 3,
}

# Map entries allowed to name modules that do not exist yet (being written).
PLANNED = {"promptlab.api", "promptlab.cli_errors"}

ADVICE = (
    "A module may import its own layer and lower ones. To fix an upward import: move the piece both need "
    "down a layer (a helper, a constant, a type), or let the higher layer pass it in (argument, callback, "
    "registry filled from above); a typing-only import can often use a Protocol or a string annotation of a "
    "lower-layer type instead. If the module itself belongs higher, move it and update LAYERS in "
    "tests/test_layers.py: the map is the design, change it on purpose, not to silence this test."
)


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    target: str  # the imported promptlab module
    line: int
    function: str | None  # enclosing top-level function or "Class.method"; None at module or class level
    typing_only: bool  # under `if TYPE_CHECKING:`

    def where(self) -> str:
        parts = [f"line {self.line}"]
        if self.function:
            parts.append(f"in {self.function}()")
        if self.typing_only:
            parts.append("typing only")
        return ", ".join(parts)


def layer_of(module: str) -> int | None:
    if module in EXACT:
        return EXACT[module]
    matches = [p for p in LAYERS if module == p or module.startswith(p + ".")]
    return LAYERS[max(matches, key=len)] if matches else None


def importer_layer(imp: Import) -> int | None:
    if imp.function is not None:
        for key in (f"{imp.module}:{imp.function}", f"{imp.module}:{imp.function.split('.')[0]}"):
            if key in FUNCTIONS:
                return FUNCTIONS[key]
    return layer_of(imp.module)


def module_paths() -> dict[str, Path]:
    """Every module under src/promptlab by dotted name (a package by its name, for its __init__.py)."""
    names = {}
    for path in sorted((SRC / ROOT_PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _literal_module(node: ast.expr) -> str | None:
    """The name in `import_module("a.b")`, or the fixed dotted part of `import_module(f"a.b.{x}")`."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant):
        head = str(node.values[0].value)
        return head.rsplit(".", 1)[0] if "." in head else None
    return None


def imports_of(module: str, path: Path, known: set[str]) -> Iterator[Import]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]

    def targets(node: ast.AST) -> list[str]:
        if isinstance(node, ast.Import):
            return [alias.name for alias in node.names]
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: `from . import x` in a package's module means the package itself
                base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            return [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        if isinstance(node, ast.Call) and node.args:
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            literal = _literal_module(node.args[0]) if name in ("import_module", "__import__") else None
            return [literal] if literal else []
        return []

    def walk(node: ast.AST, function: str | None, cls: str | None, typing_only: bool) -> Iterator[Import]:
        for child in ast.iter_child_nodes(node):
            inner_function, inner_cls, inner_typing = function, cls, typing_only
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) and function is None:
                inner_function, inner_cls = (f"{cls}.{child.name}" if cls else child.name), None
            elif isinstance(child, ast.ClassDef) and function is None:
                inner_cls = child.name
            for target in targets(child):
                if target == ROOT_PACKAGE or target.startswith(ROOT_PACKAGE + "."):
                    yield Import(module, target, getattr(child, "lineno", 0), inner_function, typing_only)
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.body:  # the else branch runs at run time
                    yield from walk(ast.Module(body=[stmt], type_ignores=[]), function, cls, True)
                for stmt in child.orelse:
                    yield from walk(ast.Module(body=[stmt], type_ignores=[]), function, cls, typing_only)
                continue
            yield from walk(child, inner_function, inner_cls, inner_typing)

    yield from walk(tree, None, None, False)


def all_imports() -> list[Import]:
    paths = module_paths()
    known = set(paths)
    return [imp for module, path in paths.items() for imp in imports_of(module, path, known)]


# ----------------------------------------------------------------------------------------------------- tests
def test_every_module_has_a_layer():
    unplaced = sorted(m for m in module_paths() if layer_of(m) is None)
    assert not unplaced, (
        f"{len(unplaced)} module(s) have no layer in tests/test_layers.py: {', '.join(unplaced)}. Add each (or its "
        "package prefix) to LAYERS with the layer it belongs to (see the comments there)."
    )


def test_layer_map_names_existing_modules():
    names = set(module_paths())
    entries = [*LAYERS, *EXACT, *(key.split(":")[0] for key in FUNCTIONS)]
    stale = sorted(e for e in entries if e not in PLANNED and not any(n == e or n.startswith(e + ".") for n in names))
    assert not stale, f"the layer map names modules that do not exist (renamed or removed?): {stale}"


def test_imports_point_down():
    problems = set()
    for imp in all_imports():
        source, target = importer_layer(imp), layer_of(imp.target)
        if target is None:
            problems.add(f"{imp.module} imports {imp.target}, which has no layer [{imp.where()}]")
        elif source is not None and target > source:
            problems.add(f"{imp.module} (layer {source}) imports {imp.target} (layer {target}) [{imp.where()}]")
    assert not problems, (
        f"{len(problems)} import(s) against the layering:\n  " + "\n  ".join(sorted(problems)) + f"\n{ADVICE}"
    )


def test_package_inits_import_nothing_above_their_lowest_module():
    """Python runs a package's __init__ before any of its submodules: `import promptlab.results.metrics`
    (layer 1) first runs promptlab/results/__init__.py. An eager import of a higher layer there makes every
    user of the low module load the high one, and turns the allowed "high imports low" into a cycle. Such
    re-exports must be lazy (PEP 562 `__getattr__`, as promptlab.results and promptlab.analysis do)."""
    paths = module_paths()
    problems = set()
    for imp in all_imports():
        if paths[imp.module].name != "__init__.py" or imp.function is not None or imp.typing_only:
            continue
        inside = [layer_of(m) for m in paths if m.startswith(imp.module + ".")]
        floor = min((x for x in inside if x is not None), default=None)
        target = layer_of(imp.target)
        if floor is not None and target is not None and target > floor:
            problems.add(f"{imp.module} (package __init__, runs before its layer-{floor} modules) imports "
                         f"{imp.target} (layer {target}) at import time [{imp.where()}]")
    assert not problems, (
        f"{len(problems)} eager import(s) in package __init__ files:\n  " + "\n  ".join(sorted(problems))
        + "\nMake them lazy (a module-level __getattr__ that imports on first access) or import from the "
        "submodule at the call site."
    )


def test_checker_sees_every_import_form(tmp_path):
    """The parser itself: each form of import below must be found, with its scope."""
    source = tmp_path / "mod.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "import promptlab.engine.module as m\n"
        "from promptlab import train\n"
        "from promptlab.results import metrics, something\n"
        "from .. import io\n"
        "from ..data.types import Thing\n"
        "if TYPE_CHECKING:\n"
        "    from promptlab.analysis import drift\n"
        "class C:\n"
        "    def method(self):\n"
        "        import importlib\n"
        "        importlib.import_module(f'promptlab.analysis.{self}')\n"
        "def main():\n"
        "    def inner():\n"
        "        from promptlab.bench import run\n"
    )
    known = {"promptlab.train", "promptlab.results.metrics", "promptlab.io"}
    found = {(i.target, i.function, i.typing_only) for i in imports_of("promptlab.toy.mod", source, known)}
    assert found == {
        ("promptlab.engine.module", None, False),
        ("promptlab.train", None, False),
        ("promptlab.results.metrics", None, False),
        ("promptlab.results", None, False),  # `something` is not a module: the package is imported
        ("promptlab.io", None, False),
        ("promptlab.data.types", None, False),
        ("promptlab.analysis", None, True),  # `drift` is not in `known` here
        ("promptlab.analysis", "C.method", False),
        ("promptlab.bench", "main", False),
    }
