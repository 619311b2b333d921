"""The order of several inputs' answers (G14's s34 review, findings 1 and 2): the classic
swapped ∂/∂x, ∂/∂w of a product is ✗, whatever order is tried; another order is right only
where it is the cell's binding order (the student need not know it) and the answers' shapes
fit no other order. An order the user gave (a dict, names in order) is never permuted.

Expected values from mathematics: y = x * w has dy/dx = w, dy/dw = x."""
import torch

import vjp_magic


def _xw(n_x=3, n_w=3):
    x = torch.linspace(1.0, 2.0, n_x, requires_grad=True)
    w = torch.linspace(3.0, 5.0, n_w, requires_grad=True)
    return x, w


def test_swapped_partials_of_a_product_are_wrong_and_the_order_read_is_said():
    x, w = _xw()
    y = x * w
    # (dy/dw, dy/dx) where the inputs are {"x", "w"}: the classic swap
    verdict = vjp_magic.check((x.detach(), w.detach()), y, {"x": x, "w": w})
    assert not verdict.correct
    assert "with respect to w, x, in that order" in verdict.hint, verdict.hint
    assert "says which is which" in verdict.hint


def test_partials_of_a_product_in_the_order_given_are_right():
    x, w = _xw()
    y = x * w
    assert vjp_magic.check((w.detach(), x.detach()), y, {"x": x, "w": w}).correct
    assert vjp_magic.check({"w": x.detach(), "x": w.detach()}, y, {"x": x, "w": w}).correct


def test_an_order_given_is_not_permuted_even_where_the_shapes_say_another():
    x, w = _xw(2, 3)
    y = x.sum() * w.sum()  # dy/dx = sum(w) = 12 (shape 2), dy/dw = sum(x) = 3 (shape 3)
    answer = (torch.full((3,), 3.0), torch.full((2,), 12.0))  # (dy/dw, dy/dx)
    verdict = vjp_magic.check(answer, y, {"x": x, "w": w})
    assert not verdict.correct
    assert "with respect to w, x, in that order" in verdict.hint, verdict.hint


def test_against_f_with_inputs_given_in_order_catches_swapped_arguments():
    x, w = _xw()

    def f(a, b):
        return a**2 * b

    y = w**2 * x  # the student's y: f(w, x), the exercise asks f(x, w)
    verdict = vjp_magic.check(2 * x.detach() * w.detach(), f, {"x": x, "w": w}, y=y)
    assert not verdict.correct
    assert verdict.kind == "output-differs", verdict.hint


W_FIRST = """w = torch.tensor([3., 5.], requires_grad=True)
x = torch.tensor([1., 2.], requires_grad=True)
y = w * x**2
ans = ((2 * x * w).detach(), (x**2).detach())  # (dy/dx, dy/dw), the cell binds w first"""


def test_a_cells_binding_order_is_not_permuted_where_the_shapes_are_one(run_vjp):
    r = run_vjp(W_FIRST, "--check ans")
    assert not r.check.correct  # x, w of one shape: which is which only a dict says
    assert "with respect to x, w, in that order, where the inputs are w, x" in r.check.hint, \
        r.check.hint
    assert "{'x': ..., 'w': ...}" in r.check.hint


def test_the_order_named_by_wrt_is_graded_in_that_order(run_vjp):
    assert run_vjp(W_FIRST, "--check ans --wrt x w").check.correct


W_FIRST_SHAPES = """w = torch.tensor([3., 5., 7.], requires_grad=True)
x = torch.tensor([1., 2.], requires_grad=True)
y = w.sum() * x.sum()
ans = (torch.full((2,), 15.), torch.full((3,), 3.))  # (dy/dx, dy/dw): only x, w fits"""

def test_a_cells_binding_order_is_read_another_way_where_only_that_fits(run_vjp):
    r = run_vjp(W_FIRST_SHAPES, "--check ans")
    assert r.check.correct, r.check.hint
    assert "Right: ans holds the derivatives with respect to x, w" in r.check.hint


def test_against_in_the_cells_binding_order_says_which_order_y_matches(ip, run_ok, run_vjp):
    run_ok("def g(a, b):\n    return a**2 * b")
    r = run_vjp(W_FIRST, "--check ans --against g")
    assert not r.check.correct  # not a silent ✓: which order g means, only --wrt says
    assert "matches g(x, w), not g(w, x)" in " ".join(r.check.hint.split()), r.check.hint
    assert "--wrt x w" in r.check.hint


def test_against_with_the_order_named_by_wrt_is_right(ip, run_ok, run_vjp):
    run_ok("def g(a, b):\n    return a**2 * b")
    r = run_vjp(W_FIRST, "--check ans --against g --wrt x w")
    assert torch.equal(r.output, ip.user_ns["g"](ip.user_ns["x"], ip.user_ns["w"]))
    assert r.check.correct, r.check.hint
