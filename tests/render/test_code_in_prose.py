"""Hints and notes set code as code (issue 22, item 3), and say whose each shape is.

A note, hint or coaching sentence that names code (``retain_graph=True``, ``x.grad.clone()``,
``ans.T``, ``--wrt mlp``) spells it as a :class:`~vjp_magic.render.document.Code` span: in
backticks in markdown, ``\\texttt`` in LaTeX, plain in plain text. Producers write the code
between backticks (:mod:`vjp_magic.core.marked`); the strings users read (``r.notes``,
``verdict.hint``) are plain text.
"""
from __future__ import annotations

import re

import pytest
import torch

from vjp_magic.core.marked import Marked, marked
from vjp_magic.render import latex
from vjp_magic.render.document import Code, Text, paragraph, prose

X4 = "x = torch.tensor([1., 2., 3., 4.], requires_grad=True)\ny = torch.stack([-x**3, 5*x])\n"
X3 = "x = torch.tensor([1., 2., 3.], requires_grad=True)\n"
MLP = ("torch.manual_seed(0)\nmlp = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Tanh())"
       "\nx = torch.randn(4, 3)\ny = mlp(x)")
CUBE = ("class Cube(torch.autograd.Function):\n    @staticmethod\n    def forward(ctx, x):\n"
        "        ctx.save_for_backward(x)\n        return x**3\n    @staticmethod\n"
        "    def backward(ctx, g):\n        x, = ctx.saved_tensors\n        return g * 3 * x**2\n"
        + X3 + "y = Cube.apply(x)")

# id: (cell, %%vjp line, the code each rendering must set as code)
ROWS = {
    "one-component": (X4 + "y[0].sum().backward(retain_graph=True)\nans = x.grad.clone()",
                      "--check ans", ["ans", "retain_graph=True", "x.grad.clone()", "x.grad"]),
    "transposed": (X4 + "ans = torch.stack([-3*x.detach()**2, 5*torch.ones(4)]).T",
                   "--check ans", ["ans", "ans.T"]),
    "summed": (X4 + "y.backward(torch.ones_like(y), retain_graph=True)", "--check x.grad",
               ["x.grad", "retain_graph=True", "x.grad.clone()"]),
    "set-to-none": (X4 + "y.backward(torch.ones_like(y))\nx.grad = None", "--check x.grad",
                    ["x.grad = None", "zero_grad()", "x.grad.clone()"]),
    "graph-cut": (X3 + "y = x.detach()**3 - 2*x\ny.backward(torch.ones_like(y))",
                  "--check x.grad --against \"x**3 - 2*x\"",
                  ["x**3 - 2*x", ".detach()", ".data", "torch.tensor(...)", ".numpy()"]),
    "model-note": (MLP, "", ["requires_grad=True", "--wrt mlp", "--wrt mlp[0].weight"]),
    "custom-function-note": (CUBE, "", ["autograd.Function", "--gradcheck", "CubeBackward"]),
    "freed-graph": (X3 + "y = x**2\ny.backward(torch.ones_like(y))\n"
                    "y.backward(torch.ones_like(y))", "", ["retain_graph=True"]),
}


def bundle(r) -> dict[str, str]:
    out = r._repr_mimebundle_()
    return out[0] if isinstance(out, tuple) else out


def run(ip, cell: str, line: str):
    result = ip.run_cell(f"%%vjp {line}\n{cell}")
    return result.result


@pytest.mark.parametrize("cell, line, codes", ROWS.values(), ids=ROWS.keys())
def test_named_code_is_code_in_every_spelling(ip, cell, line, codes):
    r = run(ip, cell, line)
    out = bundle(r)
    md, tex, plain = out["text/markdown"], out["text/latex"], " ".join(out["text/plain"].split())
    for code in codes:
        if code == "CubeBackward":  # the custom Function's node, named as it is
            assert re.search(r"`CubeBackward\w*`", md), md
            continue
        assert f"`{code}`" in md, (code, md)
        assert latex.inline_code(code) in tex, (code, tex)  # (long code may break after . ( [)
        assert code in plain and f"`{code}`" not in plain, (code, plain)


def test_hints_and_notes_read_as_plain_text(ip):
    r = run(ip, *ROWS["one-component"][:2])
    assert isinstance(r.check.hint, Marked) and "`" not in r.check.hint
    assert "`retain_graph=True`" in r.check.hint.markup
    model = run(ip, *ROWS["model-note"][:2])
    assert all("`" not in note for note in model.notes)
    assert any("`--wrt mlp`" in getattr(note, "markup", "") for note in model.notes)


def test_the_headline_sets_grad_as_code(ip):
    r = run(ip, X3 + "y = x**2\nfor _ in range(3):\n    y.backward(torch.ones_like(y), "
            "retain_graph=True)", "--check x.grad")
    assert r.check.kind == "accumulated", r.check.hint
    assert r.check.headline == "✗ .grad accumulated over backward calls"
    assert "**✗ `.grad` accumulated over backward calls**" in bundle(r)["text/markdown"]


def test_prose_reads_backticks_of_marked_text_only():
    assert prose(marked("pass `retain_graph=True` to it")) == (
        Text("pass "), Code("retain_graph=True"), Text(" to it"))
    assert prose("a plain `string`") == (Text("a plain `string`"),)
    assert paragraph("Note: ", marked("`x.grad` holds it")).spans == (
        Text("Note: "), Code("x.grad"), Text(" holds it"))
    assert marked("`a` b") == "a b" and marked(marked("`a`")).markup == "`a`"


# -- every shape says whose it is ------------------------------------------------------------
SHAPED = re.compile(r"(\S+(?: \S+)?) (?:has|have) shape (\([^)]*\))")
SHAPE_ROWS = {  # id: (cell, line, the answer's shape, the derivatives' shape)
    "one-component": (X4 + "y[0].sum().backward(retain_graph=True)\nans = x.grad.clone()",
                      "--check ans", "(4,)", "(2, 4)"),
    "wrong-shape": (X4 + "ans = torch.zeros(3)", "--check ans", "(3,)", "(2, 4)"),
    "reshaped": (X4 + "ans = torch.stack([-3*x.detach()**2, 5*torch.ones(4)]).reshape(8)",
                 "--check ans", "(8,)", "(2, 4)"),
}


@pytest.mark.parametrize("cell, line, mine, theirs", SHAPE_ROWS.values(), ids=SHAPE_ROWS.keys())
def test_every_shape_in_a_hint_says_whose(ip, cell, line, mine, theirs):
    """``torch.func.jacrev`` of (-x³, 5x) at 4 points has shape (2, 4, 4); the derivatives
    (component axes, then x's) (2, 4); the answer's shape is the cell's own."""
    x = torch.tensor([1., 2., 3., 4.])
    jac = torch.func.jacrev(lambda t: torch.stack([-t**3, 5*t]))(x)
    assert str(tuple(jac.shape[:1] + x.shape)).replace(" ", "") == theirs.replace(" ", "")
    r = run(ip, cell, line)
    said = SHAPED.findall(r.check.hint)
    assert said, r.check.hint
    for who, shape in said:  # "ans has shape (4,)", "the derivatives have shape (2, 4)"
        assert who.endswith(("ans", "derivatives", "to x")), (who, r.check.hint)
        assert shape == (mine if who.endswith("ans") else theirs), r.check.hint
    assert "The answer has shape" not in r.check.hint
    assert f"ans has shape {mine}" in r.check.hint
