"""The letter of the generic function is no name the result itself shows (session 33, G11):
``differentiate(torch.sin(f), {'f': f})`` read "applies one function f at 5 points f^(i)"
and f'(f^(i)); and it is never p, which the displays use for a parameter."""
from __future__ import annotations

import re

import torch

import vjp_magic
from vjp_magic.render.codegen import naming
from vjp_magic.render.notation import letters


def _markdown(result) -> str:
    return result._repr_mimebundle_()["text/markdown"]


def test_an_input_named_f_gets_another_function_letter():
    f = torch.linspace(0.1, 1, 5, requires_grad=True)
    r = vjp_magic.differentiate(torch.sin(f), {"f": f})
    md = _markdown(r)
    assert "f'" not in md and "f^{\\prime}" not in md, md
    assert re.search(r"\bg'|g\^\{\\prime\}|\bg\b", md), md  # the next free letter
    torch.testing.assert_close(r.derivatives["f"], torch.cos(f.detach()))


def test_the_function_letter_is_never_a_parameters_p():
    with naming({"f", "F", "g", "G", "h", "H"}):
        small, capital = letters()
    assert small not in "fghpuvw" and capital == small.upper()
