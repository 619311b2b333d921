"""Every vectorised backward checked before it is trusted (core/checked_batches.py), a missing
double backward taking the path without one (core/double_backward.py), and patterns of no
row or no column (s34, T8: G12's trust findings as classes).

PyTorch batches ``_cdist_backward`` wrongly under ``vmap`` (every vector gets the first one's
answer), and ``_cdist_backward``, ``_pdist_backward`` and ``_embedding_bag_backward`` have no
derivative (``NotImplementedError``). Expected values: plain ``torch.autograd.functional``
(one backward per output entry) or mathematics.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import vjp_magic
from vjp_magic.core import checked_batches, derivatives
from vjp_magic.core.derivatives import Batching
from vjp_magic.core.pattern import observed_pattern


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _distances(rows: int = 5, points: int = 3):
    c = torch.randn(points, 3, dtype=torch.float64, generator=_generator(1))
    x = torch.randn(rows, 3, dtype=torch.float64, generator=_generator(0)).requires_grad_()
    return x, c


def test_a_wrongly_batched_backward_is_caught_and_computed_plain():
    x, c = _distances()
    y = torch.cdist(x, c)
    vectors = torch.randn((6,) + tuple(y.shape), dtype=y.dtype, generator=_generator(2))
    expected = torch.stack([torch.autograd.grad(y, x, v, retain_graph=True)[0]
                            for v in vectors])
    log = Batching()
    (got,) = checked_batches.checked_batch(y, [x], vectors, log=log)
    torch.testing.assert_close(got, expected)
    assert not log.methods  # the rest of that computation: plain passes


def test_a_rightly_batched_backward_stays_vectorised():
    x = torch.randn(5, 3, dtype=torch.float64, generator=_generator(0)).requires_grad_()
    y = torch.tanh(x) * x.sum()
    vectors = torch.randn((6,) + tuple(y.shape), dtype=y.dtype, generator=_generator(2))
    expected = torch.stack([torch.autograd.grad(y, x, v, retain_graph=True)[0]
                            for v in vectors])
    log = Batching()
    (got,) = checked_batches.checked_batch(y, [x], vectors, log=log)
    torch.testing.assert_close(got, expected)
    assert log.vectorised and log.methods


def test_checked_components_recompute_a_wrong_chunk():
    x, c = _distances(rows=6, points=4)
    y = torch.cdist(x, c).reshape(-1)
    expected = torch.autograd.functional.jacobian(lambda t: torch.cdist(t, c).reshape(-1),
                                                  x.detach())
    (stacked,) = checked_batches.checked_components(y, [x], (), 2**30)
    torch.testing.assert_close(stacked, expected)


def test_paid_batches_are_checked():
    x, c = _distances(rows=6)
    y = torch.cdist(x, c).reshape(-1)
    vectors = torch.eye(y.numel(), dtype=y.dtype)
    expected = torch.autograd.functional.jacobian(lambda t: torch.cdist(t, c).reshape(-1),
                                                  x.detach())
    (got,) = checked_batches.CheckedBatches()(y, [x], vectors)
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_sparse_jacobian_of_cdist_at_several_sizes(seed):
    x = torch.randn(40, 3, dtype=torch.float64, generator=_generator(5)).requires_grad_()
    c = torch.randn(30, 3, dtype=torch.float64, generator=_generator(6))
    expected = torch.autograd.functional.jacobian(lambda t: torch.cdist(t, c), x.detach())
    got = vjp_magic.sparse_jacobian(torch.cdist(x, c), x, seed=seed).to_dense()
    torch.testing.assert_close(got, expected.reshape(1200, 120))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dependency_of_cdist_rows_is_per_row(seed):
    x = torch.randn(40, 3, dtype=torch.float64, generator=_generator(5)).requires_grad_()
    c = torch.randn(30, 3, dtype=torch.float64, generator=_generator(6))
    d = vjp_magic.dependency(torch.cdist(x, c), x, 0, 0, seed=seed)
    assert d.pattern.tolist() == torch.eye(40, dtype=torch.bool).tolist()


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_sparse_jacobian_of_pdist_without_double_backward(seed):
    x = torch.randn(4, 3, dtype=torch.float64, generator=_generator(0)).requires_grad_()
    expected = torch.autograd.functional.jacobian(F.pdist, x.detach()).reshape(6, 12)
    got = vjp_magic.sparse_jacobian(F.pdist(x), x, seed=seed).to_dense()
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sparse_jacobian_of_a_max_embedding_bag_without_double_backward(seed):
    w = torch.randn(10, 3, dtype=torch.float64, generator=_generator(2)).requires_grad_()
    idx, offsets = torch.tensor([0, 2, 1, 3, 5, 9, 4, 4]), torch.tensor([0, 2, 4, 6])

    def f(t):
        return F.embedding_bag(idx, t, offsets, mode="max")
    expected = torch.autograd.functional.jacobian(f, w.detach()).reshape(12, 30)
    got = vjp_magic.sparse_jacobian(f(w), w, seed=seed).to_dense()
    torch.testing.assert_close(got, expected)


def test_hessian_through_cdist_is_a_short_message():
    x, c = _distances()
    with pytest.raises(vjp_magic.VJPUsageError, match="no double backward"):
        vjp_magic.hessian(torch.cdist(x, c).sum(), x, seed=0)


def test_column_passes_without_double_backward_fall_back(monkeypatch):
    """Forward mode's pass raising NotImplementedError (not the RuntimeError a
    once_differentiable backward gives): no column pattern, the rows stay."""
    from vjp_magic.core import column_passes

    x, c = _distances()
    y = torch.cdist(x, c).reshape(-1)
    assert column_passes.observed_columns(y, x, 2**30, 0) is None
    assert column_passes.jvps(y, x, torch.arange(x.numel()), 2**30) is None


@pytest.mark.parametrize("m, n", [(0, 5), (5, 0), (0, 0)])
def test_observed_pattern_of_no_rows_or_no_columns_is_empty(m, n):
    x = torch.randn(n, dtype=torch.float64, requires_grad=True)
    y = (x.sum() * torch.ones(m, dtype=torch.float64)) if n else x.new_zeros(m) + x.sum()
    found = observed_pattern(y, x, 2**30, 0)
    assert found is not None and found.shape == (m, n) and found.nnz == 0
    assert found.crow.tolist() == [0] * (m + 1)


def test_batching_methods_are_what_derivatives_tries():
    """The check wraps derivatives.vjp_batch's own vectorised methods (a guard that the
    check sees every vectorised pass: Batching.vectorised is set by them)."""
    x = torch.randn(5, dtype=torch.float64, requires_grad=True)
    log = Batching()
    derivatives.vjp_batch(x * 2, [x], torch.eye(5, dtype=torch.float64), log=log)
    assert log.vectorised


def test_one_side_infinite_never_agrees():
    """An entry infinite in the batched result and finite in the plain pass (or the other way
    round) is a disagreement, whatever the bound (|w|ᵀ|G| is infinite there)."""
    w = torch.tensor([1.0, -2.0], dtype=torch.float64)
    stacked = torch.tensor([[1.0, torch.inf], [2.0, 1.0]], dtype=torch.float64)
    assert not checked_batches._close(stacked, w, torch.tensor([-3.0, 5.0], dtype=torch.float64))
    assert checked_batches._close(stacked, w, torch.tensor([-3.0, torch.inf],
                                                           dtype=torch.float64))


def test_rounding_residue_where_the_batch_is_exactly_zero_agrees():
    """A plain pass may leave rounding residue (far below the largest entry) where the batched
    pass gives exactly 0: no disagreement (the floor is the probe tolerance of the largest)."""
    w = torch.tensor([1.0, 1.0], dtype=torch.float32)
    stacked = torch.tensor([[100.0, 0.0], [1.0, 0.0]], dtype=torch.float32)
    assert checked_batches._close(stacked, w, torch.tensor([101.0, 1e-6]))
    assert not checked_batches._close(stacked, w, torch.tensor([101.0, 1.0]))
