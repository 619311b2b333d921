"""differentiate on a stencil: once the likeliest pairing (points) is rejected and the only
candidate left has no points, the compressed Jacobian is computed at once and the row proposal
reads its rows off it (SparseChoice.row_reader) instead of one one-hot backward per row.
Passes are counted at autograd's engine; expected values from torch.func.jacrev (or
torch.autograd.functional.jacobian around a custom Function)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

import vjp_magic
from pass_counter import counted




def _tridiagonal(x):
    return F.pad(x, (1, 0))[:-1] + x ** 3 + F.pad(x, (0, 1))[1:]


def test_a_stencil_costs_its_colours_and_the_rejected_pairing_only():
    """The pairing with points is refuted by the compressed Jacobian itself (no VJP of its
    own): probe 0 and 3 colours, checked against probe 0 (no pass): 4 in all, whatever n
    (one backward per row read before; 5 with the pairing's own VJP)."""
    x = torch.randn(5000, dtype=torch.float64, requires_grad=True)
    y = _tridiagonal(x)
    result, passes = counted(lambda: vjp_magic.differentiate(y, x, seed=4))
    assert passes == 4
    sparse = result.inputs["x"].sparse
    assert sparse is not None and sparse.count == 3
    expected = torch.func.jacrev(_tridiagonal)(x.detach())
    torch.testing.assert_close(result.derivatives["x"].to_dense(), expected)


def test_a_batch_of_stencils_keeps_its_batch_points():
    """The last candidate pairs the batch axis (points): no early compressed passes; the
    derivatives are the per-batch Jacobians, as jacrev's diagonal blocks."""
    x = torch.randn(4, 300, dtype=torch.float64, requires_grad=True)

    def f(t):
        return F.pad(t, (1, 0))[:, :-1] + t ** 3 + F.pad(t, (0, 1))[:, 1:]

    result = vjp_magic.differentiate(f(x), x, seed=2)
    assert result.inputs["x"].sparse is None
    assert result.inputs["x"].pairing == ((0, 0),)  # the batch axis
    full = torch.func.jacrev(f)(x.detach())  # (4, 300, 4, 300)
    # component i (output axis 1), then the input (b, j): dy[b, i] / dx[b, j]
    expected = torch.stack([full[b, :, b] for b in range(4)], dim=1)
    torch.testing.assert_close(result.derivatives["x"], expected)


def test_a_custom_function_is_not_taken_early_and_still_checked():
    """No proved pattern (a custom Function hides the graph): rows are read by backward
    passes as before, and the result equals jacrev's."""
    class Cube(torch.autograd.Function):
        @staticmethod
        def forward(ctx, t):
            ctx.save_for_backward(t)
            return t ** 3

        @staticmethod
        def backward(ctx, g):
            (t,) = ctx.saved_tensors
            return 3 * t ** 2 * g

    def f(t):
        return F.pad(t, (1, 0))[:-1] + Cube.apply(t) + F.pad(t, (0, 1))[1:]

    x = torch.randn(3000, dtype=torch.float64, requires_grad=True)
    result = vjp_magic.differentiate(f(x), x, seed=5)
    expected = torch.autograd.functional.jacobian(f, x.detach())  # jacrev needs setup_context
    got = result.derivatives["x"]
    torch.testing.assert_close(got.to_dense() if got.is_sparse else got, expected)


def _laplacian(x):
    k = int(round(x.numel() ** 0.5))
    u = x.reshape(k, k)
    p = F.pad(u, (1, 1, 1, 1))
    return (p[:-2, 1:-1] + p[2:, 1:-1] + p[1:-1, :-2] + p[1:-1, 2:] - 4 * u + u ** 3).reshape(-1)


def test_the_laplacian_costs_five_colours_and_the_rejected_pairing():
    x = torch.randn(1600, dtype=torch.float64, requires_grad=True)
    result, passes = counted(lambda: vjp_magic.differentiate(_laplacian(x), x, seed=1))
    assert result.inputs["x"].sparse.count == 5
    assert passes == 6  # probe 0 and 5 colours: the pairing with points refuted by them
    expected = torch.func.jacrev(_laplacian)(x.detach())
    torch.testing.assert_close(result.derivatives["x"].to_dense(), expected)
