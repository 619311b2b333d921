"""Adversarial review, session 31 (issue 20, "Display and teaching"): what a student reads
beneath ``%hessian`` where the Hessian is sparse (Newton's method on a banded Hessian).

Values are checked against the analytic Hessians (x³ summed; Rosenbrock). Tests marked
``xfail(strict=True)`` are findings of this review.
"""
from __future__ import annotations

import pytest
import torch

ROSENBROCK = "(100*(x[1:] - x[:-1]**2)**2 + (1 - x[:-1])**2).sum()"


def _plain(h) -> str:
    return " ".join(h._repr_mimebundle_()["text/plain"].split())


def _rosenbrock_rows(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Those rows of the analytic tridiagonal Hessian, dense (float64)."""
    x = x.detach().double()
    n = x.numel()
    d = torch.zeros(n, dtype=torch.float64)
    d[:-1] += 1200 * x[:-1] ** 2 - 400 * x[1:] + 2
    d[1:] += 200
    off = -400 * x[:-1]  # H[i, i+1] = H[i+1, i]
    out = torch.zeros(len(rows), n, dtype=torch.float64)
    for k, i in enumerate(rows.tolist()):
        out[k, i] = d[i]
        if i + 1 < n:
            out[k, i + 1] = off[i]
        if i > 0:
            out[k, i - 1] = off[i - 1]
    return out


@pytest.fixture
def big(ip, run_ok):
    run_ok("x = torch.linspace(-1, 1, 20_000, requires_grad=True)")
    return ip


def test_the_sparse_hessian_is_right_and_said_in_words(big, run_ok):
    h = run_ok(f"%hessian {ROSENBROCK} wrt x")
    text = _plain(h)
    assert "The Hessian is tridiagonal: 59,998 nonzeros from 3 Hessian-vector products" in text
    csr = h.hessian("x", layout=torch.sparse_csr)
    x = big.user_ns["x"]
    rows = torch.arange(0, 20_000, 997)  # a spread of rows, against the analytic Hessian
    dense_rows = torch.stack([csr[int(i)].to_dense() for i in rows]).double()
    expected = _rosenbrock_rows(x, rows)
    torch.testing.assert_close(dense_rows, expected, rtol=1e-4, atol=1e-2)
    assert x.grad is None


def test_the_small_hessian_shows_its_numbers(ip, run_ok):
    run_ok("x = torch.linspace(-1, 1, 1000, requires_grad=True)")
    text = _plain(run_ok("%hessian (x**3).sum() wrt x"))
    assert "-6" in text  # 6·x[0] at x[0] = -1


def test_the_sparse_hessian_shows_some_of_its_numbers(big, run_ok):
    text = _plain(run_ok("%hessian (x**3).sum() wrt x"))
    assert "-6" in text, text


def test_the_sparse_hessian_says_where_its_values_are(big, run_ok):
    text = _plain(run_ok(f"%hessian {ROSENBROCK} wrt x"))
    assert "sparse_csr" in text or ".derivatives[" in text, text
