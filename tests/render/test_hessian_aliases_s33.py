"""One tensor under two names (b = a; ``%hessian ... wrt a b``): its Hessian is computed once,
as first derivatives are (run.replay.distinct/aliases), and shown under both names with the
same numbers (session 33, F2). The count is of a custom backward's calls, the numbers from
torch.autograd.functional.hessian."""
from __future__ import annotations

import torch
from torch.autograd.functional import hessian as reference_hessian

import vjp_magic


class Cube(torch.autograd.Function):
    """x³ with a twice-differentiable backward that counts its calls."""

    calls = 0

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x**3

    @staticmethod
    def backward(ctx, g):
        Cube.calls += 1
        (x,) = ctx.saved_tensors
        return g * 3 * x**2


def _hessian(names):
    a = torch.linspace(0.5, 1.5, 4, dtype=torch.float64, requires_grad=True)
    Cube.calls = 0
    h = vjp_magic.hessian(Cube.apply(a).sum(), {n: a for n in names}, seed=0)
    return a, h, Cube.calls


def test_both_names_get_the_hessian():
    a, h, _ = _hessian(["a", "b"])
    expected = reference_hessian(lambda t: (t**3).sum(), a.detach())
    for name in ("a", "b"):
        torch.testing.assert_close(h.hessian(name), expected)
    text = " ".join(h._repr_mimebundle_()["text/plain"].split())
    assert "With respect to a" in text and "With respect to b" in text


def test_one_tensor_under_two_names_is_differentiated_once():
    *_, once = _hessian(["a"])
    *_, twice = _hessian(["a", "b"])
    assert twice == once
