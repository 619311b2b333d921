"""Custom ``torch.autograd.Function``s, right and wrong, shared by the tests of the replay,
``--gradcheck`` and per-sample gradients: x², x @ w and x·sin x with a backward that may be
wrong, a Function that draws random numbers inside its forward, and a cell defining a
Function that counts its forward's runs."""
from __future__ import annotations

import torch


# -- custom autograd.Functions, right and wrong ---------------------------------------------------
def square(factor: float):
    class Square(torch.autograd.Function):
        """x ↦ x², backward ``factor``·g·x (right when factor is 2)."""

        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x * x

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return factor * g * x

    return Square


def matmul(transposed: bool):
    class MatMul(torch.autograd.Function):
        """x @ w; the backward for x uses w (wrong) instead of wᵀ when ``transposed``."""

        @staticmethod
        def forward(ctx, x, w):
            ctx.save_for_backward(x, w)
            return x @ w

        @staticmethod
        def backward(ctx, g):
            x, w = ctx.saved_tensors
            return g @ (w if transposed else w.T), x.T @ g

    return MatMul


def x_sin(missing: bool):
    class XSin(torch.autograd.Function):
        """x·sin x; the backward forgets the x·cos x term when ``missing``."""

        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x * torch.sin(x)

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return g * (torch.sin(x) if missing else torch.sin(x) + x * torch.cos(x))

    return XSin


class Identity(torch.autograd.Function):
    """y = x through a custom Function: no graph rule (axis pairing or index map) sees
    through it, so structures and patterns behind it are observed, never proved."""

    @staticmethod
    def forward(ctx, t):
        return t.clone()

    @staticmethod
    def backward(ctx, g):
        return g


class Twice(torch.autograd.Function):
    """x ↦ 2x with a right backward: a custom Function the graph's rules cannot read."""

    @staticmethod
    def forward(ctx, x):
        return 2 * x

    @staticmethod
    def backward(ctx, grad):
        return 2 * grad


class Jitter(torch.autograd.Function):
    """x ↦ x·u with u drawn inside the forward: the record keeps no generator state for a
    draw inside a custom Function, so a replay draws other numbers (all but surely)."""

    @staticmethod
    def forward(ctx, x):
        u = torch.rand_like(x)
        ctx.save_for_backward(u)
        return x * u

    @staticmethod
    def backward(ctx, g):
        (u,) = ctx.saved_tensors
        return g * u


COUNTED_SQUARE = """
calls = []
class Sq(torch.autograd.Function):
    generate_vmap_rule = True
    @staticmethod
    def forward(x):
        calls.append(1)
        return x * x
    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])
    @staticmethod
    def backward(ctx, g):
        x, = ctx.saved_tensors
        return 2 * g * x
"""
