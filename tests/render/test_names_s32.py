"""Any Python name of the cell is shown, in every feature and spelling (s32, G7's class):
a name that is not typeset as a letter with a subscript (``x_``, ``_x``, ``x__y``) is
monospace maths in a formula and code in a sentence, never a crash."""
from __future__ import annotations

import pytest

NAMES = ["x_", "_x", "x__y", "X1_"]
CELLS = {
    "points": "{x} = torch.linspace(-1, 1, 4, requires_grad=True)\n{y} = {x}**2",
    "components": "{x} = torch.linspace(-1, 1, 3, requires_grad=True)\n"
                  "{y} = torch.stack([{x}**2, {x}**3])",
    "rows": "{x} = torch.randn(3, 2, requires_grad=True)\n{y} = {x}.sum(1)",
    "scalar": "{x} = torch.randn(3, requires_grad=True)\n{y} = ({x}**2).sum()",
}


def _shown(result) -> dict:
    bundle = result._repr_mimebundle_()
    return bundle[0] if isinstance(bundle, tuple) else bundle


@pytest.mark.parametrize("flags", ["", "--explain", "--code", "--present", "--full"])
@pytest.mark.parametrize("kind", list(CELLS))
@pytest.mark.parametrize("x, y", [(n, "y") for n in NAMES] + [("x", "y_"), ("x", "_y")])
def test_an_odd_name_is_shown_everywhere(run_vjp, flags, kind, x, y):
    r = run_vjp(CELLS[kind].format(x=x, y=y), flags)
    shown = _shown(r)
    for mime in ("text/plain", "text/markdown", "text/latex"):
        assert x in shown[mime].replace("\\_", "_"), mime


@pytest.mark.parametrize("x", NAMES)
def test_jacobian_and_hessian_of_an_odd_name(run_ok, x):
    run_ok(f"{x} = torch.linspace(-1, 1, 4, requires_grad=True)")
    for line in (f"%jacobian {x}**2 wrt {x}", f"%hessian ({x}**3).sum() wrt {x}",
                 f"%jacobian {x}.sin()"):
        shown = _shown(run_ok(line))
        assert x in shown["text/plain"], line


@pytest.mark.parametrize("name", ["données", "ŷ", "x_é", "Δté"])
def test_an_accented_name_is_text_inside_monospace_maths(run_vjp, name):
    from jupyter_harness import node_missing, render_vscode

    from vjp_magic.render.notation import name_tex

    tex = name_tex(name)
    for ch in name:
        if not ch.isascii() and ch not in "Δ":
            assert r"\text{" + ch + "}" in tex, tex
    if node_missing():
        return
    r = run_vjp(f"{name} = torch.linspace(-1, 1, 4, requires_grad=True)\nout = {name}**2")
    shown = _shown(r)
    for rendered in render_vscode([shown["text/markdown"], shown["text/latex"]]):
        assert not rendered["errors"] and not rendered["warnings"], rendered["warnings"][:1]
