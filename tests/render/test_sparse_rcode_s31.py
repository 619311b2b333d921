"""r.code of a result computed by compressed passes (issue 20, session 31): the coloured passes
the display teaches — never the one-hot loop — whatever the pattern, the colouring (closed form
or not), the mode (rows or columns) and the other inputs; run, d_<name> is the Jacobian that
torch.func.jacrev gives, and every .grad is left as it was."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import vjp_magic
from vjp_magic.render.sparse import colour_code, sparse_of


def tridiagonal(x):
    p = F.pad(x, (1, 1))
    return p[:-2] - 2 * p[1:-1] + p[2:] + x ** 3


def cyclic(x):
    return x.roll(1) - 2 * x + x.roll(-1) + x ** 3


def gather(x):  # random reads: coloured by columns (forward mode)
    idx = torch.randint(0, x.numel(), (2 * x.numel(),), generator=torch.Generator().manual_seed(0))
    return x[idx] * x[(idx + 7) % x.numel()]


def leak(x):  # a batch leak: greedy colours, no closed form
    w = torch.randn(8, 3, generator=torch.Generator().manual_seed(0), dtype=x.dtype)
    z = (x @ w).tanh()
    return z + torch.cat([torch.zeros(1, 3, dtype=x.dtype), z[:-1]]) * 0.1


CASES = [(tridiagonal, (400,)), (cyclic, (400,)), (cyclic, (401,)), (gather, (300,)),
         (leak, (64, 8))]


def _run(code: str, namespace: dict) -> dict:
    exec(compile(code, "<r.code>", "exec"), namespace)  # noqa: S102 - r.code is written to run
    return namespace


@pytest.mark.parametrize("f, shape", CASES, ids=lambda c: getattr(c, "__name__", str(c)))
def test_r_code_is_coloured_and_gives_the_jacobian(f, shape):
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    y = f(x)
    r = vjp_magic.differentiate(y, x, seed=0)
    sparse = sparse_of(r, "x")
    assert sparse is not None, "expected a coloured result"
    code = r.code
    assert f"range({y.numel()})" not in code and f"range({x.numel()})" not in code, code
    assert f"range({sparse.count})" in code
    x.grad = torch.full_like(x, 7.0)  # r.code keeps it
    ns = _run(code, {"torch": torch, "x": x, "y": y, "r": r})
    assert torch.equal(x.grad, torch.full_like(x, 7.0))
    expected = torch.func.jacrev(f)(x.detach())
    torch.testing.assert_close(ns["d_x"].to_dense(), expected)


@pytest.mark.parametrize("f, shape", CASES, ids=lambda c: getattr(c, "__name__", str(c)))
def test_the_displays_code_runs_with_only_the_result_as_underscore(f, shape):
    """The code beneath the cell names no ``r``: the cell's tensors and ``_`` are enough."""
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    y = f(x)
    r = vjp_magic.differentiate(y, x, seed=0)
    code = colour_code(r, "x")
    assert "r." not in code.replace("_.gradients", "").replace("_.jacobian", ""), code
    ns = _run(code, {"torch": torch, "x": x, "y": y, "_": r})
    expected = torch.func.jacrev(f)(x.detach()).reshape(y.numel(), x.numel())
    p, q = expected.nonzero(as_tuple=True)
    if "Ju" in ns:  # by columns: J[p, q] is Ju[colour[q], p]
        got = ns["Ju"][ns["colour"][q], p]
    else:
        got = ns["g"][ns["colour"][p], q]
    torch.testing.assert_close(got, expected[p, q])


def test_mixed_inputs_colour_the_sparse_ones_only():
    x = torch.randn(300, dtype=torch.float64, requires_grad=True)
    b = torch.randn(300, dtype=torch.float64, requires_grad=True)
    w = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    y = cyclic(x) * w + b.roll(1)
    r = vjp_magic.differentiate(y, [x, w, b], seed=0)
    names = list(r.inputs)
    ns = _run(r.code, {"torch": torch, **dict(zip(names, (x, w, b))), "y": y, "r": r})
    full = torch.func.jacrev(lambda x, w, b: cyclic(x) * w + b.roll(1), argnums=(0, 1, 2))(
        x.detach(), w.detach(), b.detach())
    for name, expected in zip(names, full):
        got = ns[f"d_{name}"]
        torch.testing.assert_close(got.to_dense() if got.is_sparse else got, expected)
    assert x.grad is None and w.grad is None and b.grad is None


@pytest.mark.parametrize("n", [3000, 3001])  # 3,001: a closed form with an exception
def test_the_hessian_products_code_keeps_its_colouring_valid(n):
    from vjp_magic.render.hessian_sparse import product_code
    from vjp_magic.render.sparse import layout_of

    def f(x):
        return ((x.roll(1) - x) ** 4).sum() + (x ** 3).sum()

    x = torch.randn(n, dtype=torch.float64, requires_grad=True,
                    generator=torch.Generator().manual_seed(0))
    y = f(x)
    h = vjp_magic.hessian(y, x)
    found = layout_of(sparse_of(h, "x"), x.shape, x.shape)
    ns = _run(product_code(h, "x", found.form), {"torch": torch, "x": x, "y": y, "_": h})
    expected = torch.func.hessian(f)(x.detach())
    p, q = expected.nonzero(as_tuple=True)
    torch.testing.assert_close(ns["Hu"][ns["colour"][q], p], expected[p, q])
