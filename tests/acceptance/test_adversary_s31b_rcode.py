"""Adversary s31b: r.code of a coloured result runs as pasted and equals torch.func.jacrev,
whatever the inputs are called (names the helpers use: colour, g, vs, u2, d_x, p, q, c, v, F),
with several inputs, a 2-D output, columns (forward mode), float32 and wrap-around stencils."""
from __future__ import annotations

import re

import pytest
import torch

import vjp_magic
from vjp_magic.render.sparse import sparse_of


def _run(code: str, namespace: dict) -> dict:
    exec(compile(code, "<r.code>", "exec"), namespace)  # noqa: S102 - r.code is written to run
    return namespace


def _d_names(code: str) -> list[str]:
    """The variables the code's results are assigned to, in order (dense or sparse)."""
    return re.findall(r"^(\w+) = torch\.sparse_coo_tensor", code, flags=re.M)


def cyclic2(a, b):  # two inputs, rows colouring with a wrap
    return a.roll(1) - 2 * a + a.roll(-1) + a ** 3 + b.roll(2) * b


def gather2d(a, b):  # random reads into a 2-D output: coloured by columns
    n = a.numel()
    idx = torch.randint(0, n, (2 * n,), generator=torch.Generator().manual_seed(0))
    return (a[idx] * a[(idx + 7) % n]).reshape(2 * n // 20, 20) + b[idx % b.numel()].reshape(
        2 * n // 20, 20)


NAMES = [("colour", "g"), ("vs", "u2"), ("d_x", "x"), ("p", "q"), ("c", "v"), ("F", "Ju"),
         ("rows", "offset"), ("pattern", "saved_grad")]


def _check(f, shapes, names, dtype, atol=None):
    gen = torch.Generator().manual_seed(3)
    xs = [torch.randn(s, dtype=dtype, generator=gen).requires_grad_() for s in shapes]
    y = f(*xs)
    r = vjp_magic.differentiate(y, xs, names=list(names), seed=0)
    assert any(sparse_of(r, n) is not None for n in names), "expected a coloured result"
    out = "y" if "y" not in names else "out"
    ns = _run(r.code, {"torch": torch, **dict(zip(names, xs)), out: y, "r": r})
    full = torch.func.jacrev(f, argnums=tuple(range(len(xs))))(*[x.detach() for x in xs])
    for name, expected in zip(names, full):
        got = ns[_d_name(r.code, name, ns, names)]
        got = got.to_dense() if got.is_sparse else got
        torch.testing.assert_close(got, expected, atol=atol, rtol=atol and 1e-4)
    assert all(x.grad is None for x in xs)
    return r.code


def _d_name(code: str, name: str, ns: dict, inputs) -> str:
    """d_<name>, or its fresh spelling: the derivative line the code comments name."""
    for candidate in [f"d_{name}"] + [f"d_{name}{k}" for k in range(2, 5)]:
        if candidate in ns and isinstance(ns[candidate], torch.Tensor) \
                and candidate not in inputs:
            return candidate
    raise AssertionError(f"no derivative for {name}: {_d_names(code)}")


@pytest.mark.parametrize("names", NAMES, ids="-".join)
def test_rows_code_with_helper_named_inputs(names):
    _check(cyclic2, [(400,), (400,)], names, torch.float64)


@pytest.mark.parametrize("names", NAMES[:4], ids="-".join)
def test_columns_code_with_a_2d_output_and_helper_named_inputs(names):
    _check(gather2d, [(300,), (50,)], names, torch.float64)


def test_float32_columns_and_rows():
    _check(gather2d, [(300,), (50,)], ("a", "b"), torch.float32, atol=1e-4)
    _check(cyclic2, [(401,), (401,)], ("a", "b"), torch.float32, atol=1e-4)


def gather_by(seed):
    def f(x):
        n = x.numel()
        idx = torch.randint(0, n, (2 * n,), generator=torch.Generator().manual_seed(seed))
        return x[idx] * x[(idx + 7) % n]
    return f


def test_columns_code_with_helper_named_inputs():
    """gather 1-D (the case r.code's own tests colour by columns), inputs named u/Ju."""
    f = gather_by(0)
    code = _check(lambda u, Ju: f(u) + Ju.roll(1).repeat(2), [(300,), (300,)], ("u", "Ju"),
                  torch.float64)
    assert "forward-mode" in code, code


def test_r_code_of_differentiate_does_not_read_an_earlier_result():
    x = torch.randn(300, dtype=torch.float64, requires_grad=True)
    earlier = vjp_magic.differentiate(gather_by(1)(x), x, seed=0)  # what _ holds
    f = gather_by(0)
    y = f(x)
    r = vjp_magic.differentiate(y, x, seed=0)
    assert sparse_of(r, "x") is not None
    try:
        ns = _run(r.code, {"torch": torch, "x": x, "y": y, "r": r, "_": earlier})
    except Exception as error:  # noqa: BLE001 - a crash is the finding too
        raise AssertionError(f"r.code failed: {error!r}") from error
    torch.testing.assert_close(ns["d_x"].to_dense(), torch.func.jacrev(f)(x.detach()))


def test_r_code_of_differentiate_runs_in_a_script():
    x = torch.randn(300, dtype=torch.float64, requires_grad=True)
    f = gather_by(0)
    y = f(x)
    r = vjp_magic.differentiate(y, x, seed=0)
    ns = _run(r.code, {"torch": torch, "x": x, "y": y, "r": r})
    torch.testing.assert_close(ns["d_x"].to_dense(), torch.func.jacrev(f)(x.detach()))
