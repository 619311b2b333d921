"""The benchmark's numeric rows on CUDA tensors: ratios against anchors timed in the same run.

Run on a machine with a GPU:  python benchmarks/cuda_bench.py [--repeat 7]

Same rows and targets as ``bench.py`` (elementwise N=10^6 vs one hand-written backward;
row-wise tanh(X @ W) vs vmap(jacrev); dense 256→256 vs jacrev), each timed with
``torch.cuda.synchronize()`` around it, plus the display's size and time for a 10^6-entry
CUDA result (only the shown entries leave the device).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from vjp_magic import differentiate


def timed(fn) -> float:
    torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - start


def paired(ours, anchor, repeat: int) -> tuple[float, float]:
    """Medians of ``ours`` and ``anchor`` run alternately (after a warm-up of each)."""
    ours(), anchor()
    a, b = [], []
    for _ in range(repeat):
        a.append(timed(ours))
        b.append(timed(anchor))
    return statistics.median(a), statistics.median(b)


def row(label, ours, anchor, anchor_name, must) -> bool:
    ratio = ours / anchor
    print(f"{label:<48} {ratio:6.2f}x  must<={must:<4} {'ok' if ratio <= must else 'OVER'}"
          f"   ours {ours * 1e3:8.2f} ms, {anchor_name} {anchor * 1e3:8.2f} ms")
    return ratio <= must


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    repeat = parser.parse_args().repeat
    cuda = torch.device("cuda")
    print(f"device: {torch.cuda.get_device_name()} | torch {torch.__version__}")

    x = torch.linspace(-3, 3, 10**6, device=cuda, requires_grad=True)
    y = torch.sin(x) * x**2
    one = lambda: torch.autograd.grad(y, x, torch.ones_like(y), retain_graph=True)  # noqa: E731
    row("elementwise sin(x)*x**2, N=1e6", *paired(lambda: differentiate(y, x), one, repeat),
        "one backward", 2.5)
    row("  same, probe-verified (graph proof off)",
        *paired(lambda: differentiate(y, x, graph_proof=False), one, repeat), "one backward", 2.5)

    torch.manual_seed(0)
    X = torch.randn(10**5, 8, device=cuda, requires_grad=True)
    W = torch.randn(8, 3, device=cuda)
    jac = torch.func.vmap(torch.func.jacrev(lambda r: torch.tanh(r @ W)))
    yr = torch.tanh(X @ W)
    row("row-wise tanh(X@W), X 1e5x8, differentiate only",
        *paired(lambda: differentiate(yr, X), lambda: jac(X.detach()), repeat), "vmap(jacrev)", 1.5)

    W1 = torch.randn(256, 256, device=cuda) / 16
    W2 = torch.randn(256, 256, device=cuda) / 16
    v = torch.randn(256, device=cuda, requires_grad=True)
    f = lambda t: torch.tanh(W2 @ torch.tanh(W1 @ t))  # noqa: E731
    row("dense tanh(W2 tanh(W1 x)), 256->256 (with forward)",
        *paired(lambda: differentiate(f(v), v), lambda: torch.func.jacrev(f)(v.detach()), repeat),
        "jacrev", 1.3)

    r = differentiate(torch.sin(x), x)
    bundle = r._repr_mimebundle_()
    size = sum(len(str(text).encode()) for text in bundle.values())
    seconds = statistics.median(timed(r._repr_mimebundle_) for _ in range(repeat))
    print(f"{'display of a 10^6-entry CUDA result':<48} {seconds * 1e3:6.2f} ms, {size:,} bytes "
          f"in {len(bundle)} renderings (must < 50 ms, < 20 KB each)")


if __name__ == "__main__":
    main()
