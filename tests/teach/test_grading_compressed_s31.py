"""Grading the compressed rows a sparse display teaches (issue 20, session 31): g, one row per
colour (row c = vᵀJ for v = 1 on the output's entries of colour c; by columns Ju, row c = J·u),
is a right answer where its values are the Jacobian's, in the display's numbering or any other;
a wrong entry is "wrong", not "wrong shape". The expected rows are built here from
torch.func.jacrev and the stencils' own colourings (mathematics), never from the grader."""
from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from sparse_cells_s31 import shown_code

import vjp_magic


def tridiagonal(x):
    p = F.pad(x, (1, 1))
    return p[:-2] - 2 * p[1:-1] + p[2:] + x ** 3


def cyclic(x):
    return x.roll(1) - 2 * x + x.roll(-1) + x ** 3


def _rows(f, x, colour, count):
    """Row c: the sum of J's rows of colour c (what one backward with that v gives)."""
    j = torch.func.jacrev(f)(x.detach()).reshape(-1, x.numel())
    return torch.zeros(count, x.numel(), dtype=j.dtype).index_add_(0, colour, j)


@pytest.mark.parametrize("f, n, colour", [
    (tridiagonal, 200, lambda n: torch.arange(n) % 3),
    (tridiagonal, 5000, lambda n: torch.arange(n) % 3),  # too large to densify
    (cyclic, 300, lambda n: torch.arange(n) % 3),
    (cyclic, 100, lambda n: torch.arange(n) % 4),  # 4 divides 100: i mod 4 holds across it
    (cyclic, 301, lambda n: torch.cat([torch.arange(n - 1) % 3, torch.tensor([3])])),  # the
])  # wrap: 301 = 1 mod 3 and mod 4, so i mod 3 with the last entry given a fourth colour
def test_the_compressed_rows_are_right_in_any_order_and_shape(f, n, colour):
    x = torch.linspace(-1, 1, n, dtype=torch.float64, requires_grad=True)
    y = f(x)
    c = colour(n)
    g = _rows(f, x, c, int(c.max()) + 1)
    verdict = vjp_magic.check(g, y, x)
    assert verdict.correct and verdict.form == "compressed", (verdict.kind, verdict.hint)
    assert "compressed rows" in verdict.headline
    assert vjp_magic.check(g.flip(0), y, x).correct  # colours numbered otherwise
    assert vjp_magic.check(g.reshape(g.shape[0], *x.shape), y, x).correct
    wrong = g.clone()
    wrong[1, 10] += 0.5
    verdict = vjp_magic.check(wrong, y, x)
    assert not verdict.correct and verdict.kind == "wrong", (verdict.kind, verdict.hint)
    assert "colour" in verdict.hint


def test_rows_of_another_colouring_are_not_accepted():
    """Rows of a colouring whose classes are not the display's (e.g. 4 colours on a
    tridiagonal stencil) are the right shape only by chance: not accepted as its rows."""
    n = 200
    x = torch.linspace(-1, 1, n, dtype=torch.float64, requires_grad=True)
    y = tridiagonal(x)
    g = _rows(tridiagonal, x, torch.arange(n) % 4, 4)
    assert not vjp_magic.check(g, y, x).correct


def test_the_summed_hint_names_colours_only_where_there_are_some(run_vjp):
    r = run_vjp("x = torch.linspace(0, 1, 5000, requires_grad=True)\n"
                "y = x.roll(1) - 2*x + x.roll(-1) + x**3\ny.backward(torch.ones_like(y))",
                "--check x.grad")
    assert r.check.kind == "summed" and "one backward per colour" in r.check.hint
    r = run_vjp("x = torch.rand(30, requires_grad=True)\ny = torch.softmax(x, 0) * x.sum()\n"
                "y.backward(torch.ones_like(y))", "--check x.grad")
    assert "colour" not in r.check.hint and "one-hot" in r.check.hint


def test_the_displays_own_code_is_graded_right(ip, run_vjp, run_ok):
    """The code beneath a 5-point Laplacian ((3i + j) mod 5, 2-D) and a gather (forward mode,
    Ju) run as shown; its g / Ju is then graded correct."""
    cells = {"g": "torch.manual_seed(0)\nu = torch.rand(30, 30, requires_grad=True)\n"
                  "import torch.nn.functional as F\nq = F.pad(u, (1, 1, 1, 1))\n"
                  "lap = q[:-2, 1:-1] + q[2:, 1:-1] + q[1:-1, :-2] + q[1:-1, 2:] - 4*u + u**3",
             "Ju": "torch.manual_seed(0)\nidx = torch.randint(0, 500, (1000,))\n"
                   "x = torch.rand(500, requires_grad=True)\ny = x[idx] * x[(idx + 7) % 500]"}
    for answer, body in cells.items():
        r = run_vjp(body)
        code = shown_code(r)
        run_ok(code)
        if answer == "g":  # the rows v^T J, by the name the code gives them (never the
            # maths' letter for the function: lap = G(u) takes g)
            answer = re.search(r"^(\w+) = u\.new_zeros\(", code, re.M).group(1)
        checked = run_vjp(body, f"--check {answer}")  # the same cell, graded
        assert checked.check.correct, (answer, checked.check.kind, checked.check.hint)
