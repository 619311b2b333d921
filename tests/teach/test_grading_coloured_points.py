"""Grading a large batch of stencils whose values came from the colours, its points kept
(tests/core/test_sparse_batched_points.py): per-row answers are read as a point structure's,
right or wrong, and the hints teach the coloured passes the display shows. Expected values:
each row's Jacobian by vmap(jacrev) on a batch of one; the wrong answers are built from them
by the mistake named."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import jacrev, vmap

import vjp_magic
from vjp_magic.core.errors import VJPUsageError

B, N = 64, 300  # 300 components × 19,200 entries: over POINTS_DENSE_ENTRIES (4M)


def _stencil(t):
    return F.pad(t, (1, 0))[:, :-1] + t ** 3 + F.pad(t, (0, 1))[:, 1:]


@pytest.fixture(scope="module")
def case():
    torch.manual_seed(0)
    x = torch.randn(B, N, dtype=torch.float64, requires_grad=True)
    blocks = vmap(jacrev(lambda row: _stencil(row[None])[0]))(x.detach())  # (B, N, N)
    return x, blocks


def test_the_result_it_grades_keeps_its_points_and_colours(case):
    x, _ = case
    r = vjp_magic.differentiate(_stencil(x), x, seed=1)
    assert r.point_axes["x"] == ((0, 0),) and r.inputs["x"].sparse.count == 3


def test_a_wrong_diagonal_is_wrong_not_wrong_shape_and_the_hint_teaches_the_colours(case):
    x, blocks = case
    wrong = blocks.clone()
    ranged = torch.arange(N)
    wrong[:, ranged, ranged] /= 3  # x² for (x³)′
    verdict = vjp_magic.check(wrong, _stencil, x)
    assert not verdict.correct and verdict.kind == "wrong", (verdict.kind, verdict.hint)
    assert "one backward per colour" in verdict.hint and "3 colours" in verdict.hint


def test_a_neighbour_from_the_next_row_is_wrong(case):
    """The derivatives as r.derivatives holds them ([i, b, j]), with row b's last entry
    reading row b + 1's first (not a point structure's numbers): wrong."""
    x, blocks = case
    wrong = blocks.permute(1, 0, 2).clone()
    wrong[N - 1, :, 0] = 1.0  # y[b, N-1] does not read x[b, 0]
    verdict = vjp_magic.check(wrong, _stencil, x)
    assert not verdict.correct and verdict.kind == "wrong", (verdict.kind, verdict.hint)


def test_twice_the_derivatives_are_recognised_as_accumulated(case):
    x, blocks = case
    verdict = vjp_magic.check(2 * blocks, _stencil, x)
    assert not verdict.correct and verdict.kind == "accumulated"


def test_the_summed_gradient_is_named_and_the_colours_suggested(case):
    x, blocks = case
    verdict = vjp_magic.check(blocks.sum(1), _stencil, x)  # v = ones: every component summed
    assert not verdict.correct and verdict.kind == "summed"
    assert "one backward per colour" in verdict.hint


def test_dense_blocks_too_large_to_grade_are_refused_with_their_shapes(case, monkeypatch):
    """Past the grading limit the blocks stay sparse: a per-row answer is refused with the
    shapes it would have, never called wrong-shape (G26-1)."""
    monkeypatch.setattr("vjp_magic.teach.sparse_dense.POINTS_DENSE_ENTRIES", 1000)
    x, blocks = case
    with pytest.raises(VJPUsageError, match=r"too many to grade.*\(300, 64, 300\).*"
                                            r"\(64, 300, 300\)"):
        vjp_magic.check(blocks, _stencil, x)
    verdict = vjp_magic.check(blocks[:, :2], _stencil, x)  # another shape: names the right one
    assert verdict.kind == "wrong-shape" and "(300, 64, 300)" in verdict.hint
