"""The package's import structure: no cycles, no upward imports, imports at the top of modules.

The layer order is written once, here: a unit (a top-level module or folder of ``audiotag``) may
import from the units before it and from itself, never from one after it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import audiotag

PACKAGE = Path(audiotag.__file__).parent

# Lowest first: each stage of the data's way, then what combines them, then the front doors.
LAYERS = (
    "errors", "version", "fsutil", "progress", "parallel", "metrics", "malloc", "mkl", "config", "plots",
    "audio", "data", "features", "models", "augment", "engine", "runs",
    "inference", "training", "ensemble", "predictor", "export", "report", "recipes",
    "bench", "cli", "launch", "__main__", "__init__",
)


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def internal_imports(path: Path, modules: set[str], root: Path = PACKAGE) -> list[tuple[str, int, bool]]:
    """``(imported module, line, at top level)`` for each import of a module of the package."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    tree = ast.parse(path.read_text(), filename=str(path))
    top_level = {id(node) for node in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            candidates = [f"{target}.{a.name}" for a in node.names]
            targets = [c if c in modules else target for c in candidates]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            continue
        for t in dict.fromkeys(targets):
            if t == root.name or t.startswith(root.name + "."):
                found.append((t if t in modules else root.name, node.lineno, id(node) in top_level))
    return found


def import_graph(root: Path = PACKAGE) -> dict[str, list[tuple[str, int, bool]]]:
    files = sorted(root.rglob("*.py"))
    modules = {module_name(f, root) for f in files}
    return {module_name(f, root): internal_imports(f, modules, root) for f in files}


def upward_imports(graph) -> list[str]:
    order = {unit: i for i, unit in enumerate(LAYERS)}
    bad = []
    for module, imports in graph.items():
        for target, line, _ in imports:
            here, there = unit_of(module), unit_of(target)
            if here not in order or there not in order:
                bad.append(f"{module}:{line} imports {target}: add its unit to LAYERS")
            elif order[there] > order[here]:
                bad.append(f"{module}:{line} imports {target}, a higher layer ({there} above {here})")
    return bad


def cycles(graph) -> list[list[str]]:
    found, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for target, _, _ in graph.get(node, []):
            if target == node:
                continue
            if state.get(target) == "open":
                found.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target, stack + [target])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


# The launcher sets the environment that torch reads when it loads, so it imports the CLI only then.
DEFERS_BY_DESIGN = {"audiotag.launch"}


def inner_imports(graph) -> list[str]:
    return [f"{module}:{line} imports {target} inside a function or block"
            for module, imports in graph.items() if module not in DEFERS_BY_DESIGN
            for target, line, top in imports if not top]


def test_every_unit_of_the_package_has_a_layer():
    units = {unit_of(m) for m in import_graph()}
    assert units <= set(LAYERS), f"not in LAYERS: {sorted(units - set(LAYERS))}"


def test_no_module_imports_a_higher_layer():
    assert upward_imports(import_graph()) == []


def test_there_are_no_import_cycles():
    assert cycles(import_graph()) == []


def test_the_package_imports_its_own_modules_at_the_top():
    assert inner_imports(import_graph()) == []


def plant(tmp_path: Path, files: dict[str, str]) -> dict:
    root = tmp_path / "audiotag"
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return import_graph(root)


@pytest.mark.parametrize("files, upward, cyclic, inner", [
    ({"__init__.py": "", "errors.py": "", "data/__init__.py": "", "data/a.py": "from ..errors import X\n"},
     0, 0, 0),
    ({"__init__.py": "", "data/__init__.py": "", "data/a.py": "from ..training import cv\n",
      "training/__init__.py": "", "training/cv.py": ""}, 1, 0, 0),
    ({"__init__.py": "", "data/__init__.py": "", "data/a.py": "from . import b\n",
      "data/b.py": "def f():\n    from .a import g\n"}, 0, 1, 1),
    ({"__init__.py": "", "runs.py": "from . import __version__\n"}, 1, 0, 0),
])
def test_the_checks_catch_planted_faults(tmp_path, files, upward, cyclic, inner):
    graph = plant(tmp_path, files)
    assert len(upward_imports(graph)) == upward
    assert len(cycles(graph)) == cyclic
    assert len(inner_imports(graph)) == inner


def source_files():
    return sorted(PACKAGE.rglob("*.py"))


def test_no_module_is_over_500_lines():
    long = {str(p.relative_to(PACKAGE)): n for p in source_files() if (n := len(p.read_text().splitlines())) > 500}
    assert long == {}


def test_no_function_is_over_100_lines():
    long = []
    for path in source_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 100:
                long.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name}")
    assert long == []


def test_no_folder_of_the_package_holds_over_a_fifth_of_its_lines():
    lines = {p: len(p.read_text().splitlines()) for p in source_files()}
    total = sum(lines.values())
    folders: dict[str, int] = {}
    for path, n in lines.items():
        parts = path.relative_to(PACKAGE).parts
        if len(parts) > 1:
            folders[parts[0]] = folders.get(parts[0], 0) + n
    assert {f: n for f, n in folders.items() if n > total / 5} == {}
