"""Adversarial review, session 31 (issue 20, "Display and teaching"): what a student reads
beneath a sparse (coloured) result, used through IPython as a student would.

The code shown beneath the cell is pasted into the next cell and run: its compressed rows
must give the derivatives that mathematics gives (the stencils' analytic values, or the
gather's product rule), never values taken from the code under test. The sentences are
checked against the Jacobian's own pattern. The bugs this review found (strict xfails when
written) are fixed and the tests guard them. The cells are in
``tests/sparse_cells_s31.py``; sizes and screens in ``test_adversary_s31_ux_screens.py``.
"""
from __future__ import annotations

import re

import pytest
import torch
from sparse_cells_s31 import (
    CYCLIC, GATHER, LAPLACIAN, TALL, TRIDIAGONAL, flat, plain, rows_from_compressed, shown_code,
    stencil_1d)

import vjp_magic


# -- the code beneath the cell, run in the next cell ---------------------------------------------
def _rows(ns: dict, r) -> torch.Tensor:
    """The code's matrix of compressed rows (row c: vᵀJ for colour c), by the name the code
    gives it (g, or g2 where the display's maths takes g)."""
    return ns[re.search(r"^(\w+) = \w+\.new_zeros\(", shown_code(r), re.M).group(1)]


def test_tridiagonal_code_gives_the_analytic_derivatives(ip, run_vjp, run_ok):
    r = run_vjp(TRIDIAGONAL.format(n=2000))
    text = flat(plain(r))
    assert "v is 1 on entries 0, 3, 6, … of y" in text
    assert "3 backward passes give all 5,998 nonzero derivatives" in text
    run_ok(shown_code(r))
    ns = ip.user_ns
    expected = stencil_1d(ns["x"], cyclic=False)
    p, q, got = rows_from_compressed(_rows(ns, r), ns["colour"], expected != 0)
    torch.testing.assert_close(got, expected[p, q])
    assert ns["x"].grad is None  # the shown code leaves no .grad behind


def test_cyclic_code_run_after_r_equals_underscore_gives_the_derivatives(ip, run_vjp, run_ok):
    r = run_vjp(CYCLIC.format(n=1000))  # 1,000 = 1 mod 3: the wrap needs a fourth colour;
    text = flat(plain(r))  # 4 divides 1,000: i mod 4 (a formula, preferred since s38)
    assert "v is 1 on entries 0, 4, 8, … of y" in text
    colours = [v.reshape(-1).nonzero().reshape(-1) for v in r.gradients["x"]]
    assert colours[0][:3].tolist() == [0, 4, 8]
    counted = torch.cat(colours).sort().values
    assert torch.equal(counted, torch.arange(1000))  # every entry exactly once
    run_ok("r = _")
    run_ok(shown_code(r))
    ns = ip.user_ns
    expected = stencil_1d(ns["x"], cyclic=True)
    p, q, got = rows_from_compressed(_rows(ns, r), ns["colour"], expected != 0)
    torch.testing.assert_close(got, expected[p, q])


def test_cyclic_code_pasted_as_is_runs(ip, run_vjp):
    r = run_vjp(CYCLIC.format(n=1000))
    result = ip.run_cell(shown_code(r))
    assert result.success, result.error_in_exec


def _follow_the_comment(ip, code: str) -> None:
    """Run what the code's comment asks first ('# r = _ after the cell'), then the code."""
    asked = re.search(r"# (\w+) = _ after the cell", code)
    if asked:
        assert ip.run_cell(f"{asked.group(1)} = _").success
    result = ip.run_cell(code)
    assert result.success, result.error_in_exec


@pytest.mark.parametrize("body", [
    "r = torch.linspace(0, 1, 1000, requires_grad=True)\ny = r.roll(1) - 2*r + r.roll(-1) + r**3",
    "x = torch.linspace(0, 1, 1000, requires_grad=True)\nr = x.roll(1) - 2*x + x.roll(-1) + x**3",
], ids=["input r", "output r"])
def test_the_code_runs_when_a_cell_name_is_r(ip, run_vjp, body):
    r = run_vjp(body)
    _follow_the_comment(ip, shown_code(r))


def test_the_code_runs_after_its_comment_with_other_names(ip, run_vjp):
    r = run_vjp("θ = torch.linspace(0, 1, 1000, requires_grad=True)\n"
                "φ = θ.roll(1) - 2*θ + θ.roll(-1) + θ**3")
    _follow_the_comment(ip, shown_code(r))
    θ = ip.user_ns["θ"]
    expected = stencil_1d(θ, cyclic=True)
    p, q, got = rows_from_compressed(_rows(ip.user_ns, r), ip.user_ns["colour"], expected != 0)
    torch.testing.assert_close(got, expected[p, q])


def test_laplacian_code_gives_the_analytic_derivatives(ip, run_vjp, run_ok):
    r = run_vjp(LAPLACIAN.format(n=40))
    text = flat(plain(r))
    assert "5-point stencil" in text and "5 backward passes" in text
    run_ok(shown_code(r))
    ns = ip.user_ns
    u = ns["u"].detach()
    n = u.shape[0]
    ids = torch.arange(n * n).reshape(n, n)
    expected = torch.diag(-4 + 3 * u.reshape(-1) ** 2)
    for a, b in [(ids[1:], ids[:-1]), (ids[:, 1:], ids[:, :-1])]:  # neighbours, both ways
        expected[a.reshape(-1), b.reshape(-1)] = 1
        expected[b.reshape(-1), a.reshape(-1)] = 1
    p, q, got = rows_from_compressed(_rows(ns, r), ns["colour"], expected != 0)
    torch.testing.assert_close(got, expected[p, q])


def test_gather_forward_mode_code_gives_the_product_rule(ip, run_vjp, run_ok):
    r = run_vjp(GATHER)
    text = flat(plain(r))
    assert "u is 1 on entries 0, 2, 4, … of x" in text
    run_ok(shown_code(r))
    ns = ip.user_ns
    x, idx = ns["x"].detach(), ns["idx"]
    other = (idx + 7) % 50000
    rows = torch.arange(idx.numel())
    ju, colour = ns["Ju"], ns["colour"]  # J[p, q] is Ju[colour[q], p]
    torch.testing.assert_close(ju[colour[idx], rows], x[other])  # dy_p/dx_idx[p]
    torch.testing.assert_close(ju[colour[other], rows], x[idx])  # dy_p/dx_other[p]


def test_the_first_colour_named_is_r_gradients_first(run_vjp):
    """'v is 1 on entries 0, 8, 13, … of y' (a batch leak, greedy colours): those are the
    first entries of r.gradients['x'][0], and the vectors cover y once."""
    r = run_vjp(TALL["batch leak y[t] <- x[t-1], B = 64"])
    first = r.gradients["x"][0].reshape(-1).nonzero().reshape(-1)[:3].tolist()
    text = flat(plain(r))
    assert f"v is 1 on entries {first[0]}, {first[1]}, {first[2]}, … of y" in text
    cover = torch.stack(list(r.gradients["x"])).sum(0)
    assert torch.equal(cover, torch.ones_like(cover))


def test_r_code_of_a_coloured_result_keeps_the_colours(run_vjp):
    r = run_vjp(TRIDIAGONAL.format(n=10**5), "--code")
    assert "r.code" in plain(r)
    assert "range(100000)" not in r.code and "new_zeros(100000" not in r.code, r.code


# -- the words: what the sentences claim is the Jacobian's own pattern ---------------------------
def test_explain_reason_is_the_patterns_own(run_vjp):
    r = run_vjp(TRIDIAGONAL.format(n=2000), "--explain")
    text = flat(plain(r))
    assert "y[0] reads x[0], x[1]; y[3], of the same colour, reads x[2], x[3], x[4]" in text
    j = stencil_1d(torch.linspace(0, 1, 2000), cyclic=False) != 0
    assert j[0].nonzero().reshape(-1).tolist() == [0, 1]
    assert j[3].nonzero().reshape(-1).tolist() == [2, 3, 4]
    most = int(j.sum(0).max())  # the most entries of y reading one entry of x
    assert f"An entry of x is read by up to {most} entries of y" in text
    assert f"no colouring needs fewer than {most} passes; this one is the fewest" in text


def test_forward_mode_explain_counts_the_readers_of_the_busiest_entry(ip, run_vjp):
    r = run_vjp(GATHER, "--explain")
    text = flat(plain(r))
    idx = ip.user_ns["idx"]
    readers = torch.bincount(idx, minlength=50000) + torch.bincount((idx + 7) % 50000,
                                                                    minlength=50000)
    most = int(readers.max())  # the backward colouring's lower bound: one entry's readers
    assert f"would take at least {most} backward passes" in text
    assert "An entry of y reads up to 2 entries of x" in text
    assert len(r.tangents["x"]) == 2  # the forward-mode passes' u (s38 G24-3) …
    assert len(r.gradients["x"]) >= most  # … r.gradients the output's cover, as backward's


def test_cyclic_explain_says_the_fourth_colour_is_over_the_bound(run_vjp):
    r = run_vjp(CYCLIC.format(n=1000), "--explain")
    text = flat(plain(r))
    assert "no colouring needs fewer than 3 passes; this one takes 4" in text
    assert len(r.gradients["x"]) == 4


def test_sampled_words_do_not_call_an_exception_tridiagonal():
    n = 100_000
    x = torch.linspace(0, 1, n, requires_grad=True)
    y = (x.roll(1) - 2 * x + x.roll(-1) + x**3).index_add(0, torch.tensor([50_001]), x[7:8] * 5)
    r = vjp_magic.differentiate(y, x, seed=0)
    j = r.jacobian("x", layout=torch.sparse_csr)
    row = j.col_indices()[j.crow_indices()[50_001]:j.crow_indices()[50_002]]
    assert row.tolist() == [7, 50_000, 50_001, 50_002]  # the Jacobian itself is right
    text = flat(plain(r))
    assert "tridiagonal" not in text or "x[7]" in text, text[:600]


def test_the_sentence_names_the_vector_the_code_uses(run_vjp):
    r = run_vjp(GATHER.replace("x", "u").replace("y =", "v ="))
    code, text = shown_code(r), flat(plain(r))
    assert "u2 = (colour == c)" in code
    assert "u is 1 on entries" not in text, text[:600]


def test_explain_plain_text_has_no_latex_braces(run_vjp):
    r = run_vjp(LAPLACIAN.format(n=40), "--explain")
    text = plain(r)
    assert "_{" not in text, re.findall(r"\S*_\{\S*", text)


# -- grading what the display teaches ------------------------------------------------------------
COLOURED_BY_HAND = TRIDIAGONAL.format(n=10_000) + """
g = torch.zeros(3, 10_000)
for c in range(3):
    v = (torch.arange(10_000) % 3 == c).float()
    x.grad = None
    y.backward(v, retain_graph=True)
    g[c] = x.grad
x.grad = None"""


def test_summed_answer_on_a_stencil_is_caught(ip, run_vjp):
    r = run_vjp(TRIDIAGONAL.format(n=10_000) + "\ny.backward(torch.ones_like(y))",
                "--check x.grad")
    assert r.check.correct is False and r.check.kind == "summed"
    expected = 3 * ip.user_ns["x"].detach() ** 2  # the column sums the student got
    expected[[0, -1]] -= 1
    torch.testing.assert_close(ip.user_ns["x"].grad, expected)


def test_summed_hint_on_a_stencil_points_to_the_colours(run_vjp):
    r = run_vjp(TRIDIAGONAL.format(n=10_000) + "\ny.backward(torch.ones_like(y))",
                "--check x.grad")
    assert "colour" in r.check.hint, r.check.hint


def test_the_displays_compressed_rows_are_not_called_wrong(ip, run_vjp):
    r = run_vjp(COLOURED_BY_HAND, "--check g")
    rows = torch.arange(10_000)  # the rows are right: J[p, p] = g[p % 3, p]
    torch.testing.assert_close(ip.user_ns["g"][rows % 3, rows],
                               -2 + 3 * ip.user_ns["x"].detach() ** 2)
    assert r.check.correct or r.check.kind != "wrong-shape", (r.check.kind, r.check.hint)
