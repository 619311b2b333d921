"""Benchmark rows of sparse Jacobians and Hessians (issue 20), each a ratio against an anchor
timed in the same run:

- the tridiagonal x³ stencil at N = 10⁵ and 10⁶, ``vjp_magic.sparse_jacobian`` and
  ``differentiate`` end to end, against one plain backward of the same map (≤ 10×, aim 5×);
- the 2-D 5-point Laplacian (+ u³) with 10⁶ unknowns (≤ 20×);
- the Rosenbrock Hessian at N = 10⁶ from ``vjp_magic.hessian`` in CSR, against one backward of
  the Rosenbrock function (≤ 30×);
- one-off (forward, pattern, colouring, first evaluation) against ``asdex`` (JAX) on the same
  functions and sizes (≤ 0.5× its time), when a Python with asdex is found: ``$BENCH_ASDEX_PYTHON``,
  else ``../benchenv/bin/python`` beside the project; otherwise the row says it was skipped;
- the colour counts against the optimum on the stencils (3 and 5), and the colouring alone on
  stencils built from their definition (tridiagonal 10⁶, 5-point 1000 × 1000, 7-point 100³).
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import torch

import vjp_magic
from timing import median_time, paired_medians, row
from vjp_magic.core.colouring import colour_count, colour_rows
from vjp_magic.core.errors import VJPUsageError

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
from stencils import laplacian, stencil, tridiagonal  # noqa: E402 - as the tests


def rosenbrock(x):
    return (100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2).sum()


def _backward(y, x):
    return lambda: torch.autograd.grad(y, x, torch.ones_like(y), retain_graph=True)


def bench_jacobian(name: str, f, n: int, repeat: int, must: float, aim: float) -> bool:
    x = torch.linspace(-1, 1, n, requires_grad=True)
    y = f(x)
    ours, anchor = paired_medians(lambda: vjp_magic.sparse_jacobian(y, x), _backward(y, x), repeat)
    ok = row(f"sparse {name}, N={n:.0e}", ours, anchor, "one backward", must, aim)
    try:
        ours, anchor = paired_medians(lambda: vjp_magic.differentiate(y, x), _backward(y, x),
                                      repeat)
        row("  same, differentiate (the %%vjp analysis)", ours, anchor, "one backward", must, aim)
    except VJPUsageError as error:
        print(f"  same, differentiate: refused ({str(error)[:60]}...)")
    return ok


def bench_rosenbrock(n: int, repeat: int) -> bool:
    x = torch.linspace(-1, 1, n, dtype=torch.float64, requires_grad=True)

    def ours():
        return vjp_magic.hessian(rosenbrock(x), x).hessian("x", layout=torch.sparse_csr)

    def anchor():
        return torch.autograd.grad(rosenbrock(x), x)

    try:
        mine, base = paired_medians(ours, anchor, repeat)
    except (VJPUsageError, TypeError) as error:
        print(f"{'sparse Rosenbrock Hessian, N=%.0e' % n:<44} refused or unsupported: "
              f"{str(error)[:70]}")
        return False
    return row(f"sparse Rosenbrock Hessian, N={n:.0e}", mine, base,
               "forward+backward", 30, 10)


def colour_counts() -> bool:
    """Colours on the stencils against their optimum (3 and 5), via the analysis' own
    colouring of the pattern (what ``r.gradients`` would hold)."""
    from vjp_magic.core.compressed import compressed_jacobian
    ok = True
    for name, f, n, best in (("tridiagonal", tridiagonal, 10**4, 3),
                             ("5-point Laplacian", laplacian, 100**2, 5)):
        x = torch.linspace(-1, 1, n, requires_grad=True)
        found = compressed_jacobian(f(x), x, 2**30, seed=0)
        count = getattr(found, "count", None)
        good = count == best
        ok &= good
        print(f"{'colours, ' + name:<44} {count!s:>6}   optimum {best}  "
              f"{'ok' if good else 'OVER'}")
    return ok


def colouring_times(repeat: int) -> bool:
    """The colouring alone (no passes) on stencils: colours and median time."""
    cases = [("tridiagonal 10⁶", (10 ** 6,), [(-1,), (0,), (1,)], 3),
             ("5-point 1000 × 1000", (1000, 1000), [(0, 0), (1, 0), (-1, 0), (0, 1), (0, -1)], 5),
             ("7-point 100³", (100, 100, 100), [(0, 0, 0), (1, 0, 0), (-1, 0, 0), (0, 1, 0),
                                                 (0, -1, 0), (0, 0, 1), (0, 0, -1)], 7)]
    ok = True
    for name, shape, offsets, best in cases:
        crow, col = stencil(shape, offsets)
        n = int(np.prod(shape))
        def colour(crow=crow, col=col, n=n, shapes=(shape, shape)):
            return colour_rows(crow, col, n, shape=shapes)

        count = colour_count(colour())
        seconds = median_time(colour, repeat)
        ok &= count == best
        print(f"{'colouring alone, ' + name:<44} {count:>6}   optimum {best}  "
              f"{'ok' if count == best else 'OVER'}   {seconds * 1e3:.0f} ms")
    return ok


def _asdex_python() -> str | None:
    python = os.environ.get("BENCH_ASDEX_PYTHON",
                            os.path.join(HERE, "..", "..", "benchenv", "bin", "python"))
    return python if os.path.exists(python) else None


def _asdex_seconds(python: str, problem: str, n: int) -> float:
    out = subprocess.run([python, os.path.join(HERE, "asdex_child.py"), problem, str(n), "1"],
                         capture_output=True, text=True, check=True, timeout=600).stdout
    return float(out.split()[0])


def bench_asdex(n: int, quick: bool) -> bool:
    """One-off: our forward + sparse Jacobian (or Hessian) against asdex's detect, colour and
    first evaluation, both from nothing but the function and x."""
    python = _asdex_python()
    if python is None:
        print(f"{'one-off vs asdex':<44} skipped: no Python with asdex "
              "(pip install asdex in its own venv, point BENCH_ASDEX_PYTHON at it)")
        return True
    ok = True
    side = 316 if quick else 1000
    for problem, f, size in (("tridiagonal", tridiagonal, n), ("laplacian", laplacian, side**2),
                             ("rosenbrock", rosenbrock, n)):
        x = torch.linspace(-1, 1, size, requires_grad=True)
        start = time.perf_counter()
        if problem == "rosenbrock":
            vjp_magic.hessian(f(x), x).hessian("x", layout=torch.sparse_csr)
        else:
            vjp_magic.sparse_jacobian(f(x), x)
        ours = time.perf_counter() - start
        theirs = _asdex_seconds(python, problem, size)
        ok &= row(f"one-off {problem}, N={size:.0e}", ours, theirs, "asdex", 0.5, 0.25)
    return ok


def rows(repeat: int, quick: bool) -> list[bool]:
    scale = 10 if quick else 1
    few = max(1, repeat // 3)
    return [
        bench_jacobian("tridiagonal x**3 stencil", tridiagonal, 10**5 // scale, repeat, 10, 5),
        bench_jacobian("tridiagonal x**3 stencil", tridiagonal, 10**6 // scale, few, 10, 5),
        bench_jacobian("5-point Laplacian + u**3", laplacian, (316 if quick else 1000) ** 2, few,
                       20, 10),
        bench_rosenbrock(10**6 // scale, few),
        colour_counts(),
        colouring_times(few),
        bench_asdex(10**6 // scale, quick),
    ]


if __name__ == "__main__":
    print(all(rows(int(sys.argv[1]) if len(sys.argv) > 1 else 3, "--quick" in sys.argv)))
