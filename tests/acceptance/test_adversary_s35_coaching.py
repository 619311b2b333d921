"""Adversarial review, session 35 (G15): the coaching's "Corrected:" code, pasted after the
cell's own lines, runs and leaves the cell's names alone, whatever the cell calls its
tensors. The display's own loop renames its helpers where the cell binds them (``k2``,
``v2``, ``d_x2``); the coaching's loop renames ``k`` but not ``v``.

Expected: the pasted code runs (Python itself is the reference). Tests marked
``xfail(strict=True)`` are bugs found in this review; unmarked ones guard what held.
"""
from __future__ import annotations

import contextlib
import io
import re

import pytest
import torch

_IMPLICIT = {  # (the cell's lines up to its mistake, the mistake): y.backward() on a vector
    "an input named v": (
        "v = torch.randn(3, requires_grad=True)\nA = torch.randn(2, 3)\ny = A @ v\n",
        "y.backward()\n"),
    "an output named v": (
        "x = torch.randn(3, requires_grad=True)\nA = torch.randn(2, 3)\nv = A @ x\n",
        "v.backward()\n"),
    "a matrix named v": (
        "x = torch.randn(3, requires_grad=True)\nv = torch.randn(2, 3)\ny = v @ x\n",
        "y.backward()\n"),
    "an input named k": (
        "k = torch.randn(3, requires_grad=True)\nA = torch.randn(2, 3)\ny = A @ k\n",
        "y.backward()\n"),
}


def _corrected(ip, lines: str, mistake: str) -> str:
    result = ip.run_cell("%%vjp\n" + lines + mistake).result
    text = result._repr_mimebundle_()["text/plain"]
    block = re.search(r"Corrected:\n\n((?:    .*\n)+)", text).group(1)
    return "\n".join(line[4:] for line in block.splitlines())


# Was a strict xfail (s35 G15): fixed in render/codegen.one_hot_loop (v fresh against every name
# of the cell, as k was).
@pytest.mark.parametrize("cell", list(_IMPLICIT))
def test_the_corrected_loop_runs_and_keeps_the_cells_names(ip, cell):
    lines, mistake = _IMPLICIT[cell]
    code = _corrected(ip, lines, mistake)
    namespace = {"torch": torch}
    exec(lines, namespace)
    tensors = {n: t for n, t in namespace.items() if isinstance(t, torch.Tensor)}
    with contextlib.redirect_stdout(io.StringIO()):
        exec(code, namespace)
    assert [n for n, t in tensors.items() if namespace[n] is not t] == []


# -- --explain's letters: the cell's input named v --------------------------------------------

# Was a strict xfail (s35 G15): fixed in render/notation.gradient_vector (v2 where the cell's
# tensor is v: the code's name).
def test_explain_never_names_two_things_v_1(ip, run_ok):
    result = run_ok("%%vjp --explain\nv = torch.linspace(-1, 1, 4, requires_grad=True)\n"
                    "A = torch.randn(2, 4)\ny = A @ v.sin()\n")
    text = result._repr_mimebundle_()["text/plain"]
    assert not ("v_1 is v[0]" in text and "v_1^T" in text)


def test_explain_with_the_tutorials_names(ip, run_ok):
    result = run_ok("%%vjp --explain\nx = torch.linspace(-1, 1, 4, requires_grad=True)\n"
                    "A = torch.randn(2, 4)\ny = A @ x.sin()\n")
    text = result._repr_mimebundle_()["text/plain"]
    assert "x_1 is x[0]" in text and "v_1^T" in text
