"""A vector output whose every component has a diagonal Hessian (y = A·g(x): A linear and
banded, g elementwise: conv1d / avg_pool1d / a padded stencil of x**2): D = ∂y/∂x pairs with
x entry by entry, and the second derivatives come from forward mode on that pairing, a
constant number of passes, not one VJP per output entry (s37 G21: 59 passes at n = 100).

Expected values: torch.func.hessian (n = 100), and at n = 1,000 the closed form
∂²y_c/∂x_j² = 2·w[j - c] for y = conv1d(x**2, w) (x**2's second derivative 2, times the tap).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import vjp_magic
from vjp_magic.core import hessian as hessian_module
from vjp_magic.core.pairing import Pairing
from pass_counter import counted

KERNELS = {"[1, 2, 1]": [1.0, 2.0, 1.0], "[0.5, -1, 3, 2]": [0.5, -1.0, 3.0, 2.0]}


def _conv(kernel):
    def f(x):
        w = torch.tensor([[kernel]], dtype=x.dtype)
        return F.conv1d((x ** 2)[None, None], w)[0, 0]
    return f


BANDED = {
    **{f"conv1d(x**2, {k})": _conv(v) for k, v in KERNELS.items()},
    "avg_pool1d(x**2, 3)": lambda x: F.avg_pool1d((x ** 2)[None, None], 3, stride=1)[0, 0],
    "padded stencil of sin(x)": lambda x: (F.pad(torch.sin(x), (1, 1))[2:]
                                           - 2 * F.pad(torch.sin(x), (1, 1))[1:-1]
                                           + F.pad(torch.sin(x), (1, 1))[:-2]),
    "conv1d(exp(x), padding=2)": lambda x: F.conv1d(
        torch.exp(x)[None, None], torch.tensor([[[1.0, -2.0, 0.5]]], dtype=x.dtype),
        padding=2)[0, 0],
}
PASSES = 16  # first order, D, 2 forward passes, the probes (5 to 8), the analysis's own: any n
# (11 in float64, 13-15 in float32 here; one VJP per component of D took 21-108 at n = 100)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", list(BANDED))
def test_banded_vector_hessian_equals_torch_func_hessian(name, dtype):
    f = BANDED[name]
    x = torch.randn(100, dtype=dtype, generator=torch.Generator().manual_seed(11)) * 0.5
    leaf = x.clone().requires_grad_()
    y = f(leaf)
    h, passes = counted(lambda: vjp_magic.hessian(y, leaf, names=["x"], seed=0))
    expected = torch.func.hessian(f)(x)
    tol = {} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-5}
    torch.testing.assert_close(h.hessian("x"), expected, **tol)
    csr = h.hessian("x", layout=torch.sparse_csr)
    torch.testing.assert_close(csr.to_dense(), expected.reshape(y.numel() * 100, 100), **tol)
    assert h.inputs["x"].structure == Pairing([(1, 0)])  # D[c, j] reads x_j alone
    assert passes <= PASSES, passes


@pytest.mark.parametrize("n", [100, pytest.param(1000, marks=pytest.mark.slow)])
def test_diagonal_second_derivatives_take_passes_independent_of_n(n):
    """At n = 1,000 the dense per-point Hessians (998 × 1000 × 1000) are over the default
    budget, so D's second derivatives are checked directly: the closed form, and the passes.
    (n = 1,000 is marked slow: D's graph, made per component, has ~n convolution nodes, so
    each of the 7 passes costs ~1 s of CPU here; the old route took n passes of that.)"""
    kernel = [1.0, 2.0, 1.0]
    x = torch.randn(n, dtype=torch.float64, generator=torch.Generator().manual_seed(3),
                    requires_grad=True)
    y = _conv(kernel)(x)
    d = hessian_module.first_derivatives(y, x, Pairing(), 10**9, None)
    inner, passes = counted(lambda: hessian_module._diagonal(d, x, seed=0))
    assert inner is not None and inner.pairing == Pairing([(1, 0)])
    expected = torch.zeros(n - 2, n, dtype=torch.float64)
    for t, w in enumerate(kernel):
        expected[torch.arange(n - 2), torch.arange(n - 2) + t] = 2 * w
    torch.testing.assert_close(inner.derivatives, expected)
    assert passes <= 8, passes  # 1 with a graph, 1 forward, the probes (5 in float64)


def test_a_hessian_with_off_diagonal_entries_is_not_taken_as_diagonal():
    """y_i = x_i³ + x_(i-1)·x_i: ∂²y_i/∂x_i∂x_(i-1) = 1 is off the diagonal: the probes
    reject the diagonal reading, and the Hessian is torch.func.hessian's."""
    f = lambda x: x ** 3 + x.roll(1) * x  # noqa: E731
    x = torch.randn(100, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    leaf = x.clone().requires_grad_()
    d = hessian_module.first_derivatives(f(leaf), leaf, Pairing(), 10**9, None)
    assert hessian_module._diagonal(d, leaf, seed=0) is None
    h = vjp_magic.hessian(f(leaf), leaf, names=["x"], seed=0)
    torch.testing.assert_close(h.hessian("x"), torch.func.hessian(f)(x))


def test_a_proved_diagonal_pairing_stays_proved():
    """y = W @ sin(x): D = W·cos(x) (broadcast), whose pairing with x the graph proves: the
    forward-mode reading keeps the analysis's verdict, proved (s37F11 first said observed)."""
    w = torch.randn(20, 30, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    f = lambda x: w @ torch.sin(x)  # noqa: E731
    x = torch.randn(30, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    leaf = x.clone().requires_grad_()
    h = vjp_magic.hessian(f(leaf), leaf, names=["x"], seed=0)
    assert h.inputs["x"].evidence == "proved"
    torch.testing.assert_close(h.hessian("x"), torch.func.hessian(f)(x))
