"""The package's shape, as rules a newcomer can rely on.

- folders by responsibility, imports only downward:
  magics → pipeline → features → teach / symbolic → render → run → core;
- only the magics layer imports IPython;
- no module reaches into another subpackage's private names (``_x``);
- no function over 60 lines. A module holds one topic: checked by review, not by a count
  of lines (a cap invites cuts at the cap instead of at the seams).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "vjp_magic"
# each layer may import from the layers listed after it, never from those before
LAYERS = ["magics", "pipeline", "features", "teach", "symbolic", "render", "run", "core"]
ALLOWED = {
    "core": {"core"},
    "run": {"core", "run"},
    "render": {"core", "render"},
    "teach": {"core", "run", "render", "teach"},
    "symbolic": {"core", "run", "render", "symbolic"},
    "features": {"core", "run", "render", "teach", "symbolic", "features"},
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
def test_functions_stay_small(path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            assert length <= 60, f"{path}:{node.lineno} {node.name} is {length} lines"


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _resolved(path: Path, node: ast.ImportFrom) -> list[str] | None:
    """The package path an import names (``["core", "structure"]``), None outside it."""
    if node.level:
        here = list(path.relative_to(PACKAGE).parts[:-1])
        return here[: len(here) - (node.level - 1)] + (node.module.split(".")
                                                        if node.module else [])
    parts = (node.module or "").split(".")
    return parts[1:] if parts[0] == "vjp_magic" else None


def _is_module(parts: list[str]) -> bool:
    target = PACKAGE.joinpath(*parts)
    return target.with_suffix(".py").is_file() or (target / "__init__.py").is_file()


def private_names_from_elsewhere(path: Path, source: str | None = None) -> list[str]:
    """The private names a module takes from another subpackage: imported by name
    (``from ..core.structure import _SEED``) or read off a module imported from there
    (``structure._SEED``)."""
    tree = ast.parse(path.read_text() if source is None else source)
    own = path.relative_to(PACKAGE).parts[0] if len(path.relative_to(PACKAGE).parts) > 1 \
        else None
    found, modules = [], set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom):
            continue
        target = _resolved(path, node)
        if target is None or (target and target[0] == own):
            continue
        for alias in node.names:
            if _private(alias.name):
                found.append(".".join(target + [alias.name]))
            elif _is_module(target + [alias.name]):
                modules.add(alias.asname or alias.name)
    found += [f"{n.value.id}.{n.attr}" for n in ast.walk(tree) if isinstance(n, ast.Attribute)
              and isinstance(n.value, ast.Name) and n.value.id in modules and _private(n.attr)]
    return found


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_imports_a_private_name_from_another_subpackage(path):
    assert not private_names_from_elsewhere(path), (path, private_names_from_elsewhere(path))


def test_the_private_name_rule_can_fail():
    here = PACKAGE / "core" / "dependency.py"
    assert private_names_from_elsewhere(here, "from ..run.replay import _key\n") == [
        "run.replay._key"]
    assert private_names_from_elsewhere(here, "from ..render import matrix\nmatrix._fit(1)\n") \
        == ["matrix._fit"]
    assert not private_names_from_elsewhere(here, "from .structure import _SEED\n")  # its own
    assert not private_names_from_elsewhere(here, "from ..render import matrix\nmatrix.__doc__")


def test_the_import_rule_can_fail():
    """An upward import (core reaching into render, lazily or not) is seen."""
    core_module = PACKAGE / "core" / "result.py"
    assert "render" not in imported_layers(core_module)
    lazy = "def f():\n    from ..render.view import View\n    return View\n"
    assert "render" in imported_layers(core_module, lazy)
    assert not imported_layers(core_module, lazy) <= ALLOWED["core"]
