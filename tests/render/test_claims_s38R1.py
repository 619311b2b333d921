"""Session 38, R1: the classes behind G24-1, G24-2, G24-4 and G24-5 (tests/acceptance/
test_review_s38G24.py holds the reviewer's own examples).

- G24-1: a cell that reads x into Python (r.steers) may take another graph at another x, so
  nothing that words a proof says "for every x": the sparse pattern, the Hessian's, --explain,
  and r.dependency's evidence (core.pairing.proved_for_every, the one owner).
- G24-2: "…" only stands for offsets left out.
- G24-4: wrap-around and edges are said per axis.
- G24-5: a band that not every index fills is said as a bound, or by the offsets read.

Expected reads come from torch.autograd.functional.jacobian; "at another x" from the maths
(a branch on x's sign picks another shift).
"""
from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from sparse_cells_s31 import bundle

import vjp_magic

N = 300
_BRANCH = ("x = torch.linspace(-1, 1, {n}, dtype=torch.float64).requires_grad_()\n"
           "if x.sum() >= 0:\n"  # a branch on x: at -x the other shift is taken
           "    {out}\n"
           "else:\n"
           "    {other}\n")


def _flat(text: str) -> str:
    return " ".join(text.split())


def _branch(t):
    return t * t.roll(1) if float(t.detach().sum()) >= 0 else t * t.roll(-1)


def test_the_branch_takes_another_pattern_at_another_x():
    x = torch.linspace(-1, 1, N, dtype=torch.float64) + 0.01
    here = torch.autograd.functional.jacobian(_branch, x) != 0
    there = torch.autograd.functional.jacobian(_branch, -x) != 0
    assert not torch.equal(here, there)


@pytest.mark.parametrize("line", ["", "--explain"])
def test_a_branch_on_x_is_no_pattern_for_every_x(run_vjp, line):
    r = run_vjp(_BRANCH.format(n=N, out="y = x * x.roll(1)", other="y = x * x.roll(-1)"),
                line)
    assert r.inputs["x"].sparse is not None and r.steers
    for kind in ("text/plain", "text/markdown"):
        text = _flat(bundle(r)[kind])
        assert "for every" not in text, text[:800]
        assert "holds at this" in text  # the sparse paragraph says how it is known


def test_the_same_cell_without_the_branch_is_proved_for_every_x(run_vjp):
    r = run_vjp("x = torch.linspace(-1, 1, 300, dtype=torch.float64).requires_grad_()\n"
                "y = x * x.roll(1)\n")
    assert not r.steers
    assert "Proved from the autograd graph: the pattern holds for every x." in \
        _flat(bundle(r)["text/plain"])


def test_a_steered_dependency_is_not_evidence_for_every_x(run_vjp):
    r = run_vjp(_BRANCH.format(n=N, out="y = x * x.roll(1)", other="y = x * x.roll(-1)"))
    assert r.inputs["x"].sparse is not None  # its pattern, proved for this graph only
    assert str(r.dependency("x").evidence) != "proved"


def test_a_steered_pairing_is_not_proved_in_the_explanation(run_vjp):
    r = run_vjp(_BRANCH.format(n=6, out="y = x ** 2", other="y = x.sin()"), "--explain")
    text = _flat(bundle(r)["text/plain"])
    assert "proves it" not in text and "shows it at this x only" in text, text[:900]


def test_a_steered_sparse_hessian_is_read_off_at_this_x_only(run_vjp, run_ok):
    run_vjp(_BRANCH.format(n=3000, out="f = (x * x.roll(1)).sum()",
                           other="f = (x * x.roll(-1)).sum()"))
    h = run_ok("%hessian f x")
    assert h.inputs["x"].sparse is not None
    text = _flat(bundle(h)["text/plain"])
    assert "for every x" not in text and "read off the graph at this x only" in text


# -- G24-2: "…" only where offsets are left out ------------------------------------------------

def _reads_sentence(r) -> str:
    text = _flat(bundle(r)["text/plain"])
    return text.split(" reads ", 1)[1].split(";", 1)[0]


def _gap_four(t):  # y[i] reads x[i], x[i+1], x[i+2], x[i+4]
    p = F.pad(t, (0, 4))
    return t * p[1:-3] + p[2:-2] + p[4:]


def test_four_offsets_with_a_gap_are_named_each():
    x = torch.linspace(-1, 1, N, dtype=torch.float64) + 2
    jac = torch.autograd.functional.jacobian(_gap_four, x)
    assert jac[10].nonzero().flatten().tolist() == [10, 11, 12, 14]
    xr = x.clone().requires_grad_()
    r = vjp_magic.differentiate(_gap_four(xr), xr)
    assert r.inputs["x"].sparse is not None
    said = _reads_sentence(r)
    assert "…" not in said and all(f"x[i{k}]" in said for k in ("", "+1", "+2", "+4")), said
    assert "x[i+3]" not in said


def test_a_long_run_is_still_shortened_to_its_ends():
    def run(t):  # y[i] reads x[i-4..i+4]: nine offsets, no gap
        p = F.pad(t, (4, 4))
        return sum(p[k:k + t.numel()] * (k + 1) for k in range(9)) * t
    x = torch.linspace(-1, 1, N, dtype=torch.float64, requires_grad=True)
    r = vjp_magic.differentiate(run(x), x)
    said = _reads_sentence(r)
    assert said.startswith("x[i-4], …, x[i+4]"), said


# -- G24-4: wrap-around per axis ---------------------------------------------------------------

def _periodic_in_i(u):
    q = F.pad(u, (1, 1))  # zero columns left and right: j does not wrap
    return q[:, :-2] + q[:, 2:] + u.roll(1, 0) + u.roll(-1, 0) - 4 * u + u ** 3


def _torus(u):
    return u.roll(1, 0) + u.roll(-1, 0) + u.roll(1, 1) + u.roll(-1, 1) - 4 * u + u ** 3


def test_the_stencil_periodic_in_i_wraps_in_i_only():
    u = torch.linspace(-1, 1, 500, dtype=torch.float64).reshape(20, 25)
    jac = torch.autograd.functional.jacobian(_periodic_in_i, u)
    assert jac[0, 5, 19, 5] == 1 and jac[5, 0, 5, 24] == 0


@pytest.mark.parametrize("f, said", [(_periodic_in_i, "(i wraps around; fewer at the edges in j)"),
                                     (_torus, "(indices wrap around)")])
def test_wrap_around_is_said_for_the_axes_that_wrap(f, said):
    u = torch.linspace(-1, 1, 500, dtype=torch.float64).reshape(20, 25).requires_grad_()
    r = vjp_magic.differentiate(f(u), u)
    assert r.inputs["x"].sparse is not None
    assert said in _flat(bundle(r)["text/plain"])


# -- G24-5: a band's hull is no list of reads ----------------------------------------------------

def _two_point(t):
    return t + 2 * F.pad(t, (0, 3))[3:]


def _cyclic_gaps(t):  # y[t] reads x[t - 2], x[t], x[t + 5] (indices modulo n)
    return t * t.roll(2) + t.roll(-5)


def _causal_gappy(t):  # lower-triangular, yet y[t] reads x[t] and x[0] only
    return t * t[0]


@pytest.mark.parametrize("f, said, unsaid", [
    (_two_point, "y[t] reads x[t] and x[t + 3] only", "t ≤ s ≤ t + 3"),
    (_cyclic_gaps, "y[t] reads x[t − 2], x[t] and x[t + 5] only, indices modulo 20",
     "t − 2 ≤ s ≤ t + 5"),
    (_causal_gappy, "y[t] reads no x[s] outside s ≤ t", "reads x[s] for s ≤ t"),
])
@pytest.mark.parametrize("full", [False, True])
def test_the_band_sentence_says_only_the_reads_there_are(f, said, unsaid, full):
    x0 = torch.linspace(-1, 1, 20, dtype=torch.float64) + 3
    jac = torch.autograd.functional.jacobian(f, x0)
    x = x0.clone().requires_grad_()
    r = vjp_magic.differentiate(f(x), x, full=full)
    torch.testing.assert_close(r.jacobian("x"), jac)
    text = _flat(bundle(r)["text/plain"])
    assert said in text and unsaid not in text, text[:900]


def test_a_filled_band_still_reads_every_offset():
    def tri(t):
        p = F.pad(t, (1, 1))
        return p[:-2] + p[2:] + t ** 2
    x = torch.linspace(-1, 1, 20, dtype=torch.float64, requires_grad=True)
    r = vjp_magic.differentiate(tri(x), x, full=True)
    assert re.search(r"y\[t\] reads x\[s\] for t − 1 ≤ s ≤ t \+ 1 only",
                     _flat(bundle(r)["text/plain"]))
