"""Cut graphs flagged without asking (issue 21, item 2; ``vjp_magic/features/cuts.py``).

A value computed from an input that reaches the output as a constant is named above the
derivatives with its op and cell line; the headline then says the derivative is that of the
graph as computed, never f′ of the formula the cell spells; ``--symbolic`` says so above its
formulas. The derivatives themselves are those of the graph as computed: checked against
``torch.func.jacrev`` of that graph (the constant made a constant by hand).
"""
from __future__ import annotations

import sys

import pytest
import torch

POSITIONS = sys.version_info >= (3, 11)  # "x**3" as written needs the source positions
X0 = torch.tensor([1., 2., 3.])
X = "x = torch.tensor([1., 2., 3.], requires_grad=True)\n"


def _texts(r) -> tuple[str, str]:
    """The markdown and the plain text, each line break a space (plain text wraps)."""
    bundle = r._repr_mimebundle_()
    return " ".join(bundle["text/markdown"].split()), " ".join(bundle["text/plain"].split())


def _as_computed(x0: torch.Tensor, graph) -> torch.Tensor:
    """jacrev of the graph as computed: ``graph(x, x0)`` with x0 standing for the cut value."""
    return torch.func.jacrev(lambda x: graph(x, x0.clone()))(x0.clone())


@pytest.mark.parametrize("body, op, graph", [
    ("y = x.detach()**3 - 2*x", "x.detach()", lambda x, c: c**3 - 2*x),
    ("y = x.data**3 - 2*x", "x.data", lambda x, c: c**3 - 2*x),
    ("y = torch.tensor(x**3) - 2*x", "torch.tensor(x**3)", lambda x, c: c**3 - 2*x),
    ("y = torch.tensor(x.tolist())**3 - 2*x", "x.tolist()", lambda x, c: c**3 - 2*x),
    ("y = torch.from_numpy(x.detach().numpy())**3 - 2*x", "x.detach()",
     lambda x, c: c**3 - 2*x),
])
def test_the_issues_cut_is_named_with_its_line(run_vjp, body, op, graph):
    r = run_vjp(X + body)
    expected = _as_computed(X0, graph).diagonal()  # elementwise: f' at each point
    torch.testing.assert_close(r.derivatives["x"], expected)
    torch.testing.assert_close(expected, torch.full((3,), -2.))  # not f' = 3x² - 2
    markdown, plain = _texts(r)
    for text, code in ((markdown, f"`{op}`"), (plain, op)):
        assert f"{code} on line 2 makes " in text
        assert "a constant" in text and "graph as computed" in text
        if POSITIONS:
            assert ("`x**3`" if text is markdown else "x**3 a constant") in text
        # the headline says what is proved: the graph as computed
        assert "(proved for every x, of the graph as computed)" in text.replace("$", "")
        # above the derivatives
        assert text.index("graph is cut") < text.index("From ")
    assert [c.line for c in r.cuts] == [2]


def test_no_grad_block_is_named_at_its_with_line(run_vjp):
    r = run_vjp(X + "with torch.no_grad():\n    c = x**3\ny = c - 2*x")
    torch.testing.assert_close(r.derivatives["x"], torch.full((3,), -2.))
    markdown, plain = _texts(r)
    assert "`torch.no_grad()` on line 2 makes " in markdown
    assert "torch.no_grad() on line 2 makes " in plain
    if POSITIONS:
        assert "`x**3` a constant" in markdown


@pytest.mark.parametrize("body, graph", [
    ("loss = (x**2).sum()\nv = loss.item()\ny = loss", lambda x: (x**2).sum()),
    ("d = x.detach()\nprint(d)\ny = x**3", lambda x: x**3),
    ("c = torch.tensor([2., 1., 0.]).detach()**2\ny = c*x", lambda x: torch.tensor(
        [4., 1., 0.]) * x),
    ("y = torch.where(x.detach() > 1, x**2, -x)", lambda x: torch.where(x > 1, x**2, -x)),
])
def test_nothing_flagged_without_a_cut_reaching_the_output(run_vjp, body, graph):
    r = run_vjp(X + body)
    torch.testing.assert_close(r.jacobian("x"), torch.func.jacrev(graph)(X0.clone()))
    markdown, plain = _texts(r)
    assert r.cuts == ()
    for text in (markdown, plain):
        assert "graph is cut" not in text and "graph as computed" not in text
    if "proved" in plain:
        assert "of the graph as computed" not in plain


def test_cut_in_the_middle_of_a_chain(run_vjp):
    r = run_vjp(X + "h = torch.sin(x)\nc = h.detach()\ny = torch.exp(c) * h")
    expected = _as_computed(X0, lambda x, c: torch.exp(torch.sin(c)) * torch.sin(x))
    torch.testing.assert_close(r.jacobian("x"), expected)
    markdown, plain = _texts(r)
    assert "`h.detach()` on line 3 makes " in markdown
    assert "h.detach() on line 3 makes " in plain


def test_two_inputs_one_cut(run_vjp):
    r = run_vjp(X + "w = torch.tensor([0.5, -1., 2.], requires_grad=True)\n"
                "y = x.detach()**2 * w + w * x")
    jx = torch.func.jacrev(lambda x: X0**2 * torch.tensor([0.5, -1., 2.]) + torch.tensor(
        [0.5, -1., 2.]) * x)(X0.clone())
    jw = torch.func.jacrev(lambda w: X0**2 * w + w * X0)(torch.tensor([0.5, -1., 2.]))
    torch.testing.assert_close(r.jacobian("x"), jx)
    torch.testing.assert_close(r.jacobian("w"), jw)
    markdown, plain = _texts(r)
    assert "with respect to x is that of the graph as computed" in plain
    assert [c.inputs for c in r.cuts] == [("x",)]
    # w's derivative is unaffected: its headline claims nothing about a cut
    w_part = plain[plain.index("With respect to w"):]
    assert "of the graph as computed" not in w_part[:w_part.index(".")]


def test_several_cuts_each_named_once(run_vjp):
    r = run_vjp(X + "d = x.detach()\ny = x*1\nfor _ in range(3):\n    y = y + d**2 + x.data.sin()")
    expected = _as_computed(X0, lambda x, c: x + 3 * (c**2 + c.sin()))
    torch.testing.assert_close(r.jacobian("x"), expected)
    markdown, plain = _texts(r)
    assert markdown.count("`x.detach()` on line 2") == 1
    assert markdown.count("`x.data` on line 5") == 1
    assert plain.count("x.data on line 5 (3 times)") == 1


def test_symbolic_says_the_same_above_its_formulas(run_vjp):
    r = run_vjp(X + "with torch.no_grad():\n    c = x**3\ny = c - 2*x", "--symbolic")
    markdown, plain = _texts(r)
    note = "These formulas are of the graph as computed, not of the formula the cell spells"
    assert note in plain and note in markdown
    assert plain.index(note) < plain.index("Symbolic (SymPy)")


def test_hessian_of_a_cut_graph(ip):
    ip.run_cell("x = torch.tensor([1., 2., 3.], requires_grad=True)\n"
                "y = (x.detach() * x**2).sum()")
    h = ip.run_cell("%hessian y x").result
    expected = torch.func.hessian(lambda x: (X0 * x**2).sum())(X0.clone())
    torch.testing.assert_close(h.hessian("x"), expected)
    markdown, plain = _texts(h)
    assert h.cuts == ()  # y was computed in an earlier cell: no record of the cut to read
    h = ip.run_cell("%hessian (x.detach() * x**2).sum() x").result
    torch.testing.assert_close(h.hessian("x"), expected)
    markdown, plain = _texts(h)
    assert "graph is cut" in plain and "of the graph as computed)" in plain
