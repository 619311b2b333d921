"""A proof that READ an index's values (the axis rule of ``x[torch.arange(B), t]``,
``core/axisrules/indexing.py``) holds for those index values only: where the index is computed
from x (``x[:, 0].argsort()`` of sorted rows is 0..B-1), another x gives another index and
rows meet. The verdict says the condition, as a sparse pattern's ``conditional_on`` does:
``dependency`` and ``r.dependency`` keep "proved" with ``conditional_on`` and the note, the
headline says "proved for every x that gives the same indices"; a proof that read no index
value says nothing more.

The premise (another x couples rows through the same code) is checked with
``torch.func.jacrev``, never with the code under test.
"""
from __future__ import annotations

import torch
from torch.func import jacrev

import vjp_magic
from vjp_magic.core import axisflow

B = 6
T = torch.tensor([0, 1, 2, 0, 1, 2])


def _by_rank(x):
    return x[x[:, 0].argsort(), T]


def _sorted_x():
    x = torch.randn(B, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    return x.sort(0).values.requires_grad_()


def test_the_premise_another_x_couples_rows():
    x = _sorted_x().detach()
    assert torch.equal(x[:, 0].argsort(), torch.arange(B))  # rows read in place at this x
    other = x.flip(0)
    jac = jacrev(_by_rank)(other)  # (B, B, 3): y[i] / x[j, k]
    reads = (jac != 0).any(-1)
    assert reads.any() and not torch.equal(reads, torch.eye(B, dtype=torch.bool) & reads)


def test_the_proof_names_the_index_it_read():
    x = _sorted_x()
    assert axisflow.prove(_by_rank(x), x).conditional_on == ("indexing",)
    assert axisflow.prove(torch.tanh(x) * 2, x).conditional_on == ()
    assert axisflow.prove(x[x[:, 0].argsort().flip(0), T], x).conditional_on == ()  # no carry


def test_the_functional_verdict_is_proved_given_the_index():
    x = _sorted_x()
    d = vjp_magic.dependency(_by_rank(x), x)
    assert d.kind == "independent" and d.evidence == "proved"
    assert d.conditional_on == ("indexing",) and "indexing" in d.note, d


def test_r_dependency_and_the_headline_say_the_condition(ip, run_ok):
    ip.user_ns.update(x=_sorted_x(), T=T)
    r = run_ok("%%vjp --wrt x\ny = x[x[:, 0].argsort(), T]")
    d = r.dependency("x")
    assert d.kind == "independent" and d.conditional_on == ("indexing",), d
    text = " ".join(r._repr_mimebundle_()["text/plain"].split())
    assert "proved for every x that gives the same indices (indexing)" in text, text


def test_without_an_index_read_the_verdict_says_nothing_more(ip, run_ok):
    x = _sorted_x()
    d = vjp_magic.dependency(torch.tanh(x) * 2, x)
    assert d.evidence == "proved" and d.conditional_on == () and d.note is None, d
    ip.user_ns.update(x=x)
    r = run_ok("%%vjp --wrt x\ny = torch.tanh(x) * 2")
    assert r.dependency("x").conditional_on == ()
    text = " ".join(r._repr_mimebundle_()["text/plain"].split())
    assert "proved for every x)" in text, text
