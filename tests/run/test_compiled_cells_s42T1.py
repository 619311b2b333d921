"""A ``torch.compile``'d function in ``%%vjp`` cells and the function forms (R1-4's class: the
recorder, a function mode, must not be visible to torch.compile's guards).

Inside a recorded run the compiled functions run as plain Python (``force_eager``), so the
user's compile cache is neither invalidated nor given an entry guarded on the recorder; the
derivatives are those of the function's eager ops. Expected numbers: ``torch.func.jacrev``
and ``torch.func.hessian`` of the uncompiled function; expected frame counts: what a plain
cell compiles (one frame, reused).
"""
from __future__ import annotations

import pytest
import torch

import vjp_magic

pytestmark = pytest.mark.skipif(not hasattr(torch.compiler, "set_stance"),
                                reason="torch.compiler stances came in torch 2.6")

_COMPILED = """
def g(t):
    return torch.nn.functional.pad(t.sin(), (1, 1))[2:] * t

f = torch.compile(g, backend="eager")
"""
_BODY = "x = torch.linspace(-1, 1, 6, requires_grad=True)\ny = f(x)"


def _g(t):
    return torch.nn.functional.pad(t.sin(), (1, 1))[2:] * t


@pytest.fixture
def frames():
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    yield lambda: counters["frames"]["total"]
    torch._dynamo.reset()
    counters.clear()


def test_ten_vjp_cells_compile_nothing_and_each_is_the_jacobian(ip, run_ok, frames):
    run_ok(_COMPILED)
    run_ok(_BODY)
    assert frames() == 1
    expected = torch.func.jacrev(_g)(torch.linspace(-1, 1, 6))
    for line in ["", "--explain", "--gradcheck", "--symbolic", "--full"] * 2:
        r = run_ok(f"%%vjp {line}\n{_BODY}")
        torch.testing.assert_close(r.jacobian("x"), expected)
    assert frames() == 1
    run_ok(_BODY)  # the plain call after them: the entry compiled before still serves
    assert frames() == 1


def test_a_compiled_module_is_not_compiled_again_by_vjp(ip, run_ok, frames):
    run_ok("torch.manual_seed(0)\nnet = torch.nn.Linear(3, 2)\n"
           "cnet = torch.compile(net, backend='eager')\nx = torch.randn(4, 3)")
    run_ok("y = cnet(x)")
    run_ok("y = cnet(x)")
    assert frames() == 1
    r = run_ok("%%vjp --wrt net\ny = cnet(x)")
    x = ip.user_ns["x"]
    weight = ip.user_ns["net"].weight.detach()
    expected = torch.func.jacrev(lambda w: x @ w.T)(weight)  # the bias adds no term in w
    torch.testing.assert_close(r.jacobian("net.weight"), expected)
    run_ok("y = cnet(x)")
    assert frames() == 1


def test_the_users_own_stance_is_in_force_after_a_vjp_cell(ip, run_ok, frames):
    run_ok(_COMPILED)
    run_ok(_BODY)
    run_ok("torch.compiler.set_stance('fail_on_recompile')")
    try:
        run_ok(f"%%vjp\n{_BODY}")
        failed = ip.run_cell("f(torch.linspace(-1, 1, 9).reshape(3, 3))")  # a new shape
        assert failed.error_in_exec is not None  # the user's stance refused the recompile
        assert "recompile" in str(failed.error_in_exec).lower()
    finally:
        torch.compiler.set_stance("default")


def test_the_function_forms_compile_nothing_and_are_exact(frames):
    f = torch.compile(_g, backend="eager")
    x = torch.linspace(-1.0, 1.0, 5, requires_grad=True)
    f(x)
    assert frames() == 1
    h = vjp_magic.hessian(lambda: f(x).sum(), x)
    torch.testing.assert_close(h.hessian("x"),
                               torch.func.hessian(lambda t: _g(t).sum())(x.detach()))
    r = vjp_magic.differentiate(lambda: f(x), x)
    torch.testing.assert_close(r.jacobian("x"), torch.func.jacrev(_g)(x.detach()))
    f(x)
    assert frames() == 1


def test_a_stance_the_cell_sets_itself_is_left_as_the_cell_set_it(ip, run_ok, frames):
    from torch._dynamo import eval_frame

    run_ok(_COMPILED)
    try:
        run_ok("%%vjp\ntorch.compiler.set_stance('eager_on_recompile')\n" + _BODY)
        assert eval_frame._stance.stance == "eager_on_recompile"  # as a plain cell leaves it
    finally:
        torch.compiler.set_stance("default")
