"""Times asdex (JAX) one-off on the bench's sparse problems: detect the pattern, colour it,
and evaluate the sparse Jacobian or Hessian once (what a user pays the first time).

Run by ``benchmarks/sparse.py`` under a Python that has ``asdex`` (an optional bench extra,
``pip install asdex``; its own environment, as JAX and torch need not share one):
``python benchmarks/asdex_child.py PROBLEM N`` prints the median seconds of fresh one-off runs
and the number of colours. PROBLEM: tridiagonal, laplacian, rosenbrock.
"""
from __future__ import annotations

import statistics
import sys
import time


def problem(name: str, n: int):
    import jax.numpy as jnp

    if name == "tridiagonal":
        def f(x):
            return jnp.pad(x, (1, 0))[:-1] + x ** 3 + jnp.pad(x, (0, 1))[1:]
        return f, jnp.linspace(-2.0, 2.0, n, dtype=jnp.float32)
    if name == "laplacian":
        k = int(round(n ** 0.5))

        def f(x):
            u = x.reshape(k, k)
            p = jnp.pad(u, 1)
            return (p[:-2, 1:-1] + p[2:, 1:-1] + p[1:-1, :-2] + p[1:-1, 2:] - 4 * u
                    + u ** 3).reshape(-1)
        return f, jnp.linspace(-1.0, 1.0, k * k, dtype=jnp.float32)
    if name == "rosenbrock":
        def f(x):
            return jnp.sum(100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)
        return f, jnp.linspace(-1.0, 1.0, n, dtype=jnp.float32)
    raise SystemExit(f"unknown problem {name}")


def main() -> None:
    import asdex
    import jax

    name, n = sys.argv[1], int(float(sys.argv[2]))
    repeat = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    f, x = problem(name, n)
    times, colours = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        if name == "rosenbrock":
            result = asdex.hessian(f, x)(x)
        else:
            result = asdex.jacobian(f, x)(x)
        jax.block_until_ready(result.data if hasattr(result, "data") else result)
        times.append(time.perf_counter() - start)
    coloring = (asdex.hessian_coloring(f, x) if name == "rosenbrock"
                else asdex.jacobian_coloring(f, x))
    colours = getattr(coloring, "num_colors", None)
    print(f"{statistics.median(times)} {colours}")


if __name__ == "__main__":
    main()
