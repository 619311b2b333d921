"""Column colouring with forward-mode passes (core/column_passes.py): values against
torch.func.jacrev on maps with a dense column, the choice between rows and columns, graphs
without double backward, and couplings an OBSERVED pattern misses."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from custom_functions import Twice
from vjp_magic.core.colouring import colour_rows
from vjp_magic.core.column_passes import (
    COST_RATIO, Mode, column_attempt, column_colours, jvps, observed_columns, prefer_columns,
)
from vjp_magic.core.indexmaps import proved_pattern
from vjp_magic.core.pairing import Evidence
from vjp_magic.core.pattern import Pattern, observed_pattern
from vjp_magic.core.sparse_layout import csr_rows, dense_to_csr

BUDGET = 2 ** 30


def with_x0(x):  # every output reads x[0]: one dense column, rows of 2 or 3
    return torch.sin(x) * x.reshape(-1)[0] + x ** 2


def stencil_and_x0(x):  # tridiagonal plus a dense column
    return F.pad(x, (1, 1))[2:] - 2 * x + F.pad(x, (1, 1))[:-2] + x[0] * torch.cos(x)


def banded_matmul_x0(x):  # y = A x + x[0]·ones, A banded (as a width-5 convolution)
    kernel = torch.arange(1.0, 6.0, dtype=x.dtype).reshape(1, 1, 5)
    return F.conv1d(x.reshape(1, 1, -1), kernel, padding=2).reshape(-1) + x[0]


def grid_with_corner(x):  # 2-D: a 5-point stencil plus the corner entry everywhere
    inner = F.pad(x, (1, 1, 1, 1))
    lap = inner[1:-1, 2:] + inner[1:-1, :-2] + inner[2:, 1:-1] + inner[:-2, 1:-1] - 4 * x
    return lap + torch.tanh(x[0, 0]) * x


def tridiagonal(x):
    return F.pad(x, (1, 1))[2:] + x ** 3 + F.pad(x, (1, 1))[:-2]


def _pattern_of(dense: torch.Tensor, evidence=Evidence.OBSERVED) -> Pattern:
    csr = dense_to_csr((dense != 0).to(torch.float64))
    return Pattern(csr.crow_indices(), csr.col_indices(), tuple(dense.shape), 0, evidence)


def _columns(f, x, seed=0):
    """column_attempt on the graph's proved pattern; the expected J from jacrev."""
    x = x.requires_grad_()
    y = f(x)
    pattern = proved_pattern(y, x, BUDGET)
    assert pattern is not None
    colours = column_colours(pattern, None, y.shape, x.shape)
    assert colours is not None
    sparse = column_attempt(y, x, pattern, colours, BUDGET, seed)
    expected = torch.func.jacrev(f)(x.detach()).reshape(y.numel(), x.numel())
    return sparse, expected


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("f, shape", [
    (with_x0, (300,)), (with_x0, (12, 25)), (stencil_and_x0, (257,)),
    (banded_matmul_x0, (200,)), (grid_with_corner, (9, 13)),
])
def test_values_equal_jacrev(f, shape, dtype):
    torch.manual_seed(0)
    sparse, expected = _columns(f, torch.randn(shape, dtype=dtype))
    assert sparse is not None and sparse.mode == Mode.COLUMNS == "columns"
    assert sparse.colours.shape == (expected.shape[1],)  # one colour per input entry
    assert sparse.count <= 6  # the widest row reads at most 6 entries
    torch.testing.assert_close(sparse.matrix.to_dense(), expected)


def test_columns_of_one_colour_share_no_row():
    x = torch.randn(400, dtype=torch.float64, requires_grad=True)
    sparse, expected = _columns(stencil_and_x0, x)
    on = (expected != 0).to(torch.int64)
    one_hot = F.one_hot(sparse.colours, sparse.count)  # n × count
    assert int((on @ one_hot).max()) == 1  # each row meets each colour at most once


def test_decision_columns_where_rows_need_many_more_colours():
    x = torch.randn(500, dtype=torch.float64, requires_grad=True)
    y = stencil_and_x0(x)
    pattern = proved_pattern(y, x, BUDGET)
    rows = colour_rows(pattern.crow.numpy(), pattern.col.numpy(), 500)
    row_count = None if rows is None else int(rows.max()) + 1
    assert row_count is None or row_count >= 500  # x[0] is read by every row
    colours = column_colours(pattern, row_count, y.shape, x.shape)
    assert colours is not None and int(colours.max()) + 1 == 4  # x[0], x[i - 1], x[i], x[i + 1]


def test_decision_rows_for_a_tridiagonal():
    x = torch.randn(500, dtype=torch.float64, requires_grad=True)
    y = tridiagonal(x)
    pattern = proved_pattern(y, x, BUDGET)
    rows = colour_rows(pattern.crow.numpy(), pattern.col.numpy(), 500)
    assert int(rows.max()) + 1 == 3
    assert column_colours(pattern, 3, y.shape, x.shape) is None


def test_prefer_columns_by_the_cost_ratio():
    assert prefer_columns(None, 4)  # rows refused: columns if they colour at all
    assert not prefer_columns(None, None) and not prefer_columns(3, None)
    assert prefer_columns(2 * COST_RATIO + 1, 2)
    assert not prefer_columns(2 * COST_RATIO, 2)


def test_columns_that_do_not_pay_within_max_colours_are_refused():
    x = torch.randn(200, dtype=torch.float64, requires_grad=True)
    y = stencil_and_x0(x)
    pattern = proved_pattern(y, x, BUDGET)
    assert column_colours(pattern, None, max_colours=4 * COST_RATIO - 1) is None
    assert column_colours(pattern, None, max_colours=4 * COST_RATIO) is not None


class NoDoubleBackward(torch.autograd.Function):
    """x ↦ 2x, its backward marked once_differentiable: no double backward."""

    @staticmethod
    def forward(ctx, x):
        return 2 * x

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        return 2 * grad


class NumpyBackward(torch.autograd.Function):
    """x ↦ 2x, its backward through numpy: a double backward that loses v (no error)."""

    @staticmethod
    def forward(ctx, x):
        return 2 * x

    @staticmethod
    def backward(ctx, grad):
        return torch.from_numpy(2 * grad.detach().numpy())


def test_no_double_backward_gives_none():
    x = torch.randn(100, dtype=torch.float64, requires_grad=True)
    y = NoDoubleBackward.apply(x) + x[0]
    dense = torch.func.jacrev(lambda t: 2 * t + t[0])(x.detach())
    pattern = _pattern_of(dense)
    colours = column_colours(pattern, None)
    assert jvps(y, x, torch.from_numpy(colours), BUDGET) is None
    assert column_attempt(y, x, pattern, colours, BUDGET, 0) is None


def test_numpy_backward_is_never_silently_wrong():
    x = torch.randn(100, dtype=torch.float64, requires_grad=True)
    y = NumpyBackward.apply(x) + x[0] * torch.sin(x)
    dense = torch.func.jacrev(lambda t: 2 * t + t[0] * torch.sin(t))(x.detach())
    pattern = _pattern_of(dense)
    sparse = column_attempt(y, x, pattern, column_colours(pattern, None), BUDGET, 0)
    assert sparse is None or torch.equal(sparse.matrix.to_dense(), dense)


def test_custom_function_with_double_backward_works():
    x = torch.randn(100, dtype=torch.float64, requires_grad=True)
    y = Twice.apply(x) * x[0]
    dense = torch.func.jacrev(lambda t: 2 * t * t[0])(x.detach())
    pattern = _pattern_of(dense)
    sparse = column_attempt(y, x, pattern, column_colours(pattern, None), BUDGET, 0)
    assert sparse is not None
    torch.testing.assert_close(sparse.matrix.to_dense(), dense)


@pytest.mark.parametrize("size", [1e-3, 1e-9])
def test_coupling_missing_from_an_observed_pattern_is_caught(size):
    """The pattern of stencil_and_x0, the values of the same map plus ``size``·x[7] in row 40:
    the passes put that derivative into another entry or drop it; the checks refuse."""
    x = torch.randn(120, dtype=torch.float64, requires_grad=True)
    pattern = _pattern_of(torch.func.jacrev(stencil_and_x0)(x.detach()))
    mask = torch.zeros(120, dtype=torch.float64)
    mask[40] = size
    y = stencil_and_x0(x) + mask * x[7]
    colours = column_colours(pattern, None)
    for seed in range(3):
        assert column_attempt(y, x, pattern, colours, BUDGET, seed) is None


def test_an_observed_pattern_that_holds_is_accepted():
    x = torch.randn(120, dtype=torch.float64, requires_grad=True)
    dense = torch.func.jacrev(stencil_and_x0)(x.detach())
    pattern = _pattern_of(dense)
    y = stencil_and_x0(x)
    sparse = column_attempt(y, x, pattern, column_colours(pattern, None), BUDGET, 1)
    assert sparse is not None and sparse.evidence == "observed"
    torch.testing.assert_close(sparse.matrix.to_dense(), dense)


def test_x_grad_untouched_and_many_colours_batched():
    """More colours than one loop takes (a dense block of 80 columns every row reads)."""
    x = torch.randn(200, dtype=torch.float64, requires_grad=True)

    def f(t):
        return t[:80].sum() * t + t ** 2

    y = f(x)
    dense = torch.func.jacrev(f)(x.detach())
    pattern = _pattern_of(dense)
    colours = column_colours(pattern, None)
    assert int(colours.max()) + 1 > 64
    sparse = column_attempt(y, x, pattern, colours, BUDGET, 2)
    assert sparse is not None and x.grad is None
    torch.testing.assert_close(sparse.matrix.to_dense(), dense)


# -- the pattern observed by columns ---------------------------------------------------------
def twice_x0(t, custom=True):  # a dense column behind a custom Function (no proved pattern)
    doubled = Twice.apply(t) if custom else 2 * t
    return doubled * t[0] + F.pad(t, (1, 1))[2:]


def several_dense(t, custom=True):  # x[0..4], x[7] and the last three read by every row
    doubled = Twice.apply(t) if custom else 2 * t
    return doubled ** 2 + F.pad(t, (1, 1))[2:] + t[:5].sum() + t[7] * t[-3:].mean()


@pytest.mark.parametrize("f", [twice_x0, several_dense])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_observed_columns_finds_dense_columns_the_rows_cannot(f, dtype):
    x = torch.randn(1500, dtype=dtype, requires_grad=True)
    y = f(x)
    assert proved_pattern(y, x, BUDGET) is None  # the custom Function hides it
    assert observed_pattern(y, x, BUDGET, 0) is None  # the row probes give up
    expected = torch.func.jacrev(lambda t: f(t, custom=False))(x.detach())
    pattern = observed_columns(y, x, BUDGET, 0)
    assert pattern is not None and pattern.evidence == "observed" and pattern.probes < 100
    got = torch.zeros(expected.shape, dtype=torch.bool)
    got[csr_rows(pattern.crow), pattern.col] = True
    assert torch.equal(got, expected != 0)
    sparse = column_attempt(y, x, pattern, column_colours(pattern, None), BUDGET, 0)
    assert sparse is not None and sparse.count == int((expected != 0).sum(1).max())
    torch.testing.assert_close(sparse.matrix.to_dense(), expected)


def test_observed_columns_refuses_dense_rows_and_no_double_backward():
    x = torch.randn(400, dtype=torch.float64, requires_grad=True)
    assert observed_columns(torch.softmax(x, 0) * x[0], x, BUDGET, 0) is None
    y = NoDoubleBackward.apply(x) * x[0]
    assert observed_columns(y, x, BUDGET, 0) is None


def test_dense_columns_peeled_then_the_rest_coloured_on_its_lattice():
    from vjp_magic.core.column_passes import peeled_colours

    x = torch.randn(3000, dtype=torch.float64, requires_grad=True)
    y = several_dense(x, custom=False)
    pattern = proved_pattern(y, x, BUDGET)
    colours = peeled_colours(pattern.crow.numpy(), pattern.col.numpy(), 3000)
    dense = [0, 1, 2, 3, 4, 7, 2997, 2998, 2999]
    assert sorted(colours[dense].tolist()) == list(range(9))  # one colour each
    assert int(colours.max()) + 1 == 11  # and two for x[i], x[i + 1]: the widest row's 11
    on = torch.zeros(3000, 3000, dtype=torch.float64)
    on[csr_rows(pattern.crow), pattern.col] = 1
    assert int((on @ F.one_hot(torch.from_numpy(colours)).double()).max()) == 1


def test_dense_columns_from_a_few_sampled_rows():
    from vjp_magic.core.column_passes import dense_columns

    x = torch.randn(2000, dtype=torch.float64, requires_grad=True)
    assert dense_columns(stencil_and_x0(x), x, 0).tolist() == [0]
    assert sorted(dense_columns(several_dense(x, custom=False), x, 0).tolist()) == \
        [0, 1, 2, 3, 4, 7, 1997, 1998, 1999]
    assert dense_columns(tridiagonal(x), x, 0).numel() == 0
    assert dense_columns(torch.softmax(x, 0), x, 0) is None  # a dense row


def test_a_whole_jacobian_kept_by_columns():
    from vjp_magic.core.column_passes import kept_by_columns

    x = torch.randn(300, dtype=torch.float64)
    matrix = dense_to_csr(torch.func.jacrev(stencil_and_x0)(x))
    kept = kept_by_columns(matrix, (300,), (300,), Evidence.OBSERVED, 300, max_colours=75)
    assert kept is not None and kept.mode == "columns" and kept.count == 4
    assert kept.matrix is matrix and kept.pattern_passes == 300
    assert torch.equal(kept.output_colours, torch.arange(300))  # r.gradients: the one-hot rows
    tridiagonal_matrix = dense_to_csr(torch.func.jacrev(tridiagonal)(x))
    assert kept_by_columns(tridiagonal_matrix, (300,), (300,), Evidence.OBSERVED, 300,
                           row_count=3) is None  # rows: 3 colours already


def test_computed_by_columns_only_where_they_pay():
    from vjp_magic.core.column_passes import computed_by_columns

    x = torch.randn(400, dtype=torch.float64, requires_grad=True)
    y = stencil_and_x0(x)
    pattern = proved_pattern(y, x, BUDGET)
    sparse = computed_by_columns(y, x, pattern, None, BUDGET, 0, max_colours=100)
    assert sparse is not None and sparse.mode == "columns" and sparse.count == 4
    torch.testing.assert_close(sparse.matrix.to_dense(),
                               torch.func.jacrev(stencil_and_x0)(x.detach()))
    assert computed_by_columns(y, x, pattern, 8, BUDGET, 0) is None  # 8 rows: 4 · 2 ≥ 8
    assert computed_by_columns(y, x, pattern, 9, BUDGET, 0) is not None
