"""Adversarial acceptance review, session 38 (G24), of issue 20: sparse Jacobians and Hessians.

Leads tried beyond earlier reviews: shifts whose amount is read from x into Python, wrap-around
bands in the dependency verdicts, padding modes in 1-D and 3-D, strided / dilated / grouped
convolutions, as_strided windows, scatter_reduce, x-dependent selections (max, maximum, sort,
kthvalue, quantile), float16 / bfloat16, non-contiguous and expanded leaves, two inputs, the
user's state (rng, .grad, retain_grad) on every sparse entry point.

Expected values: ``torch.autograd.functional.jacobian`` / ``torch.func`` on small problems, or
the mathematics of the map (a shift by k moves the nonzero of row 0 to column −k mod n).
Strict xfails are findings (reasons say what is wrong); unmarked tests held.
"""
from __future__ import annotations

import pytest
import torch
from sparse_cells_s31 import bundle


N = 300
_STEERED = ("x = torch.linspace(-1, 1, {n}, dtype=torch.float64)\n"
            "x = (x * (x - 0.3)).requires_grad_()\n"  # argmax at index 0 here
            "k = int(x.argmax())\n"
            "y = x * x.roll(k + 1)\n")


def _flat(text: str) -> str:
    return " ".join(text.split())


# -- G24-1: a shift read from x into Python, then "proved for every x" -----------------------

def test_the_shift_read_from_x_changes_the_pattern_at_another_x():
    """The counterexample the claim must survive: at x' (argmax elsewhere) row 0 reads another
    column, so no pattern of this cell holds for every x."""
    def cell(t):
        return t * t.roll(int(t.argmax()) + 1)

    x = torch.linspace(-1, 1, N, dtype=torch.float64)
    x = x * (x - 0.3)
    other = x.flip(0)
    here = torch.autograd.functional.jacobian(cell, x)[0].nonzero().flatten().tolist()
    there = torch.autograd.functional.jacobian(cell, other)[0].nonzero().flatten().tolist()
    assert here != there, (here, there)


@pytest.mark.xfail(strict=True, reason=(
    "G24-1: a %%vjp cell that reads x into Python (k = int(x.argmax())) and shifts by it: the "
    "cell's own note says 'claimed at this x only', yet the sparse pattern paragraph (and "
    "--explain) still says 'Proved from the autograd graph: the pattern holds for every x' — "
    "false at any x with another argmax (render/sparse.py evidence_words ignores r.steers)"))
@pytest.mark.parametrize("line", ["", "--explain"])
def test_a_steered_sparse_pattern_is_not_claimed_for_every_x(run_vjp, line):
    r = run_vjp(_STEERED.format(n=N), line)
    assert r.inputs["x"].sparse is not None  # the coloured path was taken
    for kind in ("text/plain", "text/markdown"):
        text = _flat(bundle(r)[kind])
        assert "at this" in text  # the steering note is there
        assert "holds for every" not in text, text[:600]
