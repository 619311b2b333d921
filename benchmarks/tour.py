"""The tour: what one ``%%vjp --symbolic`` request on ``y = x**2`` touches in the package.

Run:  python benchmarks/tour.py

The cell runs in an IPython shell made as ``tests/conftest.py`` makes it (``start_ipython``,
``%load_ext vjp_magic``, ``import torch``), under ``cProfile``, and its result is then rendered
(``_repr_mimebundle_``: all three spellings, as a notebook asks for them). Every module of the
package is imported before the count, so module-level code is not counted. Two requests:

- cold: the first request in the process (what a notebook's first ``%%vjp --symbolic`` does;
  lazily built tables and caches are filled during it);
- warm: the same request again.

For each it prints the Python function calls made in ``vjp_magic`` (cProfile's ``ncalls``),
the distinct modules of ``vjp_magic`` whose functions ran (out of all of the package's
modules), and the calls that cross layers (a function of one layer called from a function of
another: ``core``, ``run``, ``render``, ``teach``, ``symbolic``, ``pipeline``, ``magics``,
``__init__``). ``--list`` also names the modules touched. See ``docs/architecture.md``.
"""
from __future__ import annotations

import cProfile
import contextlib
import importlib
import io
import pkgutil
import pstats
import sys
from pathlib import Path

from IPython.testing.globalipapp import start_ipython

import vjp_magic

PACKAGE = Path(vjp_magic.__file__).resolve().parent
CELL = "%%vjp --symbolic\nx = torch.linspace(-2, 2, 5, requires_grad=True)\ny = x**2"


def all_modules() -> list[str]:
    """Import every module of the package; their dotted names."""
    names = ["vjp_magic"]
    for info in pkgutil.walk_packages([str(PACKAGE)], prefix="vjp_magic."):
        importlib.import_module(info.name)
        names.append(info.name)
    return names


def module_of(filename: str) -> str | None:
    """``run/record.py`` → ``run.record``; None outside the package."""
    path = Path(filename).resolve()
    if PACKAGE not in path.parents:
        return None
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts) or "__init__"


def layer_of(module: str) -> str:
    return module.split(".")[0]


def request(shell) -> dict:
    """One profiled request: calls, modules touched and calls across layers."""
    profiler = cProfile.Profile()
    with contextlib.redirect_stdout(io.StringIO()):  # the shell prints the display
        profiler.enable()
        outcome = shell.run_cell(CELL)
        outcome.result._repr_mimebundle_()
        profiler.disable()
    assert outcome.success, outcome.error_in_exec
    stats = pstats.Stats(profiler).stats  # (file, line, name) → (cc, nc, tt, ct, callers)
    calls, crossings, modules = 0, 0, set()
    for (filename, _, _), (_, ncalls, _, _, callers) in stats.items():
        module = module_of(filename)
        if module is None:
            continue
        calls += ncalls
        modules.add(module)
        for (caller_file, _, _), caller_counts in callers.items():
            caller = module_of(caller_file)
            if caller is not None and layer_of(caller) != layer_of(module):
                crossings += caller_counts[1]
    return {"calls": calls, "modules": sorted(modules), "crossings": crossings}


def main() -> None:
    total = len(all_modules())
    shell = start_ipython()
    shell.run_line_magic("load_ext", "vjp_magic")
    shell.run_cell("import torch")
    for label in ("cold", "warm"):
        seen = request(shell)
        print(f"{label}: {seen['calls']:,} calls in vjp_magic, {len(seen['modules'])} of "
              f"{total} modules, {seen['crossings']} calls across layers")
        if "--list" in sys.argv:
            print("   ", " ".join(seen["modules"]))


if __name__ == "__main__":
    main()
