"""What the analysis leaves of a graph with a custom ``autograd.Function``, and what a custom
backward that raises for the analysis' gradients makes of a cell (s41, F3: R1-8 and R1-9).

R1-8's class: a graph the cell's own backward freed, kept for the analysis, must be freed
after it as a plain cell leaves it (the user's next backward through it raises PyTorch's own
error), without calling the user's backward or hooks again; a graph the user kept
(``retain_graph=True``) stays usable; a ``backward(inputs=...)`` frees only its own nodes.
R1-9's class: an error the user's backward raises when the analysis (not the cell) calls
it is a short refusal naming the backward, from every entry point. Expected values: a
plain run of the same cells, and mathematics.
"""
from __future__ import annotations

import pytest
import torch

import vjp_magic
from vjp_magic.run.passes import free_graph

_COUNTED = """
calls = []
class Cube(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a ** 3 * b
    @staticmethod
    def backward(ctx, g):
        calls.append(1)
        a, b = ctx.saved_tensors
        return 3 * a ** 2 * b * g, a ** 3 * g
hooked = []
x = torch.linspace(-1, 1, 5, requires_grad=True)
w = torch.full((5,), 2.0, requires_grad=True)
"""


def _twin(ip, body: str, later: str, line: str | None):
    """(error name of ``later``, x.grad after the cell, x.grad after ``later``, hook calls)
    for ``body`` run plainly (``line`` None) or under ``%%vjp line`` (which may refuse the
    analysis: the cell ran all the same)."""
    assert ip.run_cell(_COUNTED).success
    result = ip.run_cell(body if line is None else f"%%vjp {line}\n{body}")
    assert result.success or type(result.error_in_exec).__name__ == "UsageError"
    first = ip.user_ns["x"].grad.clone()
    result = ip.run_cell(later)
    error = type(result.error_in_exec).__name__ if result.error_in_exec else None
    grad = ip.user_ns["x"].grad
    return error, first, None if grad is None else grad.clone(), len(ip.user_ns["hooked"])


def _same_as_plain(ip, body: str, later: str, line: str = ""):
    plain = _twin(ip, body, later, None)
    ip.run_cell("%reset -f")
    ip.run_cell("import torch")
    magic = _twin(ip, body, later, line)
    assert magic[0] == plain[0]
    torch.testing.assert_close(magic[1], plain[1])
    torch.testing.assert_close(magic[2], plain[2])
    assert magic[3] == plain[3]
    return plain


_FREED = "h = Cube.apply(x, w)\ny1 = h * x.sin()\ny2 = y1.sin()\ny2.sum().backward()"


@pytest.mark.parametrize("line", ["", "--wrt x", "--gradcheck"])
def test_a_two_input_functions_graph_freed_by_the_cell_is_freed_after_it(ip, line):
    plain = _same_as_plain(ip, _FREED, "y1.sum().backward()", line)
    assert plain[0] == "RuntimeError"


@pytest.mark.parametrize("on", ["h", "x"])
@pytest.mark.parametrize("later", ["h.grad_fn.saved_tensors", "y.sum().backward()"])
def test_a_hook_on_the_way_runs_as_often_as_in_a_plain_cell(ip, on, later):
    """(The analysis refuses the hooked graph; freeing it after must run the hook neither,
    and free it all.)"""
    body = f"h = Cube.apply(x, w)\n{on}.register_hook(lambda g: hooked.append(1))\n" \
           "y = (h * x.sin()).sin()\ny.sum().backward()"
    plain = _same_as_plain(ip, body, later)
    assert plain[0] == "RuntimeError"
    assert plain[3] == 1  # the cell's own backward only


def test_a_retained_gradient_is_the_tensor_the_cells_backward_left(ip):
    body = "h = Cube.apply(x, w)\nh.retain_grad()\ny = (h * x.sin()).sin()\n" \
           "y.sum().backward()\nhg = h.grad"
    plain = _same_as_plain(ip, body, "assert h.grad is hg\ny.sum().backward()")
    assert plain[0] == "RuntimeError"  # (not AssertionError: the same .grad object)


def test_a_graph_the_user_kept_stays_usable(ip):
    body = _FREED.replace("backward()", "backward(retain_graph=True)")
    plain = _same_as_plain(ip, body, "y1.sum().backward()")
    assert plain[0] is None
    x = torch.linspace(-1, 1, 5)
    a = 2 * x ** 3 * x.sin()  # d/dx of y1 = 2 x^3 sin x
    da = 6 * x ** 2 * x.sin() + 2 * x ** 3 * x.cos()
    expected = torch.cos(a) * da + da  # the cell's pass through sin, then y1's own
    torch.testing.assert_close(plain[2], expected)


@pytest.mark.parametrize("node, error", [(0, "RuntimeError"), (1, None)])
def test_a_backward_toward_some_inputs_frees_only_their_nodes(ip, node, error):
    body = "y = Cube.apply(x, w) + Cube.apply(w, w)\nz = y.sin()\nz.sum().backward(inputs=[x])"
    plain = _same_as_plain(ip, body, f"y.grad_fn.next_functions[{node}][0].saved_tensors")
    assert plain[0] == error  # the second Cube's node has no way to x: never run nor freed


def test_free_graph_calls_no_backward_and_no_hook_and_frees_the_saved_tensors():
    calls, hooked = [], []

    class Square(torch.autograd.Function):
        @staticmethod
        def forward(ctx, a):
            ctx.save_for_backward(a)
            return a ** 2

        @staticmethod
        def backward(ctx, g):
            calls.append(1)
            (a,) = ctx.saved_tensors
            return 2 * a * g

    x = torch.linspace(-1, 1, 4, requires_grad=True)
    h = x.exp()
    s = Square.apply(h)
    m = s * x
    m.retain_grad()
    y = m.sin()
    x.register_hook(lambda g: hooked.append(1))
    m.register_hook(lambda g: hooked.append(2))
    node = s.grad_fn
    free_graph([y], None, [m])  # (m: one of the cell's tensors, as its record holds it)
    assert calls == [] and hooked == [] and x.grad is None and m.grad is None
    assert "apply" not in vars(node)  # the stand-in is taken away again
    for read in (lambda: node.saved_tensors, lambda: h.grad_fn._saved_result,
                 lambda: y.grad_fn._saved_self):
        with pytest.raises(RuntimeError, match="second time"):
            read()


# -- R1-9's class: the user's backward raising for the analysis' gradients -------------------

class Picky(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a):
        ctx.save_for_backward(a)
        return a ** 2

    @staticmethod
    def backward(ctx, g):
        if (g == 0).any():
            raise ValueError("picky backward: a zero in g")
        (a,) = ctx.saved_tensors
        return 2 * a * g


class Fussy(torch.autograd.Function):
    """A second kind: two inputs, a TypeError of the user's own."""

    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a * b

    @staticmethod
    def backward(ctx, g):
        if g.abs().max() < 2:
            raise TypeError("fussy: small gradients are not welcome")
        a, b = ctx.saved_tensors
        return b * g, a * g


def _outputs():
    x = torch.linspace(-1, 1, 5, requires_grad=True)
    return x, {"picky": Picky.apply(x.exp()) * 1, "fussy": Fussy.apply(x, x.cos()) + x}


_ENTRIES = {
    "differentiate": lambda y, x: vjp_magic.differentiate(y, [x]),
    "dependency": lambda y, x: vjp_magic.dependency(y, x),
    "hessian": lambda y, x: vjp_magic.hessian(y, [x]),
}


@pytest.mark.parametrize("entry", sorted(_ENTRIES))
@pytest.mark.parametrize("kind", ["picky", "fussy"])
def test_every_entry_point_refuses_by_name_and_leaves_the_graph_usable(entry, kind):
    x, outputs = _outputs()
    y = outputs[kind]
    with pytest.raises(vjp_magic.VJPUsageError) as caught:
        _ENTRIES[entry](y, x)
    name = {"picky": "Picky", "fussy": "Fussy"}[kind]
    assert str(caught.value).startswith(f"{name}'s backward raised"), str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    y.backward(torch.full_like(y, 3.0))  # the graph is as the user left it
    t = torch.linspace(-1, 1, 5)
    expected = 3 * 2 * t.exp() ** 2 if kind == "picky" else 3 * (t.cos() - t * t.sin() + 1)
    torch.testing.assert_close(x.grad, expected)


def test_a_magic_cell_with_the_second_kind_is_refused_by_name(ip):
    ip.user_ns["Fussy"] = Fussy
    assert ip.run_cell("x = torch.linspace(-1, 1, 5, requires_grad=True)").success
    result = ip.run_cell("%%vjp\ny = Fussy.apply(x, x.cos()) + x")
    assert type(result.error_in_exec).__name__ == "UsageError"
    assert "Fussy's backward raised TypeError" in str(result.error_in_exec)
    assert ip.run_cell("y.backward(torch.full_like(y, 3.0))").success
    t = torch.linspace(-1, 1, 5)
    torch.testing.assert_close(ip.user_ns["x"].grad, 3 * (t.cos() - t * t.sin() + 1))


class Square(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a):
        ctx.save_for_backward(a)
        return a ** 2

    @staticmethod
    def backward(ctx, g):
        (a,) = ctx.saved_tensors
        return 2 * a * g


def test_autograds_own_error_inside_a_backward_is_not_blamed_on_it():
    """A saved tensor read after its graph was freed raises autograd's error inside the
    backward: still autograd's (the analysis judges it), not a refusal naming the backward."""
    x = torch.linspace(1, 2, 3, requires_grad=True)
    y = Square.apply(x) + 0
    y.sum().backward()  # frees the graph
    with pytest.raises(Exception) as caught:
        vjp_magic.differentiate(y, [x])
    assert "Square's backward raised" not in str(caught.value)
