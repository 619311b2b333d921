"""Cut graphs read off the record (``vjp_magic/run/cuts.py``): which values computed from an
input reach the output as constants, decided by data flow through the recorded calls, never
by names and never by running the cell again.

Each case runs its cell once under ``recording()`` (compiled under a file name linecache
knows, as IPython's cells are) and asks ``find_cuts`` about the output.
"""
from __future__ import annotations

import linecache
import sys
import warnings

import numpy as np
import pytest
import torch

from vjp_magic.run.cuts import CutKind, cut_inputs, find_cuts
from vjp_magic.run.record import recording

X = "x = torch.tensor([1., 2., 3.], requires_grad=True)\n"
W = "w = torch.tensor([0.5, -1., 2.], requires_grad=True)\n"
POSITIONS = sys.version_info >= (3, 11)  # expression text needs the source positions


def _cuts(body: str, output: str = "y", inputs=("x",)):
    source = X + W + body
    filename = f"<cut-cell-{abs(hash(source))}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace = {"torch": torch, "np": np}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.tensor(tensor) warns
        with recording() as record:
            exec(compile(source, filename, "exec"), namespace)
    return find_cuts(record, {n: namespace[n] for n in inputs}, namespace[output])


@pytest.mark.parametrize("body, kind, constant", [
    ("y = x.detach()**3 - 2*x", CutKind.DETACH, "x**3"),
    ("y = x.data**3 - 2*x", CutKind.DATA, "x**3"),
    ("y = torch.tensor(x**3) - 2*x", CutKind.COPY, "x**3"),
    ("y = torch.tensor(x.tolist())**3 - 2*x", CutKind.EXIT, "x**3"),
    ("s = (x**3).sum().item()\ny = s - 2*x", CutKind.EXIT, "(x**3).sum()"),
    ("y = torch.as_tensor(x.detach().numpy())**3 - 2*x", CutKind.DETACH, "x**3"),
    ("with torch.no_grad():\n    c = x**3\ny = c - 2*x", CutKind.NO_GRAD, "x**3"),
])
def test_each_cut_op_is_found_with_what_became_constant(body, kind, constant):
    cuts = _cuts(body)
    assert [c.kind for c in cuts] == [kind]
    assert cuts[0].inputs == ("x",)
    if POSITIONS:
        assert cuts[0].constants == (constant,)
        assert constant in cuts[0].plain()


@pytest.mark.parametrize("body", [
    "loss = (x**2).sum()\nv = loss.item()\ny = loss",  # .item() for printing, after
    "d = x.detach()\nprint(d)\ny = x**2",  # a cut on no path to the output
    "c = torch.tensor([1., 2., 3.]).detach()**2\ny = c*x",  # detached non-input
    "y = torch.where(x.detach() > 0, x, 0*x)",  # only a mask from the cut value
    "y = x[x.detach().argmax()] * x",  # only an index
    "y = torch.as_tensor(x) * 2",  # as_tensor of a tensor is that tensor: tracked
    "y = x.clone().requires_grad_(True) * x",  # nothing leaves autograd
])
def test_nothing_flagged_where_no_cut_value_reaches_the_output(body):
    assert _cuts(body) == ()


def test_a_cut_in_the_middle_of_a_chain():
    cuts = _cuts("h = torch.sin(x)\nc = h.detach()\ny = torch.exp(c) * h")
    assert [c.kind for c in cuts] == [CutKind.DETACH]
    if POSITIONS:
        assert cuts[0].op == "h.detach()"
        assert cuts[0].constants == ("torch.exp(c)",)  # as written


def test_two_inputs_one_cut_names_only_the_cut_input():
    cuts = _cuts("y = x.detach() * w + w * x", inputs=("x", "w"))
    assert [c.inputs for c in cuts] == [("x",)]
    assert cut_inputs(cuts) == {"x"}
    assert "with respect to x" in cuts[0].plain()


def test_several_cuts_each_named_once():
    body = "d = x.detach()\ny = x*1\nfor _ in range(3):\n    y = y + d**2 + x.data.sin()"
    cuts = _cuts(body)
    assert [c.kind for c in cuts] == [CutKind.DETACH, CutKind.DATA]
    assert cuts[1].count == 3  # the loop ran .data three times: named once
    if POSITIONS:
        assert [c.op for c in cuts] == ["x.detach()", "x.data"]
        assert cuts[0].constants == ("d**2",) and cuts[1].constants == ("x.sin()",)


def test_from_numpy_of_the_cut_memory_is_followed():
    cuts = _cuts("y = torch.from_numpy(x.detach().numpy()) * x")
    assert [c.kind for c in cuts] == [CutKind.DETACH] and not cuts[0].guessed


def test_values_through_numpy_arithmetic_are_a_guess_said_as_one():
    cuts = _cuts("a = np.sin(x.detach().numpy())\ny = torch.tensor(a) * x")
    assert len(cuts) == 1 and cuts[0].guessed
    assert "if it holds them" in cuts[0].plain()


def test_no_record_no_cuts():
    x = torch.tensor([1., 2.], requires_grad=True)
    assert find_cuts(None, {"x": x}, x.detach() * x) == ()
