"""Displays that point at the answer (issue 22, item 4): a dependency finding names the rows
that break the structure ("only y[1] reads x[0]"), never reads as if every row leaks when one
does, and shows the leaking rows' matrices first; a sentence true of several inputs is said
once.

Expected matrices are blocks of ``torch.func.jacrev``'s Jacobian (or the mathematics)."""
from __future__ import annotations

import pytest
import torch
from torch.func import jacrev

import vjp_magic
from vjp_magic.render import latex, markdown
from vjp_magic.render.document import Formula

# demo_notebooks/04_practitioners.ipynb, "A batch leak": sample 1 gets a little of sample 0
LEAK_CELL = """torch.manual_seed(0)
x = torch.randn(8, 3, requires_grad=True)
layer = torch.nn.Linear(3, 2)
h = layer(x)
leak = torch.zeros(8, 8)
{leaks}
y = h + leak @ h"""


def text(r) -> str:
    return " ".join(repr(r).split())


def formulas(r) -> list[Formula]:
    return [b for s in r.view.document(r).sections for b in s.blocks if isinstance(b, Formula)]


def values(formula: Formula) -> torch.Tensor:
    """The numbers a formula's matrix shows (its common power of ten put back)."""
    matrix = formula.matrix
    rows = [[float(e.plain.replace("−", "-")) for e in row] for row in matrix.rows]
    return torch.tensor(rows, dtype=torch.float64) * 10.0 ** (matrix.factor or 0)


def shows(r, lhs: str, expected: torch.Tensor) -> int:
    """The position of the formula ``lhs = …`` among the display's formulas, after checking
    it shows ``expected`` (to the 4 significant digits shown)."""
    found = [k for k, f in enumerate(formulas(r)) if f.lhs.plain == lhs]
    assert found, [f.lhs.plain for f in formulas(r)]
    shown = values(formulas(r)[found[0]])
    torch.testing.assert_close(shown, expected.double().reshape(shown.shape), rtol=1e-3,
                               atol=1e-6)
    return found[0]


def assert_safe_maths(r) -> None:
    """Every formula typesets in MathJax 3 and KaTeX alike."""
    for tex in markdown.maths(r._repr_mimebundle_()["text/markdown"]):
        assert latex.tex_problems(tex) == [], tex


def leak_jacobian(ip) -> torch.Tensor:
    layer, leak, x = (ip.user_ns[n] for n in ("layer", "leak", "x"))
    return jacrev(lambda t: layer(t) + leak @ layer(t))(x.detach())  # (8, 2, 8, 3)


def test_the_notebooks_leak_names_the_row_and_shows_its_matrix_first(ip, run_vjp):
    r = run_vjp(LEAK_CELL.format(leaks="leak[1, 0] = 0.1"), line="--wrt x")
    said = text(r)
    assert "only y[1] reads another row of x: y[1] ← x[0]" in said
    assert "every other y[t] reads x[t] only" in said
    assert "y[t] reads x[s] for" not in said  # never as if every row leaked
    jac = leak_jacobian(ip)
    assert shows(r, "∂y[1]/∂x[0]", jac[1, :, 0, :]) == 0  # the leaking row's matrix, first
    torch.testing.assert_close(jac[1, :, 0, :], 0.1 * ip.user_ns["layer"].weight.detach())
    bundle = r._repr_mimebundle_()
    assert r"\frac{\partial y[1]}{\partial x[0]}" in bundle["text/markdown"]
    assert r"\frac{\partial y[1]}{\partial x[0]}" in bundle["text/latex"]
    assert_safe_maths(r)


@pytest.mark.parametrize("leaks, rows", [
    ("leak[0, 1] = 0.1", {0: [1]}),  # the first row
    ("leak[7, 6] = 0.1", {7: [6]}),  # the last row
    ("leak[4, 3] = 0.1", {4: [3]}),  # a middle row
    ("leak[1, 0] = 0.1\nleak[5, 7] = 0.2", {1: [0], 5: [7]}),  # two leaking rows
    ("leak[3, 1] = 0.1\nleak[3, 6] = 0.2", {3: [1, 6]}),  # one row reading two others
])
def test_each_leak_names_its_rows_and_shows_them(ip, run_vjp, leaks, rows):
    r = run_vjp(LEAK_CELL.format(leaks=leaks), line="--wrt x")
    said = text(r)
    named = list(rows)
    if len(named) == 1:
        (i, reads), = rows.items()
        verb = "reads another row" if len(reads) == 1 else "reads other rows"
        assert f"only y[{i}] {verb} of x: y[{i}] ← " + ", ".join(f"x[{j}]" for j in reads) \
            in said, said
    else:
        assert f"only y[{named[0]}] and y[{named[1]}] read other rows of x" in said, said
        assert f"y[{named[0]}] ← x[{rows[named[0]][0]}]; y[{named[1]}] ← x[{rows[named[1]][0]}]" \
            in said
    assert "y[t] reads x[s] for" not in said
    jac = leak_jacobian(ip)
    for k, i in enumerate(named):
        j = rows[i][0]
        assert shows(r, f"∂y[{i}]/∂x[{j}]", jac[i, :, j, :]) == k  # the leaks' matrices first


def test_a_leak_in_a_column_wise_map(ip, run_vjp):
    r = run_vjp("torch.manual_seed(5)\nxc = torch.randn(3, 8, requires_grad=True)\n"
                "W = torch.randn(2, 3)\nL = torch.zeros(8, 8)\nL[0, 3] = 0.5\n"
                "yc = W @ xc + (W @ xc) @ L")
    said = text(r)
    assert "Along the columns of yc and the columns of xc" in said
    assert "only yc[:, 3] reads another column of xc: yc[:, 3] ← xc[:, 0]" in said
    W, L, xc = (ip.user_ns[n] for n in ("W", "L", "xc"))
    jac = jacrev(lambda t: W @ t + (W @ t) @ L)(xc.detach())  # (2, 8, 3, 8)
    assert shows(r, "∂yc[:, 3]/∂xc[:, 0]", jac[:, 3, :, 0]) == 0
    assert_safe_maths(r)


def test_a_broken_pairing_names_only_the_leaking_row():
    """The pairing of rows is rejected (the path of a larger problem): its sentence says
    where it broke, and which row only."""
    torch.manual_seed(0)
    x = torch.randn(8, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 4, dtype=torch.float64)
    y = torch.tanh(x @ w).clone()
    y[1] = y[1] + 0.1 * x[0]
    r = vjp_magic.differentiate(y, x)
    said = text(r)
    assert "not independent" in said and "only y[1] reads another row of x" in said
    assert "y[1] ← x[0] (row 1 of y reads row 0 of x)" in said
    assert shows(r, "∂y[1]/∂x[0]", 0.1 * torch.eye(4)) == 0  # ∂(0.1 x[0])/∂x[0]


def test_a_leak_between_entries_is_one_number():
    x = torch.tensor([0.5, -1.0, 2.0, 0.3, 1.5, -0.7], requires_grad=True)
    y = torch.sin(x) + 0.1 * x[4] * (torch.arange(6) == 5)
    r = vjp_magic.differentiate(y, x)
    said = text(r)
    assert "only y[5] reads another entry of x: y[5] ← x[4]" in said
    leak = next(f for f in formulas(r) if f.lhs.plain == "∂y[5]/∂x[4]")
    assert leak.matrix.scalar and float(leak.matrix.rows[0][0].plain) == pytest.approx(0.1)


# -- where every row follows the pattern, the pattern is said -------------------------------
def test_a_full_band_keeps_its_sentence_and_no_leak_matrix():
    x = torch.linspace(0.5, 2.0, 8, dtype=torch.float64, requires_grad=True)
    r = vjp_magic.differentiate(torch.cumsum(x, 0) ** 2, x,
                                options=vjp_magic.RenderOptions(threshold=5))
    said = text(r)
    assert "s ≤ t only (causal" in said and "only y[" not in said
    assert not [f for f in formulas(r) if f.lhs.plain.startswith("∂y[")]


def test_every_row_leaking_is_no_leak_of_a_few():
    x = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    r = vjp_magic.differentiate(x * 2 + 0.1 * x.roll(1, 0), x)
    said = text(r)
    assert "not independent" in said and "only y[" not in said
    assert not [f for f in formulas(r) if f.lhs.plain.startswith("∂y[")]


def test_many_leaking_rows_are_counted_not_said_of_all(run_vjp):
    r = run_vjp(LEAK_CELL.format(leaks="for t in range(1, 6):\n    leak[t, t - 1] = 0.1"),
                line="--wrt x")
    said = text(r)
    assert "5 of the 8 rows of y read other rows of x" in said
    assert "only y[" not in said


# -- a sentence true of every input is said once ---------------------------------------------
def test_a_scalar_loss_says_v_is_one_once(run_vjp):
    r = run_vjp("torch.manual_seed(0)\nmlp = torch.nn.Sequential(torch.nn.Linear(3, 4), "
                "torch.nn.Tanh(), torch.nn.Linear(4, 2))\nloss = mlp(torch.randn(5, 3)).pow(2)"
                ".sum()", line="--wrt mlp")
    assert len(r.derivatives) == 4
    assert text(r).count("so backward needs no gradient argument") == 1
