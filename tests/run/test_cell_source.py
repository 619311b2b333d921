"""The cell's own call line (``run/cell_source.py``): found, and rewritten keeping the rest
of the line; the names the cell assigns and the grads it never empties."""
from __future__ import annotations

import pytest

from vjp_magic.run import cell_source

# -- the user's own call line: found and rewritten -------------------------------------------------

FOUND_CALLS = [  # (line, kind, which output, style, y)
    ("y.backward()", "backward", 0, "method", "y"),
    ("(a + b).backward(retain_graph=True)", "backward", 0, "method", "a + b"),
    ("torch.autograd.backward([y, z], [g, h])", "backward", 1, "autograd.backward", "z"),
    ("torch.autograd.backward(tensors=y)", "backward", 0, "autograd.backward", "y"),
    ("(g,) = torch.autograd.grad(y, x)", "grad", 0, "grad", "y"),
    ("(g,) = grad(outputs=[y], inputs=[x])", "grad", 0, "grad", "y"),
]


@pytest.mark.parametrize("line, kind, index, style, y", FOUND_CALLS)
def test_find_call_reads_the_call_as_written(line, kind, index, style, y):
    site = cell_source.find_call(line, kind, index)
    assert site is not None and (site.style, site.y) == (style, y)


@pytest.mark.parametrize("line, kind", [
    ("y.backward(", "backward"),  # does not parse
    ("y.sum()", "backward"),  # no such call
    ("y.grad(x)", "grad"),  # a method named grad is not autograd.grad
    ("torch.autograd.grad(inputs=x)", "grad"),  # no outputs given
])
def test_find_call_finds_nothing_where_there_is_no_call(line, kind):
    assert cell_source.find_call(line, kind) is None


SET_ARGUMENTS = [  # (line, kind, keyword, value, position, expected)
    ("    y.backward()", "backward", "retain_graph", "True", None,
     "    y.backward(retain_graph=True)"),
    ("y.backward(v)", "backward", "retain_graph", "True", None,
     "y.backward(v, retain_graph=True)"),
    ("y.backward(v, retain_graph=False)", "backward", "retain_graph", "True", None,
     "y.backward(v, retain_graph=True)"),
    ("y.backward(torch.ones(3))", "backward", "gradient", "g", 0, "y.backward(g)"),
    ("y.backward(gradient=torch.ones(3))", "backward", "gradient", "g", 0,
     "y.backward(gradient=g)"),
    ("(g,) = torch.autograd.grad(y, x)", "grad", "grad_outputs", "v", 2,
     "(g,) = torch.autograd.grad(y, x, grad_outputs=v)"),
]


@pytest.mark.parametrize("line, kind, keyword, value, position, expected", SET_ARGUMENTS)
def test_set_argument_keeps_the_rest_of_the_line(line, kind, keyword, value, position, expected):
    assert cell_source.set_argument(line, kind, keyword, value, position) == expected


@pytest.mark.parametrize("line, kind, index, expected", [
    ("y.backward()", "backward", 0, "y.backward(gradient=O)"),
    ("torch.autograd.backward([y, z])", "backward", 1,
     "torch.autograd.backward([y, z], grad_tensors=[torch.ones_like(y), O])"),
    ("torch.autograd.backward([y, z], [g, h])", "backward", 0,
     "torch.autograd.backward([y, z], [O, h])"),
    ("grad([y], [x], grad_outputs=[q])", "grad", 0, "grad([y], [x], grad_outputs=[O])"),
])
def test_set_gradient_sets_the_failing_outputs_own_gradient(line, kind, index, expected):
    site = cell_source.find_call(line, kind, index)
    assert cell_source.set_gradient(line, kind, site, "O") == expected


def test_names_the_cell_assigns_and_grads_it_never_empties():
    source = ("y = x**2\nfor k in range(2):\n    y.backward(v)\n    print(x.grad, w.grad)\n"
              "w.grad = None")
    assert cell_source.assigned_in(source, "y") and cell_source.assigned_in(source, "k")
    assert not cell_source.assigned_in(source, "x") and not cell_source.assigned_in("y = (", "y")
    assert cell_source.grads_not_zeroed(source) == ["x"]
    assert cell_source.grads_not_zeroed("x.grad.zero_()\nprint(x.grad)") == []
