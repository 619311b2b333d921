"""hessian.asymmetry: the one measure of |H - Hᵀ| of a dense per-point Hessian and of a sparse
CSR one, both ways: globally (over the largest |entry|) and pair by pair
(|H_ij − H_ji| / (|H_ij| + |H_ji|)). Expected values: worked out by hand from the matrices."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from vjp_magic.core.hessian import asymmetry

H = torch.tensor([[2e8, 1.0], [2.0, 3.0]], dtype=torch.float64)  # a large diagonal, a skew


def _dense(blocks):
    return SimpleNamespace(sparse=None, per_point_shape=tuple(blocks.shape[-1:]),
                           blocks=lambda count: blocks)


def _sparse(matrix):
    return SimpleNamespace(sparse=SimpleNamespace(matrix=matrix.to_sparse_csr()))


@pytest.mark.parametrize("item", [_dense(H), _dense(H[None]), _sparse(H)],
                         ids=["dense", "per-point", "csr"])
def test_the_global_and_the_pairwise_measure(item):
    worst, pairwise = asymmetry(item, 1)
    assert worst == pytest.approx(1 / 2e8)  # |2 - 1| over the largest entry
    assert pairwise == pytest.approx(1 / 3)  # |2 - 1| / (2 + 1)
    assert asymmetry(item, 1, pairwise=False) == (pytest.approx(1 / 2e8), 0.0)


def test_each_point_is_measured_against_its_own_largest_entry():
    blocks = torch.stack([H, torch.tensor([[1.0, 0.5], [0.0, 1.0]], dtype=torch.float64)])
    worst, pairwise = asymmetry(_dense(blocks), 2)
    assert worst == pytest.approx(0.5) and pairwise == pytest.approx(1.0)


@pytest.mark.parametrize("item", [_dense(torch.eye(3)), _sparse(torch.eye(3)),
                                  _sparse(torch.zeros(3, 3)), _dense(torch.ones(1, 1))],
                         ids=["dense", "csr", "empty-csr", "one-entry"])
def test_a_symmetric_hessian_measures_zero(item):
    assert asymmetry(item, 1) == (0.0, 0.0)


def test_an_entry_without_its_mirror_is_as_skewed_as_can_be():
    one_sided = torch.tensor([[1.0, 0.25], [0.0, 1.0]])
    worst, pairwise = asymmetry(_sparse(one_sided), 1)
    assert worst == pytest.approx(0.25) and pairwise == pytest.approx(1.0)
