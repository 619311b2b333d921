"""A batch of stencils whose points' dense blocks would hold millions of entries (64 rows of
1,000: 1,000 components per point, 64·10⁶ block entries) takes its values from the colours of
its proved pattern (3 backward passes, whatever the components), and keeps its points: the
pairing, r.derivatives shaped as a point structure's (components + input shape, sparse COO),
the sparse Jacobian, the coloured gradient vectors.

Expected values: the stencil's own derivatives written from mathematics (∂y[b, i]/∂x[b, i] =
3·x[b, i]², 1 for the neighbours i ± 1 in the same row, 0 elsewhere), or torch.func.jacrev at
small sizes, where POINTS_DENSE_ENTRIES is lowered so that they take the same path. Passes are
counted at autograd's engine (pass_counter)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import jacrev

import vjp_magic
from pass_counter import counted


def _rows_stencil(t):
    return F.pad(t, (1, 0))[:, :-1] + t ** 3 + F.pad(t, (0, 1))[:, 1:]


def _periodic(t):
    return t.roll(1, 1) - 2 * t.sin() + t.roll(-1, 1)


def _laplacian(t):  # (B, H, W): the 5-point stencil of each image, times the image
    p = F.pad(t, (1, 1, 1, 1))
    return (p[:, 2:, 1:-1] + p[:, :-2, 1:-1] + p[:, 1:-1, 2:] + p[:, 1:-1, :-2] - 4 * t) * t


_W = torch.randn(3, 2, 3, generator=torch.Generator().manual_seed(7), dtype=torch.float64)


def _conv(t):  # (B, C, L): a width-3 convolution over each sample's channels
    return F.conv1d(t.tanh(), _W.to(t.dtype), padding=1)


def _expected_csr_entries(x):
    """(rows, columns, values) of J (flattened row-major), from the formula."""
    B, n = x.shape
    flat = torch.arange(B * n).reshape(B, n)
    rows = [flat.reshape(-1), flat[:, 1:].reshape(-1), flat[:, :-1].reshape(-1)]
    cols = [flat.reshape(-1), flat[:, :-1].reshape(-1), flat[:, 1:].reshape(-1)]
    vals = [3 * x.detach().reshape(-1) ** 2, torch.ones(B * (n - 1), dtype=x.dtype),
            torch.ones(B * (n - 1), dtype=x.dtype)]
    return torch.cat(rows), torch.cat(cols), torch.cat(vals)


def _at_points(jacobian: torch.Tensor) -> torch.Tensor:
    """A (B, *rest) → (B, *rest) Jacobian's entries within each batch row, as a point
    structure holds them: [component..., b, input index...] = ∂y[b, component]/∂x[b, ...]."""
    B = jacobian.shape[0]
    rest = jacobian.dim() // 2 - 1
    ranged = torch.arange(B)
    within = jacobian[(ranged, Ellipsis, ranged) + (slice(None),) * rest]  # (B, *comp, *rest)
    return within.movedim(0, rest)  # (*comp, B, *in_rest)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_large_batch_of_stencils_costs_its_colours_and_keeps_its_points(dtype):
    torch.manual_seed(0)
    x = torch.randn(64, 1000, dtype=dtype, requires_grad=True)
    y = _rows_stencil(x)
    result, passes = counted(lambda: vjp_magic.differentiate(y, x, seed=1))
    sparse = result.inputs["x"].sparse
    assert sparse is not None and sparse.count == 3
    assert passes <= 6  # the colours and their checks, not 1,000 components
    assert result.point_axes["x"] == ((0, 0),)  # the rows stay points
    csr = result.jacobian("x", layout=torch.sparse_csr)
    assert csr.shape == (64_000, 64_000)
    rows, cols, vals = _expected_csr_entries(x)
    got = csr.to_sparse_coo().coalesce()
    want = torch.sparse_coo_tensor(torch.stack([rows, cols]), vals, csr.shape,
                                   check_invariants=True).coalesce()
    assert torch.equal(got.indices(), want.indices())  # these entries and no other
    torch.testing.assert_close(got.values(), want.values())
    d = result.derivatives["x"]  # [i, b, j] = ∂y[b, i]/∂x[b, j]: as for any point structure
    assert d.layout == torch.sparse_coo and d.shape == (1000, 64, 1000)
    i = torch.tensor([0, 1, 999, 500, 500, 500])
    b = torch.tensor([0, 5, 63, 7, 7, 7])
    j = torch.tensor([0, 0, 998, 499, 500, 501])
    dense_at = d.to_dense()[i, b, j]  # 256 MB at float32: read a few entries
    want_at = torch.stack([3 * x[0, 0] ** 2, torch.tensor(1.0, dtype=dtype), torch.tensor(
        1.0, dtype=dtype), torch.tensor(1.0, dtype=dtype), 3 * x[7, 500] ** 2,
        torch.tensor(1.0, dtype=dtype)]).detach()
    torch.testing.assert_close(dense_at, want_at)
    vectors = list(result.gradients["x"])  # the gradient vectors cover every entry once
    assert len(vectors) == 3 and all(v.shape == y.shape for v in vectors)
    assert torch.equal(sum(vectors), torch.ones_like(y))


def test_the_users_state_is_as_a_plain_run_leaves_it():
    """x.grad, the RNG, the graph (backward still runs) and no hook left behind."""
    torch.manual_seed(0)
    x = torch.randn(64, 1000, requires_grad=True)
    x.grad = torch.full_like(x, 7.0)
    y = _rows_stencil(x)
    state = torch.get_rng_state()
    result = vjp_magic.differentiate(y, x, seed=1)
    assert result.inputs["x"].sparse is not None and result.point_axes["x"] == ((0, 0),)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(x.grad, torch.full_like(x, 7.0))
    assert not x._backward_hooks and not getattr(y.grad_fn, "_forward_hooks", None)
    y.backward(torch.ones_like(y))  # the graph was kept; the user's backward adds as usual
    want = 7.0 + 3 * x.detach() ** 2 + 2  # column j: y[j] and its two neighbours read x[j]
    want[:, 0] -= 1
    want[:, -1] -= 1
    torch.testing.assert_close(x.grad, want)


_SMALL = [(_rows_stencil, (8, 40), 3), (_periodic, (8, 40), 4), (_laplacian, (6, 8, 9), 5),
          (_conv, (6, 2, 30), 9)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("f, shape, colours", _SMALL,
                         ids=["tridiagonal", "periodic", "5-point", "conv1d"])
def test_small_batches_on_the_same_path_equal_jacrev(monkeypatch, f, shape, colours, dtype):
    """The coloured path with points, forced at small sizes: the full Jacobian, the sparse
    one and the point-shaped derivatives equal jacrev's, in the colours' count of passes."""
    monkeypatch.setattr("vjp_magic.core.sparse_choice.POINTS_DENSE_ENTRIES", 0)
    torch.manual_seed(0)
    x = torch.randn(*shape, dtype=dtype, requires_grad=True)
    y = f(x)
    result, passes = counted(lambda: vjp_magic.differentiate(y, x, seed=1, exact_up_to=0))
    want = jacrev(f)(x.detach())
    sparse = result.inputs["x"].sparse
    assert sparse is not None and sparse.count == colours
    assert result.point_axes["x"] == ((0, 0),)
    # the colours and the probes, not one per component (roll: the first candidate, every
    # entry a point, costs a pass, a probe and 4 rows before the graph's pattern is read)
    assert passes <= colours + 6
    torch.testing.assert_close(result.jacobian("x"), want)
    torch.testing.assert_close(
        result.jacobian("x", layout=torch.sparse_csr).to_dense(), want.reshape(y.numel(), -1))
    d = result.derivatives["x"]
    assert d.layout == torch.sparse_coo
    torch.testing.assert_close(d.to_dense(), _at_points(want))


def test_the_code_snippet_builds_the_derivatives_as_r_holds_them(monkeypatch):
    """r.code: the coloured loop, then d_x in the point structure's shape."""
    monkeypatch.setattr("vjp_magic.core.sparse_choice.POINTS_DENSE_ENTRIES", 0)
    torch.manual_seed(0)
    x = torch.randn(6, 50, dtype=torch.float64, requires_grad=True)
    y = _rows_stencil(x)
    result = vjp_magic.differentiate(y, x, seed=1, exact_up_to=0)
    assert result.inputs["x"].sparse is not None
    scope = {"torch": torch, "x": x, "y": y, "r": result}
    exec(result.code, scope)
    made = scope["d_x"]
    assert made.shape == (50, 6, 50)
    want = _at_points(jacrev(_rows_stencil)(x.detach()))
    torch.testing.assert_close(made.to_dense(), want)
    assert x.grad is None
