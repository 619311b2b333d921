"""Custom ``torch.autograd.Function``s, right and wrong, shared by the tests of the replay,
``--gradcheck`` and per-sample gradients: x², x @ w and x·sin x with a backward that may be
wrong, a Function that draws random numbers inside its forward, and a cell defining a
Function that counts its forward's runs; and the hook-counting set-up of the pass guard's
tests (a hook recording its calls in :data:`RUNS`, a graph carrying it)."""
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


class Cube(torch.autograd.Function):
    """x ↦ x³ whose backward calls a helper of the user's own (:func:`cube_grad`): code the
    engine reaches only through the custom backward, which is the user's by design."""

    @staticmethod
    def forward(ctx, t):
        ctx.save_for_backward(t)
        return t ** 3

    @staticmethod
    def backward(ctx, g):
        (t,) = ctx.saved_tensors
        return cube_grad(g, t)


def cube_grad(g, t):
    return 3 * t * t * g


class Jitter(torch.autograd.Function):
    """x ↦ x·u with u drawn inside the forward: the record keeps the generators' states from
    before the call, so a replay in its dtype draws the same u; in another dtype, others."""

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


# -- hooks that count their runs ---------------------------------------------------------------
RUNS: list = []  # every call of record_run (a test clears it before the call it judges)


def record_run(*args):
    """A hook of any kind (tensor, node, module, multi-grad): it records that it ran."""
    RUNS.append(args)


def linspace_x(n: int = 5, dtype=torch.float64) -> torch.Tensor:
    """The leaf the hook tests differentiate: 0.1 … 1, requiring grad."""
    return torch.linspace(0.1, 1, n, dtype=dtype, requires_grad=True)


def hooked(x: torch.Tensor, hook=record_run) -> torch.Tensor:
    """sin(x · 1) with ``hook`` on the intermediate x · 1: a graph of the user's own
    carrying a tensor hook."""
    h = x * 1
    h.register_hook(hook)
    return torch.sin(h)
