"""Every bad input gets a clear answer: a short message (a UsageError or a rendered note), no
traceback from inside the package, the cell's variables kept, x.grad untouched; our own bug
stays a real traceback."""
from __future__ import annotations

import re

import pytest
import torch
from coached import refused, unquoted
from IPython.core.error import UsageError
from torch.autograd.functional import jacobian as reference_jacobian

import vjp_magic.core.analysis
import vjp_magic.pipeline

# -- every bad input gets a clear answer -----------------------------------------------------

BAD_CELLS = {
    "no_requires_grad": ("", "x = torch.ones(3)\ny = x**2", ["requires_grad=True"]),
    "no_grad_block": ("", "x = torch.ones(3, requires_grad=True)\nwith torch.no_grad():\n"
                          "    y = x**2", ["no_grad"]),
    "no_grad_block_of": ("--of y", "x = torch.ones(3, requires_grad=True)\n"
                                   "with torch.no_grad():\n    y = x**2", ["no_grad"]),
    "detached": ("", "x = torch.ones(3, requires_grad=True)\ny = (x**2).detach()",
                 ["detach"]),
    "unknown_wrt": ("--wrt q", "x = torch.ones(3, requires_grad=True)\ny = x**2", ["'q'"]),
    "unknown_of": ("--of Y", "x = torch.ones(3, requires_grad=True)\ny = x**2",
                   ["'Y'", "Did you mean y?"]),
    "failing_of_expression": ("--of y.nope", "x = torch.ones(3, requires_grad=True)\ny = x**2",
                              ["y.nope", "AttributeError"]),
    "item_number": ("", "x = torch.ones(3, requires_grad=True)\ny = (x**2).sum().item()",
                    ["y is a Python float", ".item()"]),
    "number_of": ("--of y", "x = torch.ones(3, requires_grad=True)\ny = 3.0",
                  ["not a tensor"]),
    "integer_input": ("--wrt n", "x = torch.ones(3, requires_grad=True)\nn = torch.arange(3)\n"
                                 "y = x * n", ["torch.int64", "floating"]),
    "bool_input": ("--wrt b", "x = torch.ones(3, requires_grad=True)\n"
                              "b = torch.tensor([True, False, True])\ny = x * b",
                   ["torch.bool", "floating"]),
    "input_without_grad": ("--wrt w", "x = torch.ones(3, requires_grad=True)\n"
                                      "w = torch.ones(3)\ny = x * w", ["does not require grad"]),
    "complex_input": ("", "x = torch.ones(3, dtype=torch.cfloat, requires_grad=True)\n"
                          "y = x.abs()", ["complex", "x.real"]),
    "complex_output": ("", "x = torch.ones(3, requires_grad=True)\ny = x * 1j",
                       ["complex", "y.real"]),
    "empty_input_and_output": ("", "x = torch.zeros(0, requires_grad=True)\ny = x**2",
                               ["empty", "(0,)"]),
    "empty_output": ("", "x = torch.ones(3, requires_grad=True)\ny = x[:0] * 2",
                     ["empty", "(0,)"]),
    "empty_input": ("", "x = torch.zeros(0, 3, requires_grad=True)\ny = x.sum()",
                    ["empty", "(0, 3)"]),
    "two_outputs": ("--of y z", "x = torch.ones(3, requires_grad=True)\ny = x**2\nz = y",
                    ["one output"]),
    "too_large": ("--full", "x = torch.ones(3000, requires_grad=True)\ny = x**2",
                  ["memory budget"]),
}


@pytest.mark.parametrize("case", sorted(BAD_CELLS))
def test_bad_input_gets_a_short_message_and_loses_nothing(ip, usage_error, earlier_grad, case):
    line, body, words = BAD_CELLS[case]
    if case == "too_large":
        ip.run_line_magic("config", "VJPMagics.memory_budget = 10000")
    try:
        msg = usage_error(f"%%vjp {line}\n{body}")
    finally:
        ip.run_line_magic("config", "VJPMagics.memory_budget = 0.25")
    for word in words:
        assert word in msg, msg
    assert len(msg) < 600 and "Traceback" not in msg
    assert "x" in ip.user_ns  # the cell ran: everything it assigned is kept
    if "\ny = " in body:
        assert "y" in ip.user_ns
    x = ip.user_ns["x"]
    assert x.grad is None


def test_integer_tensor_with_requires_grad_is_pytorchs_own_error(ip):
    result = ip.run_cell("%%vjp\nx = torch.arange(3, requires_grad=True)\ny = x**2")
    assert isinstance(result.error_in_exec, RuntimeError)
    assert "floating point" in str(result.error_in_exec)


def test_output_not_depending_on_a_named_input(assert_tensor, run_vjp, earlier_grad):
    r = run_vjp("x = torch.ones(3, requires_grad=True)\n"
                "w = torch.ones(2, requires_grad=True)\ny = x**2", line="--wrt x w")
    assert_tensor(r.derivatives["w"], torch.zeros(3, 2))
    assert "y does not depend on w: every derivative is 0." in repr(r)
    assert "every derivative is 0" in unquoted(r._repr_mimebundle_()["text/markdown"])


def test_nan_and_inf_derivatives_are_rendered_and_flagged(assert_tensor, run_vjp):
    r = run_vjp("x = torch.tensor([0., 1., 4.], requires_grad=True)\ny = x.sqrt()")
    d = r.derivatives["x"]
    assert torch.isinf(d[0]) and d[0] > 0  # d√x/dx = 1/(2√x): +∞ at 0
    assert_tensor(d[1:], [0.5, 0.25])
    bundle = r._repr_mimebundle_()
    assert r"\infty" in bundle["text/latex"]
    assert all("have 1 infinite entry:" in bundle[k] for k in ("text/latex", "text/markdown"))
    assert "have 1 infinite entry:" in repr(r)
    r = run_vjp("x = torch.tensor([-1., 0., 1.], requires_grad=True)\n"
                "y = torch.sqrt(x) * 0 + x")
    # √x at -1 is NaN, and its derivative too; at 0, 0·∞ is NaN as well: 2 NaN entries
    assert torch.isnan(r.derivatives["x"][:2]).all()
    assert "NaN" in r._repr_mimebundle_()["text/latex"] and "have 2 NaN entries:" in repr(r)


def test_nan_and_inf_note_counts_each_kind():
    from vjp_magic import differentiate

    # d√x/dx = 1/(2√x): NaN at -1 (outside the domain), +∞ at 0, finite at 4
    x = torch.tensor([-1., 0., 4.], requires_grad=True)
    (note,) = differentiate(x.sqrt(), x).notes
    assert "have 1 NaN entry and 1 infinite entry:" in note
    x = torch.tensor([-1., -2., 0., 0., 0.], requires_grad=True)
    (note,) = differentiate(x.sqrt(), x).notes
    assert "have 2 NaN entries and 3 infinite entries:" in note


def test_finite_derivatives_have_no_note(run_vjp):
    r = run_vjp("x = torch.tensor([1., 4.], requires_grad=True)\ny = x.sqrt()")
    assert not r.notes


def test_syntax_error_is_shown_as_ipython_shows_it(ip):
    result = ip.run_cell("%%vjp\nx = torch.ones(3, requires_grad=True)\ny = (x**2")
    assert type(result.error_in_exec).__name__ == "SyntaxError"  # shown exactly as IPython does
    assert "x" not in ip.user_ns  # nothing ran, as in a normal cell


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_low_precision_elementwise(assert_tensor, run_vjp, dtype):
    r = run_vjp(f"x = torch.linspace(-2, 2, 5, dtype=torch.{dtype}, requires_grad=True)\n"
                "y = x**2")
    assert r.point_axes["x"] == ((0, 0),)
    assert r.derivatives["x"].dtype == getattr(torch, dtype)
    assert_tensor(r.derivatives["x"], [-4.0, -2.0, 0.0, 2.0, 4.0])  # exact in both dtypes
    markdown = r._repr_mimebundle_()["text/markdown"]
    assert re.search(r"-4\s*&\s*-2\s*&\s*0\s*&\s*2\s*&\s*4\b", markdown), markdown
    assert dtype in markdown


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("case", ["softmax", "row_softmax", "rows_matmul", "components"])
def test_low_precision_structure_and_values(dtype, case):
    from vjp_magic import differentiate

    torch.manual_seed(0)
    low = getattr(torch, dtype)
    B = torch.randn(4, 3, dtype=torch.float64)
    fns = {
        "softmax": (lambda x: torch.softmax(x, 0), (5,), ()),
        "row_softmax": (lambda x: torch.softmax(x, 1), (5, 7), ((0, 0),)),
        "rows_matmul": (lambda x: torch.tanh(x @ B.to(x.dtype)), (6, 4), ((0, 0),)),
        "components": (lambda x: torch.stack([x.sum(1), (x**2).sum(1)]), (5, 7), ((1, 0),)),
    }
    fn, shape, axes = fns[case]
    x64 = torch.randn(shape, dtype=torch.float64)
    x = x64.to(low).requires_grad_(True)
    r = differentiate(fn(x), x)
    assert r.point_axes["x"] == axes
    ref = reference_jacobian(fn, x.detach().double())  # the exact Jacobian at the same point
    tol = 3e-2 if dtype == "bfloat16" else 4e-3
    torch.testing.assert_close(r.jacobian("x").double(), ref, rtol=tol, atol=tol)
    r._repr_mimebundle_(), repr(r)  # renders


def test_our_own_bug_is_a_real_traceback(ip, monkeypatch):
    def broken(*args, **kwargs):
        return 1 / 0

    monkeypatch.setattr(vjp_magic.core.analysis, "differentiate", broken)
    result = ip.run_cell("%%vjp\nx = torch.ones(3, requires_grad=True)\ny = x**2")
    assert isinstance(result.error_in_exec, ZeroDivisionError)
    assert not isinstance(result.error_in_exec, UsageError)
    assert "y" in ip.user_ns


# -- the output's graph changed in place after it was computed ---------------------------------

IN_PLACE_CELLS = [
    ("", "%%vjp\nw = torch.tensor([1., 2.], requires_grad=True)\nloss = (w**3).sum()\n"
         "loss.backward()\nwith torch.no_grad():\n    w -= 0.1 * w.grad", "loss", "w"),
    ("b = torch.tensor([0.5, 1.5], requires_grad=True)",
     "%%vjp\nenergy = (b * b).mean()\nwith torch.no_grad():\n    b.mul_(0.5)", "energy", "b"),
    ("s = torch.tensor([2., 3.], requires_grad=True)\nr2 = s.pow(2)\n"
     "with torch.no_grad():\n    s.add_(1)", "%jacobian r2 wrt s", "r2", "s"),
]


@pytest.mark.parametrize("setup, cell, output, changed", IN_PLACE_CELLS)
def test_graph_modified_in_place_says_what_to_do(ip, run_ok, capsys, setup, cell, output, changed):
    if setup:
        run_ok(setup)
    msg = refused(ip, capsys, cell, keep=[output, changed])
    grads = ip.user_ns[changed].grad
    for word in [f"{output} can no longer be differentiated", f"({changed})",
                 "modified in place", "after the update", "later cell"]:
        assert word in msg, msg
    assert "inplace operation" not in msg  # PyTorch's wording is explained, not repeated
    assert ip.run_cell(f"{changed}.grad").result is grads  # the magic left .grad alone
