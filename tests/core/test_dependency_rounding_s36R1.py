"""s36 R1: groups of one index in block verdicts, and rounding told from a dependence.

Expected patterns come from torch.autograd.functional.jacobian or from how the function is
built (mathematics); the rounding cases are functions whose cross-derivatives are 0 in
mathematics (a softmax shifted by a constant that cancels)."""
from __future__ import annotations

import pytest
import torch

import vjp_magic
from vjp_magic.core.dependency import full_verdict
from vjp_magic.core.grouptest import firm


# -- groups of one index -------------------------------------------------------------------
def test_a_diagonal_with_one_leak_is_a_band_not_blocks_of_one():
    pattern = torch.eye(12, dtype=torch.bool)
    pattern[1, 0] = True
    found = full_verdict(pattern)
    assert (found.kind, found.offsets, found.witness) == ("band", (-1, 0), (1, 0))


def test_blocks_of_one_holding_half_the_indices_are_no_blocks():
    pattern = torch.block_diag(torch.ones(3, 3), torch.ones(3, 3), torch.eye(6)).bool()
    assert full_verdict(pattern).kind != "block-diagonal"


@pytest.mark.parametrize("sizes", [(1, 3, 3, 3), (3, 3, 3, 1), (4, 1, 1, 4)])
def test_groups_of_one_beside_dense_groups_keep_their_sizes(sizes):
    pattern = torch.block_diag(*[torch.ones(s, s) for s in sizes]).bool()
    found = full_verdict(pattern)
    assert (found.kind, found.blocks, found.witness) == ("block-diagonal", sizes, (0, 1)
                                                         if sizes[0] > 1 else (1, 2))


def test_a_leak_between_groups_with_a_group_of_one_is_the_witness():
    sizes = (3, 1, 4, 4)
    pattern = torch.block_diag(*[torch.ones(s, s) for s in sizes]).bool()
    pattern[10, 0] = True  # the first group read by the last, across the group of one
    found = full_verdict(pattern)
    assert (found.kind, found.blocks, found.witness) == ("block-diagonal", sizes, (10, 0))


def test_a_sparse_group_is_not_cut_into_groups_of_one():
    ring = torch.eye(5, dtype=torch.bool) | torch.eye(5, dtype=torch.bool).roll(1, 0)
    pattern = torch.block_diag(ring, ring, ring).bool()
    found = full_verdict(pattern)
    assert (found.kind, found.blocks) == ("block-diagonal", (5, 5, 5))


# -- rounding ------------------------------------------------------------------------------
def test_firm_tells_a_derivative_from_rounding():
    g = torch.tensor([[[1e-40, 0.0], [3e-16, 0.0], [0.0, 0.0]]], dtype=torch.float64)
    h = torch.tensor([[[1.5e-40, 0.0], [-2e-16, 0.0], [0.0, 0.0]]], dtype=torch.float64)
    hit, bad, rounded = firm(g, h, torch.tensor([1.5], dtype=torch.float64), 1)
    assert hit.tolist() == [[True, False, False]]
    assert rounded.tolist() == [[False, True, False]] and not bool(bad.any())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_softmax_shifted_by_the_batch_max_says_what_it_left_out(dtype):
    def f(x):
        e = (x - x.max()).exp()
        return e / e.sum(1, keepdim=True)
    x = torch.randn(12, 4, dtype=dtype, generator=torch.Generator().manual_seed(3))
    x.requires_grad_()
    d = vjp_magic.dependency(f(x), x, seed=1)
    assert d.kind == "independent" and d.pattern.diagonal().all()
    assert d.note is not None and "rounding" in d.note
    assert ("x.double()" in d.note) == (dtype == torch.float32)


@pytest.mark.parametrize("coupling", [1e-40, 1e-200])
def test_a_tiny_real_coupling_in_float64_is_still_found(coupling):
    def f(x):
        return torch.tanh(x) + coupling * x.roll(3, 0) ** 2
    x = torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x.requires_grad_()
    d = vjp_magic.dependency(f(x), x, seed=0)
    truth = torch.autograd.functional.jacobian(f, x.detach()).ne(0).any(3).any(1)
    assert torch.equal(d.pattern, truth) and d.note is None
    assert d.kind == "band with wrap-around"


def test_a_one_entry_softmax_reads_nothing_in_float32():
    seg = torch.tensor([0, 0, 1, 2, 2, 2])

    def f(x):
        e = x.exp()
        return e / torch.zeros(3, dtype=x.dtype).index_add(0, seg, e)[seg]
    x = (3 * torch.randn(6, generator=torch.Generator().manual_seed(5))).requires_grad_()
    d = vjp_magic.dependency(f(x), x, seed=2)
    truth = torch.autograd.functional.jacobian(f, x.detach()) != 0
    assert torch.equal(d.pattern, truth)
