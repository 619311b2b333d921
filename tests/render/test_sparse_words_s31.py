"""The sparse display's words hold for every row (issue 20, session 31): read off every nonzero,
never a sample; a stencil with a few rows that read far is said to be one "but for N rows",
each named with what it reads; with more such rows it is only "sparse". The rows that read far
are built here (index_add at chosen rows), so the expected words come from the construction."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import vjp_magic


def said(r) -> str:
    return " ".join(repr(r).split())


def cyclic(x):
    return x.roll(1) - 2 * x + x.roll(-1) + x ** 3


def tridiagonal(x):
    p = F.pad(x, (1, 1))
    return p[:-2] - 2 * p[1:-1] + p[2:] + x ** 3


@pytest.mark.parametrize("f, words", [(cyclic, "cyclic tridiagonal"),
                                      (tridiagonal, "tridiagonal")])
@pytest.mark.parametrize("n, far", [(200_000, {150_001: 7}), (3000, {10: 2000, 2500: 3})])
def test_a_few_far_reads_are_named_beside_the_stencil(f, words, n, far):
    x = torch.linspace(0, 1, n, requires_grad=True)
    rows, cols = torch.tensor(list(far)), torch.tensor(list(far.values()))
    y = f(x).index_add(0, rows, x[cols] * 5)
    text = said(vjp_magic.differentiate(y, x, seed=0))
    rows_word = "row" if len(far) == 1 else "rows"
    assert f"like a {words} one but for {len(far)} {rows_word}: y[i] reads x[i-1], x[i], " \
           "x[i+1]" in text, text[:700]
    for k, (row, col) in enumerate(sorted(far.items())):
        assert f"{'except' if k == 0 else ';'} y[{row}], which also reads x[{col}]" in text
    assert "read off" not in text


def test_many_far_reads_are_only_sparse():
    n = 3000
    x = torch.linspace(0, 1, n, requires_grad=True)
    rows = torch.arange(100, 2000, 100)  # 19 rows read far
    y = cyclic(x).index_add(0, rows, x[rows + 500] * 5)
    text = said(vjp_magic.differentiate(y, x, seed=0))
    assert "is sparse; " in text and "at most 4 a row" in text
    assert "tridiagonal" not in text and "like a" not in text


def test_a_grid_with_one_far_read():
    u = torch.rand(40, 40, requires_grad=True)
    q = F.pad(u, (1, 1, 1, 1))
    lap = q[:-2, 1:-1] + q[2:, 1:-1] + q[1:-1, :-2] + q[1:-1, 2:] - 4 * u + u ** 3
    lap = lap + torch.zeros_like(lap).index_put((torch.tensor([20]), torch.tensor([21])),
                                                u[0, 0:1] * 3)
    text = said(vjp_magic.differentiate(lap, u, seed=0))
    assert "like a 5-point stencil but for 1 row: y[i, j] reads x[i-1, j]" in text, text[:700]
    assert "except y[20,21], which also reads x[0,0]" in text, text[:700]


def test_a_million_rows_are_read_whole_and_said_without_a_sample():
    n = 10 ** 6
    x = torch.linspace(0, 1, n, requires_grad=True)
    y = tridiagonal(x).index_add(0, torch.tensor([n - 7]), x[:1])
    text = said(vjp_magic.differentiate(y, x, seed=0))
    assert f"except y[{n - 7}], which also reads x[0]" in text
    assert "read off" not in text and "rows spread between" not in text


@pytest.mark.parametrize("near", [3, 4])
def test_an_odd_row_names_its_near_reads_too(near):
    """A row that reads far AND just beyond the stencil: "also reads" lists both, in order
    (the near one was left out while only far reads were listed: R1-3)."""
    n = 3000
    x = torch.linspace(0, 1, n, requires_grad=True)
    y = tridiagonal(x).index_add(0, torch.tensor([10, 10]), x[[10 + near, 2000]] * 5)
    text = said(vjp_magic.differentiate(y, x, seed=0))
    assert f"except y[10], which also reads x[{10 + near}], x[2000]" in text, text[:700]
