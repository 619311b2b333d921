"""The package's shape, as issue-independent rules a newcomer can rely on.

- folders by responsibility, imports only downward:
  core → run → render → teach / symbolic → pipeline → magics;
- only the magics layer imports IPython;
- no module over 400 lines, no function over 60.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "vjp_magic"
# each layer may import from the layers listed after it, never from those before
LAYERS = ["magics", "pipeline", "teach", "symbolic", "render", "run", "core"]
ALLOWED = {
    "core": {"core"},
    "run": {"core", "run"},
    "render": {"core", "render"},
    "teach": {"core", "run", "render", "teach"},
    "symbolic": {"core", "run", "render", "symbolic"},
    "pipeline": set(LAYERS) - {"magics"},
    "magics": set(LAYERS),
    "__init__": {"pipeline", "core", "render", "magics"},
}
MODULES = sorted(p for p in PACKAGE.rglob("*.py"))


def layer_of(path: Path) -> str:
    parts = path.relative_to(PACKAGE).parts
    return parts[0] if len(parts) > 1 else path.stem


def imported_layers(path: Path, source: str | None = None) -> set[str]:
    """The package's layers a module imports (relative imports resolved from its folder)."""
    tree = ast.parse(path.read_text() if source is None else source)
    depth = len(path.relative_to(PACKAGE).parts) - 1
    layers = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            up = node.level - 1  # 1: this folder
            here = list(path.relative_to(PACKAGE).parts[:-1])
            base = here[: len(here) - up] if up <= depth else None
            assert base is not None, f"{path}: import above the package"
            target = base + (node.module.split(".") if node.module else [])
            if target:
                layers.add(target[0] if target[0] in LAYERS else "__init__")
            else:  # from . import x (at the top) or from .. import x
                layers.update(a.name if a.name in LAYERS else "__init__" for a in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("vjp_magic"):
            parts = node.module.split(".")
            layers.add(parts[1] if len(parts) > 1 else "__init__")
    return layers - {"__init__"}


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_run_only_downward(path):
    layer = layer_of(path)
    assert imported_layers(path) <= ALLOWED[layer], (layer, imported_layers(path))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_only_the_magics_import_ipython(path):
    tree = ast.parse(path.read_text())
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    uses_ipython = any(name.split(".")[0] in ("IPython", "ipykernel") for name in names)
    assert not uses_ipython or layer_of(path) == "magics", path


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_and_functions_stay_small(path):
    source = path.read_text()
    assert len(source.splitlines()) <= 400, f"{path}: {len(source.splitlines())} lines"
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            assert length <= 60, f"{path}:{node.lineno} {node.name} is {length} lines"


def test_the_import_rule_can_fail():
    """An upward import (core reaching into render, lazily or not) is seen."""
    core_module = PACKAGE / "core" / "result.py"
    assert "render" not in imported_layers(core_module)
    lazy = "def f():\n    from ..render.view import View\n    return View\n"
    assert "render" in imported_layers(core_module, lazy)
    assert not imported_layers(core_module, lazy) <= ALLOWED["core"]
