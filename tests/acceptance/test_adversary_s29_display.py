"""Adversarial review, session 29 (issue 20, display): what a sparse result says in words,
against the numbers it holds. Tests marked ``xfail(strict=True)`` are bugs found in this
review; unmarked ones guard a class of inputs that holds today.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

import vjp_magic


def _stencil_at_zeros():
    """Tridiagonal y = x[i-1] + x[i]³ + x[i+1] at an x whose even entries are 0: the diagonal
    3x[i]² is exactly 0 there, so 1,500 of the 8,998 proved entries are zero derivatives."""
    x = torch.randn(3000, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x[::2] = 0
    x.requires_grad_()
    y = F.pad(x, (1, 0))[:-1] + x ** 3 + F.pad(x, (0, 1))[1:]
    return vjp_magic.differentiate(y, x, seed=0)


def test_the_values_at_zeros_are_right():
    r = _stencil_at_zeros()
    matrix = r.inputs["x"].sparse.matrix
    assert matrix._nnz() == 8998 and int(matrix.values().count_nonzero()) == 7498
    assert "tridiagonal" in r._repr_mimebundle_()["text/markdown"]


def test_the_display_does_not_call_zero_derivatives_nonzero():
    markdown = _stencil_at_zeros()._repr_mimebundle_()["text/markdown"]
    assert "8,998 nonzero derivatives" not in markdown
