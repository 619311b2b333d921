"""The probe check of a compressed Jacobian judges J_sparse itself, whichever way it forms
vᵀ·J_sparse (the colour passes' values for several probes, the CSR terms for one): a nonzero
the matrix drops, or a wrong value, is refused; the right matrix passes. The analysis's own
probe-0 VJP, given as ``known``, is left as it was. Expected values from torch.func.jacrev."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vjp_magic.core.colouring import proved_lattice
from vjp_magic.core.compressed import colour_passes
from vjp_magic.core.indexmaps import proved_pattern
from vjp_magic.core.sparse_check import checked
from vjp_magic.core.sparse_layout import csr_matrix

BUDGET = 2**32


def _stencil(x):
    return F.pad(x, (1, 0))[:-1] * x + x.sin() + F.pad(x, (0, 1))[1:] ** 2


def _setup(dtype):
    x = torch.randn(400, dtype=dtype, requires_grad=True)
    y = _stencil(x)
    pattern = proved_pattern(y, x, BUDGET)
    colours = torch.from_numpy(proved_lattice(pattern.lattice))
    passes = colour_passes(y, x, pattern, colours, BUDGET)
    return x, y, pattern, passes


def _ones_probe(x, y):
    """(v = 1, vᵀJ): every entry of J weighs the same in it, so one probe sees any change."""
    v = torch.ones_like(y)
    return v, torch.autograd.grad(y, x, v, retain_graph=True)[0]


@pytest.mark.parametrize("draws", [1, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_dropped_or_wrong_entry_is_refused(draws, dtype):
    x, y, pattern, passes = _setup(dtype)
    known = _ones_probe(x, y) if draws == 1 else None
    expected = torch.func.jacrev(_stencil)(x.detach())
    rows = torch.repeat_interleave(torch.arange(400), pattern.crow.diff())
    torch.testing.assert_close(passes.held, expected[rows, pattern.col])
    right = csr_matrix(pattern.crow, pattern.col, passes.held, pattern.shape)
    assert checked(y, x, right, 7, known, passes, draws=draws)
    for k in (0, 200, passes.held.numel() - 1):  # a pass's value wrong: J_sparse's too
        values = passes.values.clone()
        values.view(-1)[passes.at[k]] += 1.0
        held = values.view(-1)[passes.at]
        wrong = csr_matrix(pattern.crow, pattern.col, held, pattern.shape)
        assert not checked(y, x, wrong, 7, known,
                           passes._replace(values=values, held=held), draws=draws)
    # a pattern without row 200's middle entry (x[200] itself): its pass value is ignored
    k = int(pattern.crow[200]) + 1
    keep = torch.ones(passes.held.numel(), dtype=torch.bool)
    keep[k] = False
    crow = pattern.crow.clone()
    crow[201:] -= 1
    dropped = csr_matrix(crow, pattern.col[keep], passes.held[keep], pattern.shape)
    assert not checked(y, x, dropped, 7, known, draws=draws)
    assert not checked(y, x, dropped, 7, known, passes._replace(
        at=passes.at[keep], held=passes.held[keep], crow=crow), draws=draws)


def test_the_known_probe_is_not_changed():
    x, y, pattern, passes = _setup(torch.float64)
    jacobian = csr_matrix(pattern.crow, pattern.col, passes.held, pattern.shape)
    v = torch.randn(400, dtype=torch.float64)
    (vjp,) = torch.autograd.grad(y, x, v, retain_graph=True)
    before = vjp.clone()
    assert checked(y, x, jacobian, 3, (v, vjp), passes, draws=1)
    assert torch.equal(vjp, before)
    vjp[5] += 1.0  # a wrong known product is refused
    assert not checked(y, x, jacobian, 3, (v, vjp), passes, draws=1)
