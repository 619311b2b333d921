"""A long name on the left of a displayed equation costs its matrix nothing (D1-1's class, s43
F2): the formula's line writes it as one letter (``∂y/∂w``, ``J_F(w)``, ``w[0,1]``), said
beneath the formula ("w is token_embedding_projection_weights."), in every spelling, for
each display: the gradient, ``%jacobian``, ``%hessian``, per-sample gradients, a sparse
Jacobian, ``--full``. Expected numbers from ``torch.autograd.functional.jacobian`` /
``torch.func.hessian``; expected layouts from the same display of the same cell with the
input named ``x`` (whose name costs one letter's width)."""
from __future__ import annotations

import re

import pytest
import torch

LONG = "token_embedding_projection_weights"
CASES = {  # kind: (setup with {x}, the cell with {x}, f for the reference, input shape)
    "gradient": ("{x} = torch.randn(2, 3, requires_grad=True)",
                 "%%vjp --wrt {x}\ny = torch.tanh({x}) * 2", lambda x: torch.tanh(x) * 2),
    "jacobian": ("{x} = torch.randn(2, 3, requires_grad=True)\ny = torch.tanh({x}).sum(0)",
                 "%jacobian y {x}", lambda x: torch.tanh(x).sum(0)),
    "hessian": ("{x} = torch.randn(3, requires_grad=True)",
                "%hessian ({x}**3).sum() + {x}.prod() wrt {x}",
                lambda x: (x ** 3).sum() + x.prod()),
    "per-sample": ("{x} = torch.randn(4, 3, requires_grad=True)",
                   "%%vjp --wrt {x}\nlosses = ({x}**2).sum(1) + {x}.prod(1)",
                   lambda x: (x ** 2).sum(1) + x.prod(1)),
    "sparse": ("{x} = torch.randn(300, requires_grad=True)",
               "%%vjp --wrt {x}\ny = {x}[1:] * {x}[:-1]", None),
    "full": ("{x} = torch.randn(2, 3, requires_grad=True)",
             "%%vjp --full\ny = torch.tanh({x}) * {x}.sum()", None),
}
MATRIX_LINE = re.compile(r"(?:^|\s)\[([^\[\]]*)\]\s*$")  # (not a label's x[6])


def _bundle(ip, run_ok, kind: str, name: str) -> dict:
    setup, cell, _ = CASES[kind]
    run_ok("torch.manual_seed(0)\n" + setup.format(x=name))
    bundle = run_ok(cell.format(x=name))._repr_mimebundle_()
    return bundle[0] if isinstance(bundle, tuple) else bundle


def _matrices(plain: str) -> list[list[str]]:
    """The entries of the first matrix the plain text shows, row by row (``...``, ``:``
    where the width or the height left some out)."""
    rows: list = []
    for line in plain.splitlines():
        m = MATRIX_LINE.search(line)
        if m and all(re.fullmatch(r"-?[\d.e+-]+|\.\.\.|:", e) for e in m.group(1).split()):
            rows.append(m.group(1).split())
        elif rows:
            return rows
    return rows


def _said(text: str) -> str:
    """How a markdown or LaTeX display spells the input in its first sentence."""
    return re.match(r"From (\$[^$]*\$|`[^`]*`)", text).group(1)


@pytest.mark.parametrize("kind", list(CASES))
def test_a_long_name_leaves_every_matrix_as_a_short_one_does(ip, run_ok, kind):
    short = _matrices(_bundle(ip, run_ok, kind, "x")["text/plain"])
    bundle = _bundle(ip, run_ok, kind, LONG)
    plain = bundle["text/plain"]
    shown = _matrices(plain)
    assert shown and not any("..." in row for row in shown), plain  # every column
    if kind == "sparse":  # (the prose is taller: the first rows, fewer; as wide or wider)
        assert len(shown[0]) >= len(short[0]), plain
    else:
        assert shown == short, plain
    assert f"w is {LONG}." in re.sub(r"\s+", " ", plain), plain
    for fmt in ("text/markdown", "text/latex"):
        text = bundle[fmt]
        assert r"\mathit{w}" in text, fmt  # the letter on the formula's line
        assert rf"\mathit{{w}}$ is {_said(text)}." in text, fmt  # said as the display says it
    for line in plain.splitlines():  # no formula's line spends the width on the name
        if MATRIX_LINE.search(line):
            assert LONG not in line, line


@pytest.mark.parametrize("kind", ["gradient", "jacobian", "hessian", "per-sample"])
def test_the_whole_matrix_shows_the_derivatives_themselves(ip, run_ok, kind):
    plain = _bundle(ip, run_ok, kind, LONG)["text/plain"]
    x = ip.user_ns[LONG].detach().clone()
    f = CASES[kind][2]
    if kind == "hessian":
        expected = torch.func.hessian(f)(x)
    else:
        jac = torch.autograd.functional.jacobian(f, x)
        expected = jac.reshape(jac.shape[0], -1) if kind == "jacobian" else (  # m × n
            torch.einsum("ijij->ij", jac) if kind == "gradient" else  # elementwise: diagonal
            torch.einsum("iij->ij", jac))  # per-sample: row i's own gradient
    shown = [[float(e) for e in row] for row in _matrices(plain)]
    assert torch.tensor(shown, dtype=expected.dtype) == pytest.approx(
        expected.reshape(len(shown), -1), rel=2e-3, abs=1e-4), plain


def test_a_short_name_keeps_its_name_on_the_formulas_line(ip, run_ok):
    run_ok("torch.manual_seed(0)\nimport torch.nn as nn\nnet = nn.Sequential(nn.Linear(3, 2))\n"
           "xs = torch.randn(3)")
    plain = run_ok("%%vjp --wrt net[0].weight\ny = torch.tanh(net(xs))")._repr_mimebundle_()
    plain = (plain[0] if isinstance(plain, tuple) else plain)["text/plain"]
    assert "∂y/∂(net[0].weight) = [" in plain and " is net[0].weight" not in plain, plain


def test_the_letter_is_none_the_cell_binds(ip, run_ok):
    """The cell binds w (and u, the next letter): the formula's letter is another."""
    run_ok("w = torch.ones(2); u = 3")
    plain = _bundle(ip, run_ok, "gradient", LONG)["text/plain"]
    said = re.search(rf"(\w) is {LONG}\.", re.sub(r"\s+", " ", plain))
    letter = said.group(1) if said else None
    assert letter not in {None, "w", "u", "y", "f", "F", "v"}, plain
    assert f"f'({letter}^(i)) = [" in plain, plain  # the tutorial's f'(x^(i)), x written so


def test_two_long_names_get_two_letters_each_said(ip, run_ok):
    other = "attention_output_projection_bias"
    magics = ip.magics_manager.registry["VJPMagics"]
    before, magics.height = magics.height, 1300  # (both inputs' matrices on the output;
    try:                                         # the shell is shared: set back after)
        run_ok(f"torch.manual_seed(0)\n{LONG} = torch.randn(2, requires_grad=True)\n"
               f"{other} = torch.randn(2, requires_grad=True)")
        r = run_ok(f"%%vjp --full\ny = {LONG} * {other}")
    finally:
        magics.height = before
    bundle = r._repr_mimebundle_()
    plain = re.sub(r"\s+", " ", (bundle[0] if isinstance(bundle, tuple) else bundle)[
        "text/plain"])
    said = dict((name, letter) for letter, name in
                re.findall(rf"(\w) is ({LONG}|{other})\.", plain))
    assert set(said) == {LONG, other} and len(set(said.values())) == 2, plain
    x, b = ip.user_ns[LONG].detach(), ip.user_ns[other].detach()
    for name, expected in ((LONG, torch.diag(b)), (other, torch.diag(x))):
        entries = re.search(rf"/∂{said[name]}_j = y\[0\] \[([^\]]*)\] y\[1\] \[([^\]]*)\]",
                            plain)
        assert entries, (name, plain)
        shown = torch.tensor([[float(e) for e in g.split()] for g in entries.groups()])
        assert shown == pytest.approx(expected, rel=2e-3, abs=1e-4), (name, plain)
