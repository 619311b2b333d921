"""text/latex prose that VS Code (markdown + KaTeX over text/latex) typesets: no "$" closes a
maths symbol right before a letter or digit; expressions in notes are code (s32, G7)."""
from __future__ import annotations

import re

import pytest
import torch

import vjp_magic
from jupyter_harness import node_missing, render_vscode
from vjp_magic.render.latex import escape_text

CLOSED_BEFORE_WORD = re.compile(r"(?<!\\)\$[^$]+(?<!\\)\$[A-Za-z0-9]")


@pytest.mark.parametrize("text", ["~y.bool() * y", "x→y", "∂y/∂x", "vᵀJ", "−1", "a ~ b",
                                  "x≤y and y≥z", "f′x", "10⁻³s"])
def test_no_maths_closes_right_before_a_word(text):
    assert not CLOSED_BEFORE_WORD.search(escape_text(text)), escape_text(text)


def test_an_expression_output_in_a_note_is_code():
    x = torch.linspace(-1, 1, 4, requires_grad=True)
    y = x**2
    r = vjp_magic.differentiate(~y.bool() * y * 0, x, output_name="~y.bool() * y * 0")
    (note,) = [n for n in r.notes if n.startswith("Every derivative")]
    assert "`~y.bool() * y * 0`" in note.markup


@pytest.mark.skipif(bool(node_missing()), reason=str(node_missing()))
def test_vscode_typesets_a_tilde_in_prose():
    x = torch.linspace(-1, 1, 4, requires_grad=True)
    y = x**2
    r = vjp_magic.differentiate(~y.bool() * y, x, output_name="~y.bool() * y")
    (rendered,) = render_vscode([r._repr_mimebundle_()["text/latex"]])
    assert not rendered["errors"] and "$\\sim$" not in rendered["html"]


@pytest.mark.parametrize("expression", ["torch.clamp(x, 0, 1)",
                                        "torch.where(x > 0, x, -2*x)", "x * 2 + 1"])
def test_zero_second_derivatives_are_said_at_this_x(run_ok, expression):
    run_ok("x = torch.tensor([-1., 0.5, 2.], requires_grad=True)")
    h = run_ok(f"%hessian {expression} wrt x")
    text = " ".join(h._repr_mimebundle_()["text/plain"].split())
    assert "Every second derivative is 0 at this x" in text and "piecewise" in text, text
