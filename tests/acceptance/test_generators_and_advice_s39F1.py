"""G28-1 and G28-3, each as a class (session 39, F1).

G28-1: a custom Function's backward is the user's code, and every pass of the analysis calls
it; one that draws random numbers (torch's CPU generator, each CUDA device's, Python's
``random``, numpy's global one) must leave every generator, after any entry point, as a
plain run leaves it. The backward here draws from all of them and returns the right
derivative (the draws times 0), so each analysis runs to its end; a file it writes a line
to at each call shows that the analysis did call it (else the test could not fail): a list
it appended to, as here before session 43, is put back after the analysis like any Python
state the backward reaches (R1-2: a plain run calls no backward), a file is beyond reach.

G28-3: a refusal's advice depends on where the user is (a %%vjp cell, %jacobian, a function
or a tensor given from Python, dependency / sparse_jacobian) and names an action that works
there: each advice followed, where it names one, gives the derivatives.
"""
from __future__ import annotations

import pathlib
import random
import tempfile

import numpy
import pytest
import torch
from torch.utils.checkpoint import checkpoint

import vjp_magic
from vjp_magic.symbolic.rules_shape import RULES

CALLS = pathlib.Path(tempfile.mkdtemp(prefix="vjp_s39F1_")) / "calls"  # a line per call


class Drawing(torch.autograd.Function):
    """x**2 whose backward draws from every global generator (and adds the draws times 0)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x ** 2

    @staticmethod
    def backward(ctx, g):
        x, = ctx.saved_tensors
        with CALLS.open("a") as f:
            f.write("1\n")
        noise = torch.rand_like(x) + random.random() + float(numpy.random.rand())
        if x.is_cuda:
            noise = noise + torch.rand_like(x)
        return 2 * g * x + 0 * noise


def _states() -> tuple:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else []
    return torch.get_rng_state(), random.getstate(), numpy.random.get_state(), cuda


def _assert_states(got: tuple, expected: tuple) -> None:
    assert torch.equal(got[0], expected[0]), "torch's CPU generator"
    assert got[1] == expected[1], "Python's random"
    assert got[2][0] == expected[2][0] and numpy.array_equal(got[2][1], expected[2][1]) \
        and got[2][2:] == expected[2][2:], "numpy's global RandomState"
    assert len(got[3]) == len(expected[3]) and all(
        torch.equal(a, b) for a, b in zip(got[3], expected[3])), "the CUDA generators"


def _x(device="cpu"):
    return torch.linspace(1., 2., 5, dtype=torch.float64, device=device).requires_grad_(True)


ENTRY_POINTS = {
    "differentiate a tensor": lambda x: vjp_magic.differentiate(Drawing.apply(x), x),
    "differentiate a function": lambda x: vjp_magic.differentiate(
        lambda: Drawing.apply(x).sin(), x),
    "hessian": lambda x: vjp_magic.hessian(Drawing.apply(x).sum(), x),
    "dependency": lambda x: vjp_magic.dependency(Drawing.apply(x), x),
    "sparse_jacobian": lambda x: vjp_magic.sparse_jacobian(Drawing.apply(x), x),
    "check": lambda x: vjp_magic.check(2 * x.detach(), Drawing.apply(x), x),
}


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_every_python_entry_point_leaves_every_generator_as_found(entry):
    """The forward draws nothing: a plain run leaves the generators as they were before."""
    x = _x()
    torch.manual_seed(3), random.seed(3), numpy.random.seed(3)
    before = _states()
    CALLS.unlink(missing_ok=True)
    ENTRY_POINTS[entry](x)
    assert CALLS.exists(), "the analysis called the custom backward"
    _assert_states(_states(), before)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_a_backward_drawing_on_cuda_leaves_the_cuda_generators_as_found():
    x = _x("cuda")
    torch.cuda.manual_seed_all(3)
    before = _states()
    CALLS.unlink(missing_ok=True)
    vjp_magic.differentiate(Drawing.apply(x), x)
    assert CALLS.exists()
    _assert_states(_states(), before)


def test_the_generators_are_restored_when_the_analysis_fails():
    """An error in the analysis (a refusal raised from a pass) leaves them as found too."""
    x = _x()
    h = x * 2
    h.register_hook(lambda g: g)  # the pass would call it: refused mid-analysis
    y = Drawing.apply(x) + Drawing.apply(h)
    before = _states()
    with pytest.raises(vjp_magic.VJPUsageError):
        vjp_magic.differentiate(y, x)
    _assert_states(_states(), before)


CELL = "x = torch.linspace(1., 2., 5, requires_grad=True)\n"


@pytest.mark.parametrize("magic", [
    "%%vjp\n" + CELL + "y = Drawing.apply(x)",
    "%%vjp --gradcheck\n" + CELL + "y = Drawing.apply(x).sum()",
    "%jacobian Drawing.apply(x) wrt x",
    "%hessian Drawing.apply(x).sum() wrt x",
])
def test_every_magic_leaves_every_generator_as_a_plain_cell(ip, run_ok, magic):
    ip.user_ns.update(Drawing=Drawing, random=random, numpy=numpy)
    run_ok(CELL)
    run_ok("torch.manual_seed(1); random.seed(1); numpy.random.seed(1)")
    if magic.startswith("%%"):
        run_ok(magic.split("\n", 1)[1])  # the plain cell
    plain = _states()
    run_ok("torch.manual_seed(1); random.seed(1); numpy.random.seed(1)")
    CALLS.unlink(missing_ok=True)
    run_ok(magic)
    assert CALLS.exists()
    _assert_states(_states(), plain)


@pytest.mark.parametrize("rule", ["rand_like", "randn_like"])
def test_the_symbolic_random_constants_draw_from_no_user_generator(rule):
    before = torch.get_rng_state()
    RULES[rule](torch.zeros(3, 2))
    assert torch.equal(torch.get_rng_state(), before)


# -- G28-3: advice from where the user is ------------------------------------------------------

class Exp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        y = x.exp()
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, g):
        y, = ctx.saved_tensors
        return g * y


def _hooked(x, custom: bool):
    h = x * 2
    h.register_hook(lambda g: g)
    return Exp.apply(h) if custom else torch.sin(h)


def _refused(call) -> str:
    with pytest.raises(vjp_magic.VJPUsageError) as error:
        call()
    return str(error.value)


@pytest.mark.parametrize("entry", ["differentiate", "hessian"])
def test_a_hook_on_a_given_tensor_is_refused_with_advice_that_works(entry):
    """From Python, a tensor given: pass a function (the entry called named), which works."""
    x = _x()
    function = getattr(vjp_magic, entry)
    text = _refused(lambda: function(_hooked(x, False).sum(), x))
    assert f"{entry}(lambda: f(x), x)" in text and "%%vjp" not in text
    r = function(lambda: _hooked(x, False).sum(), x)  # the advice followed
    def f(v):
        return torch.sin(2 * v).sum()
    if entry == "differentiate":
        torch.testing.assert_close(r.jacobian("x"), torch.func.jacrev(f)(x.detach()))
    else:
        torch.testing.assert_close(r.hessian("x"), torch.func.hessian(f)(x.detach()))


@pytest.mark.parametrize("call", [
    lambda x: vjp_magic.differentiate(_hooked(x, True), x),
    lambda x: vjp_magic.differentiate(lambda: _hooked(x, True), x),
    lambda x: vjp_magic.hessian(lambda: _hooked(x, True).sum(), x),
    lambda x: vjp_magic.dependency(_hooked(x, True), x),
    lambda x: vjp_magic.sparse_jacobian(_hooked(x, True), x),
], ids=["tensor, custom", "function, custom", "hessian function, custom", "dependency, custom",
        "sparse_jacobian, custom"])
def test_where_no_replay_helps_the_advice_is_to_remove_the_hook(call):
    text = _refused(lambda: call(_x()))
    assert "differentiate(lambda" not in text and "%%vjp" not in text
    assert "Remove the hook" in text


@pytest.mark.parametrize("entry", ["dependency", "sparse_jacobian"])
def test_a_hook_given_to_an_entry_without_a_record_advises_differentiate_that_works(entry):
    """dependency and sparse_jacobian differentiate the graph given: their advice names
    differentiate with a function for the derivatives (no cell: they are called from Python),
    and removing the hook; the function's derivatives are the Jacobian."""
    x = _x()
    text = _refused(lambda: getattr(vjp_magic, entry)(_hooked(x, False), x))
    assert "differentiate(lambda: f(x), x)" in text and "remove the hook" in text
    assert "%%vjp" not in text
    r = vjp_magic.differentiate(lambda: _hooked(x, False), x)
    torch.testing.assert_close(r.jacobian("x"),
                               torch.func.jacrev(lambda v: torch.sin(2 * v))(x.detach()))


def test_jacobian_of_a_hooked_plain_cell_tensor_advises_a_cell_that_works(ip, run_ok,
                                                                         usage_error):
    run_ok(CELL + "h = x * 2\nh.register_hook(lambda g: g)\ny = torch.sin(h)")
    text = usage_error("%jacobian y x")
    assert "%%vjp cell" in text and "differentiate(lambda" not in text
    r = run_ok("%%vjp\n" + CELL + "h = x * 2\nh.register_hook(lambda g: g)\ny = torch.sin(h)")
    torch.testing.assert_close(r.derivatives["x"], 2 * torch.cos(2 * ip.user_ns["x"].detach()))


def test_jacobian_with_a_custom_function_and_a_hook_advises_no_cell(ip, run_ok, usage_error):
    ip.user_ns["Exp"] = Exp
    run_ok(CELL + "h = x * 2\nh.register_hook(lambda g: g)\ny = Exp.apply(h)")
    for source in ("%jacobian y x", "%%vjp\ny = Exp.apply(h)"):
        text = usage_error(source)
        assert "%%vjp cell" not in text and "differentiate(lambda" not in text, source
        assert "Remove the hook" in text


@pytest.mark.parametrize("where", ["tensor", "function", "cell"])
def test_a_checkpoint_around_a_custom_function_advises_no_replay(ip, usage_error, where):
    """A non-reentrant checkpoint runs its block again in each pass; with a custom Function
    on the graph no replay stands for it: only computing it without checkpoint helps."""
    x = _x()

    def block(v):
        return Exp.apply(v).sin()
    if where == "cell":
        ip.user_ns.update(Exp=Exp, checkpoint=checkpoint)
        text = usage_error("%%vjp\n" + CELL + "y = checkpoint(lambda v: Exp.apply(v).sin(), x, "
                           "use_reentrant=False)")
    else:
        made = lambda: checkpoint(block, x, use_reentrant=False)  # noqa: E731
        text = _refused(lambda: vjp_magic.differentiate(made() if where == "tensor" else made,
                                                        x))
    assert "%%vjp cell" not in text and "differentiate(lambda" not in text
    assert "without torch.utils.checkpoint" in text


def test_a_checkpoint_given_as_a_tensor_advises_a_function_that_works():
    x = _x()
    text = _refused(lambda: vjp_magic.differentiate(
        checkpoint(torch.sin, x, use_reentrant=False), x))
    assert "differentiate(lambda: f(x), x)" in text and "%%vjp" not in text
    r = vjp_magic.differentiate(lambda: checkpoint(torch.sin, x, use_reentrant=False), x)
    torch.testing.assert_close(r.derivatives["x"], torch.cos(x.detach()))


def _multi_grad_hooked(x, custom: bool):
    torch.autograd.graph.register_multi_grad_hook((x,), lambda grads: None)
    return Exp.apply(x) if custom else torch.sin(x)


def test_a_multi_grad_hook_from_python_advises_a_function_not_a_cell():
    x = _x()
    text = _refused(lambda: vjp_magic.differentiate(_multi_grad_hooked(x, False), x))
    assert "differentiate(lambda: f(x), x)" in text and "%%vjp" not in text


def test_a_multi_grad_hook_beside_a_custom_function_advises_removing_it(ip, usage_error):
    ip.user_ns["Exp"] = Exp
    text = usage_error("%%vjp\n" + CELL + "torch.autograd.graph.register_multi_grad_hook("
                       "(x,), lambda grads: None)\ny = Exp.apply(x)")
    assert "%%vjp cell" not in text and "differentiate(lambda" not in text
    assert "Remove it first" in text


@pytest.mark.parametrize("message", ["hook", "checkpoint"])
def test_no_refusal_says_the_analysis_runs_none_of_the_users_code(message):
    """A custom Function's backward is the user's code and the passes call it: the refusals
    say so (G28-1's message)."""
    x = _x()
    y = _hooked(x, True) if message == "hook" else \
        checkpoint(lambda v: Exp.apply(v).sin(), x, use_reentrant=False)
    text = _refused(lambda: vjp_magic.differentiate(y, x))
    assert "runs none of your code" not in text
    assert "custom autograd.Function's backward" in text


def test_an_undecided_grade_in_a_cell_advises_what_works_in_a_cell(ip, run_ok):
    """y = x − sin x at 1e-3 from an earlier plain cell (nothing recorded to replay in
    float64): an answer 10% off is undecided; the hint names --against f (the cell's form,
    not Python's check(answer, f, x), nor a %%vjp cell: the user is in one), and --against f
    decides it, against d/dx (x − sin x) = 2 sin²(x/2)."""
    run_ok("x = torch.tensor([1e-3], requires_grad=True)\ny = x - torch.sin(x)\n"
           "f = lambda x: x - torch.sin(x)")
    answer = "ans = (1.1 * 2 * torch.sin(torch.tensor([1e-3], dtype=torch.float64) / 2) ** 2)" \
        ".float()"
    verdict = run_ok("%%vjp --of y --check ans\n" + answer).check
    assert verdict.kind == "undecided", verdict.hint
    assert "--against f" in verdict.hint and "check(answer" not in verdict.hint
    assert "%%vjp" not in verdict.hint
    decided = run_ok("%%vjp --of y --check ans --against f\n" + answer).check
    assert decided.kind != "undecided" and not decided.correct, decided.hint
