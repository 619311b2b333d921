"""Where the pairing of a batch axis is rejected, the sentence names the pattern's kind (a
band with its offsets, blocks with their sizes, wrap-around, sparse with nonzeros per row),
not only one witness: the expected kind is read off torch.autograd.functional.jacobian."""
from __future__ import annotations

import pytest
import torch

import vjp_magic


def _plain(r) -> str:
    return " ".join(r._repr_mimebundle_()["text/plain"].split())


def _row_pattern(f, x: torch.Tensor) -> torch.Tensor:
    j = torch.autograd.functional.jacobian(f, x.detach())
    n = x.shape[0]
    return j.reshape(n, -1, n, x[0].numel()).ne(0).any(3).any(1)


def _band(lo: int, hi: int, n: int) -> torch.Tensor:
    return torch.ones(n, n).triu(lo).tril(hi).bool()


def _shift(x: torch.Tensor, k: int) -> torch.Tensor:
    """x[t - k] (0 before the start)."""
    return torch.cat([torch.zeros(k, x.shape[1], dtype=x.dtype), x[:-k]])


CASES = {
    "band −2..0": (lambda x: x.tanh() + 0.3 * _shift(x, 2) + 0.2 * _shift(x, 1),
                   lambda n: _band(-2, 0, n), "a band, offsets −2..0: y[t] reads x[s] for "
                                              "t − 2 ≤ s ≤ t"),
    "wrap": (lambda x: x.tanh() + 0.5 * torch.roll(x, 1, 0),
             lambda n: _band(-1, 0, n) | torch.eye(n).roll(-1, 1).bool(),
             "a band with wrap-around, offsets −1..0 modulo 48"),
    "blocks": (lambda x: x.reshape(6, 8, 3).sum(1, keepdim=True).expand(6, 8, 3)
               .reshape(48, 3) * x,
               lambda n: torch.block_diag(*[torch.ones(8, 8)] * 6).bool(),
               "block-diagonal, 6 blocks of 8"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_the_break_names_the_kind(case):
    f, expected, words = CASES[case]
    torch.manual_seed(0)
    x = torch.randn(48, 3, dtype=torch.float64, requires_grad=True)
    assert torch.equal(_row_pattern(f, x), expected(48))  # the pattern, from torch
    text = _plain(vjp_magic.differentiate(f(x), x, seed=0))
    assert "The rows of y are not independent of the rows of x" in text
    assert f"the pattern is {words}" in text, text[:900]


def test_a_scatter_of_rows_is_sparse_with_its_reads_per_row():
    torch.manual_seed(0)
    perm = torch.tensor([(7 * i) % 48 for i in range(48)])

    def f(x):
        return x.tanh() + 0.5 * x[perm]

    x = torch.randn(48, 3, dtype=torch.float64, requires_grad=True)
    pattern = _row_pattern(f, x)
    per_row = int(pattern.sum(1).max())
    text = _plain(vjp_magic.differentiate(f(x), x, seed=0))
    assert f"the pattern is sparse, at most {per_row} per row" in text, text[:900]


def test_a_single_leaking_row_is_named_not_called_a_band():
    torch.manual_seed(0)

    def f(x):
        return x.tanh() + torch.cat([torch.zeros(5, 3, dtype=x.dtype), x[4:5] * 0.5,
                                     torch.zeros(42, 3, dtype=x.dtype)])

    x = torch.randn(48, 3, dtype=torch.float64, requires_grad=True)
    assert int(_row_pattern(f, x).sum()) == 49  # the diagonal and y[5] ← x[4]
    text = _plain(vjp_magic.differentiate(f(x), x, seed=0))
    assert "only y[5] reads another row of x" in text and "the pattern is" not in text
