"""A batch of stencils large enough that its points' dense blocks would hold millions of
entries (64 rows of 1,000: 1,000 components per point, 64·10⁶ block entries) is computed by
its colours instead: 3 backward passes for the values, however many components a point has.
Small batches keep their points (tests/core/test_sparse_early_rows.py). Expected values are
the stencil's own derivatives, written from mathematics: ∂y[b, i]/∂x[b, i] = 3·x[b, i]², and
1 for the neighbours i ± 1 in the same row; every other entry 0. Passes are counted at
autograd's engine."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import vjp_magic
from pass_counter import counted


def _rows_stencil(t):
    return F.pad(t, (1, 0))[:, :-1] + t ** 3 + F.pad(t, (0, 1))[:, 1:]


def _expected_csr_entries(x):
    """(rows, columns, values) of J (flattened row-major), from the formula."""
    B, n = x.shape
    flat = torch.arange(B * n).reshape(B, n)
    rows = [flat.reshape(-1), flat[:, 1:].reshape(-1), flat[:, :-1].reshape(-1)]
    cols = [flat.reshape(-1), flat[:, :-1].reshape(-1), flat[:, 1:].reshape(-1)]
    vals = [3 * x.detach().reshape(-1) ** 2, torch.ones(B * (n - 1), dtype=x.dtype),
            torch.ones(B * (n - 1), dtype=x.dtype)]
    return torch.cat(rows), torch.cat(cols), torch.cat(vals)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_large_batch_of_stencils_costs_its_colours_not_its_components(dtype):
    torch.manual_seed(0)
    x = torch.randn(64, 1000, dtype=dtype, requires_grad=True)
    y = _rows_stencil(x)
    result, passes = counted(lambda: vjp_magic.differentiate(y, x, seed=1))
    sparse = result.inputs["x"].sparse
    assert sparse is not None and sparse.count == 3
    assert passes <= 6  # the colours and their checks, not 1,000 components
    csr = result.jacobian("x", layout=torch.sparse_csr)
    assert csr.shape == (64_000, 64_000)
    dense_rows = csr.crow_indices().diff()
    assert int(dense_rows.max()) <= 3
    rows, cols, vals = _expected_csr_entries(x)
    got = csr.to_sparse_coo().coalesce()
    want = torch.sparse_coo_tensor(torch.stack([rows, cols]), vals, csr.shape).coalesce()
    assert torch.equal(got.indices(), want.indices())  # these entries and no other
    torch.testing.assert_close(got.values(), want.values())
    # the gradient vectors cover every entry of y exactly once
    vectors = list(result.gradients["x"])
    assert len(vectors) == 3 and all(v.shape == y.shape for v in vectors)
    assert torch.equal(sum(vectors), torch.ones_like(y))
