"""Matrices show what fits, the same way every time; every output fits one screen (issue 22,
items 1 and 2): columns up to the width budget before any ellipsis, one layout per shape in an
output, ``edgeitems``/``threshold``/``width`` (``%config`` and flags) for every matrix, one
number format per output, and a height budget that summarises inputs and components (the rest
counted and named, each in ``r.derivatives[name]``).

Expected numbers come from ``torch.func.jacrev`` (or the tensors themselves where a test is
about which entries show), never from the code under test."""
from __future__ import annotations

import math

import pytest
import torch
from layouts import OPTIONS
from torch.func import jacrev

import vjp_magic
from vjp_magic.render import latex, markdown
from vjp_magic.render.budget import Fit, height
from vjp_magic.render.document import Formula, Math
from vjp_magic.render.matrix import Plan, layout, layout_beside, reserve, tensor_block, width
from vjp_magic.render.options import DISPLAY_HEIGHT, RenderOptions

TANH = """torch.manual_seed(0)
W = torch.randn(3, 8)
X = torch.randn(100_000, 8, requires_grad=True)
Y = torch.tanh(X @ W.T)"""
MLP = """torch.manual_seed(0)
mlp = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
inputs = torch.randn(32, 4)
targets = torch.randint(0, 3, (32,))
losses = torch.nn.functional.cross_entropy(mlp(inputs), targets, reduction="none")"""
DOTS = {r"\cdots", r"\vdots", r"\ddots"}


def formulas(r) -> list[Formula]:
    return [b for s in r.view.document(r).sections for b in s.blocks
            if isinstance(b, Formula) and b.matrix is not None]


def columns(matrix) -> int:
    """Columns of numbers shown (the dots column not counted)."""
    return sum(e.tex not in DOTS for e in matrix.rows[0])


def numbers(matrix) -> list[float]:
    return [float(e.plain) * 10.0 ** (matrix.factor or 0) for row in matrix.rows for e in row
            if e.tex not in DOTS]


def said(r) -> str:
    return " ".join(r.view.plain(r).split())


# -- columns up to the width budget ------------------------------------------------------------
def test_a_weight_gradient_of_8_by_4_is_shown_whole():
    torch.manual_seed(0)
    weight = torch.randn(8, 4, requires_grad=True)
    x = torch.randn(16, 4)
    loss = torch.tanh(x @ weight.T).pow(2).sum()
    expected = jacrev(lambda w: torch.tanh(x @ w.T).pow(2).sum())(weight.detach())
    r = vjp_magic.differentiate(loss, weight, ["weight"])
    (shown,) = formulas(r)
    assert len(shown.matrix.rows) == 8 and columns(shown.matrix) == 4
    shown_values = torch.tensor(numbers(shown.matrix), dtype=torch.float64).reshape(8, 4)
    torch.testing.assert_close(shown_values, expected.double(), rtol=1e-3, atol=1e-6)


def test_a_12_by_12_jacobian_shows_as_many_columns_as_fit():
    x = torch.randn(12, dtype=torch.float64)
    jac = jacrev(lambda t: torch.softmax(t, 0))(x)
    lhs = Math(r"\frac{\partial s_i}{\partial x_j}", "∂s_i/∂x_j")
    for threshold in (10, 12, 30):
        options = RenderOptions(threshold=threshold)
        m = layout(tensor_block(jac), options, torch.float64, reserved=reserve(lhs))
        assert width(m) + reserve(lhs) <= options.width
        shown = columns(m)
        wanted = 12 if threshold >= 12 else 2 * options.edgeitems
        if shown < wanted:  # one more column would not fit
            wider = RenderOptions(threshold=threshold, width=options.width + 200)
            whole = layout(tensor_block(jac), wider, torch.float64, reserved=reserve(lhs))
            assert columns(whole) == wanted  # the count rule alone shows them all
        assert shown >= 3, f"threshold {threshold}: only {shown} of 12 columns"


def test_the_width_setting_governs_the_columns():
    t = torch.linspace(-1, 1, 100 * 8, dtype=torch.float64).reshape(100, 8) / 7
    narrow = layout(tensor_block(t), RenderOptions(width=30), torch.float64)
    wide = layout(tensor_block(t), RenderOptions(width=120), torch.float64)
    assert columns(narrow) < columns(wide) == 8


def test_edgeitems_govern_every_matrix(ip, run_ok):
    run_ok(TANH)
    r = vjp_magic.differentiate(ip.user_ns["Y"], ip.user_ns["X"], ["X"],
                                options=RenderOptions(edgeitems=5, height=10_000, width=200))
    shown = formulas(r)
    derivatives = [f for f in shown if f.lhs.plain.startswith(("grad", "∇"))]
    assert len(derivatives) == 3
    for f in derivatives:
        assert len(f.matrix.rows) == 11 and columns(f.matrix) == 8  # 5, ⋮, 5 rows; 8 columns
        assert f.matrix.rows[5][0].tex == r"\vdots"


def test_the_magics_read_width_edgeitems_and_the_flags(ip, run_ok, run_vjp):
    run_ok("%config VJPMagics.width = 200")
    run_ok("%config VJPMagics.edgeitems = 4")
    r = run_vjp(TANH)
    assert r.view.options.width == 200 and r.view.options.edgeitems == 4
    assert run_vjp(TANH, "--width 30").view.options.width == 30
    assert run_vjp(TANH, "--full-matrix").view.options.full_matrix
    run_ok("%config VJPMagics.width = 50")
    run_ok("%config VJPMagics.edgeitems = 3")


# -- one layout per shape, one number format per output -----------------------------------------
def test_same_shaped_matrices_of_one_output_are_laid_out_alike(ip, run_ok):
    """Notebook 02's tanh(X @ W.T): three 100,000 × 8 matrices, one layout."""
    run_ok(TANH)
    r = vjp_magic.differentiate(ip.user_ns["Y"], ip.user_ns["X"], ["X"],
                                options=RenderOptions(height=10_000))
    derivatives = formulas(r)[:3]
    assert len({columns(f.matrix) for f in derivatives}) == 1
    assert len({f.suffix for f in derivatives}) == 1
    assert len({tuple(type(s).__name__ for s in f.caption[:1]) for f in derivatives}) == 1
    x, w = ip.user_ns["X"].detach(), ip.user_ns["W"]
    for k, f in enumerate(derivatives):  # each shows row 0 of grad f_k, to its digits
        expected = (1 - torch.tanh(x[0] @ w.T) ** 2)[k] * w[k]
        first = [float(e.plain) for e in f.matrix.rows[0] if e.tex not in DOTS]
        head = (len(first) + 1) // 2
        torch.testing.assert_close(torch.tensor(first[:head], dtype=torch.float64),
                                   expected[:head].double(),
                                   rtol=6e-3, atol=1e-6)  # 3 digits at least


def test_one_number_format_per_output():
    """A matrix whose small entries alone would be m × 10^e is written positionally beside a
    matrix that is."""
    decimal = tensor_block(torch.tensor([[0.5, -0.25], [0.125, 0.75]], dtype=torch.float64))
    small = tensor_block(torch.tensor([[-0.403, 2.44e-7], [0.1, 3e-7]], dtype=torch.float64))
    alone = layout(small, OPTIONS, torch.float64)
    assert any("e" in e.plain for row in alone.rows for e in row)  # on its own: scientific
    plan = Plan()
    options = RenderOptions(fit=Fit(plan=plan))
    for _ in range(2):
        first = layout(decimal, options, torch.float64)
        second = layout(small, options, torch.float64)
        plan.collecting = False
    assert not any("e" in e.plain for m in (first, second) for row in m.rows for e in row)
    assert [float(e.plain) for e in second.rows[0]] == pytest.approx([-0.403, 2.44e-7])


def test_the_shape_goes_where_every_matrix_of_its_shape_has_it():
    plan = Plan()
    options = RenderOptions(fit=Fit(plan=plan))
    suffix = Math(r"\;\in \mathbb{R}^{100{,}000\times 8}", "∈ R^100,000×8")
    narrow = tensor_block(torch.full((100_000, 8), 0.5, dtype=torch.float64))
    wide = tensor_block(torch.full((100_000, 8), -0.000812, dtype=torch.float64))
    for lhs in ("f_1", "grad f_2(X^(i))"):
        layout_beside(narrow if lhs == "f_1" else wide, options, torch.float64,
                      Math(lhs, lhs), suffix)
    plan.collecting = False
    placed = [layout_beside(block, options, torch.float64, Math("f", "f"), suffix)
              for block in (narrow, wide)]
    assert placed[0][1] == placed[1][1]
    assert columns(placed[0][0]) == columns(placed[1][0])


# -- one screen ----------------------------------------------------------------------------------
@pytest.mark.parametrize("cell, line", [(TANH, ""), (MLP, "--wrt mlp")],
                         ids=["tanh 10^5 x 8", "mlp per-sample"])
def test_outputs_fit_the_height_budget(run_vjp, cell, line):
    r = run_vjp(cell, line)
    assert height(r.view.document(r).sections) <= DISPLAY_HEIGHT
    for tex in markdown.maths(r._repr_mimebundle_()["text/markdown"]):
        assert latex.tex_problems(tex) == [], tex


def test_inputs_left_out_are_named_and_reachable(ip, run_vjp):
    r = run_vjp(MLP, "--wrt mlp")
    text = said(r)
    assert "Not shown, to fit one screen:" in text
    assert "r.derivatives['mlp.0.bias']" in text
    mlp, inputs, targets = (ip.user_ns[n] for n in ("mlp", "inputs", "targets"))
    params = {k: v.detach() for k, v in mlp.named_parameters()}

    def losses(p):
        out = torch.func.functional_call(mlp, p, (inputs,))
        return torch.nn.functional.cross_entropy(out, targets, reduction="none")

    expected = jacrev(losses)(params)
    for name in ("0.bias", "2.weight", "0.weight", "2.bias"):
        torch.testing.assert_close(r.derivatives[f"mlp.{name}"], expected[name])
    assert text.count("Not shown") == 1


def test_components_left_out_are_counted(run_vjp):
    r = run_vjp(TANH)
    text = said(r)
    shown = [f for f in formulas(r) if f.lhs.plain.startswith(("grad", "∇"))]
    hidden = 3 - len(shown)
    assert hidden == 0 or f"{hidden} more component" in text
    assert "r.derivatives['X']" in text or hidden == 0


def test_a_small_output_is_unchanged_by_the_budget(run_vjp):
    r = run_vjp("x = torch.linspace(-2, 2, 5, requires_grad=True)\ny = x**2")
    (shown,) = formulas(r)
    assert [float(e.plain) for e in shown.matrix.rows[0]] == [-4, -2, 0, 2, 4]  # 2x
    assert "Not shown" not in said(r)


def test_more_height_shows_more(ip, run_ok):
    run_ok(MLP)
    names = [f"mlp.{n}" for n, _ in ip.user_ns["mlp"].named_parameters()]
    tensors = [dict(ip.user_ns["mlp"].named_parameters())[n[4:]] for n in names]
    tall = vjp_magic.differentiate(ip.user_ns["losses"], tensors, names,
                                   options=RenderOptions(height=100_000))
    short = vjp_magic.differentiate(ip.user_ns["losses"], tensors, names)
    assert len(formulas(tall)) > len(formulas(short))
    assert "Not shown" not in said(tall)
    assert math.isfinite(height(short.view.document(short).sections))
