"""F8 (s37): the user's torch modes beside the recorder and the analysis, and the claims over
values that left autograd, past G20's cases (tests/acceptance/test_adversary_s37_state.py).

Expected values: a plain run of the same cell (mode stacks), torch.autograd.functional.jacobian
(numbers), and what the headline may claim (a branch on x's value is no proof for every x).
"""
from __future__ import annotations

import pytest
import torch
from torch.overrides import _get_current_function_mode_stack

from mode_loggers import FunctionLog

import vjp_magic

_COS = '''
from torch.overrides import TorchFunctionMode
class Cos(TorchFunctionMode):
    """sin computed as cos: a mode that changes what the cell computes."""
    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.sin:
            func = torch.cos
        return func(*args, **(kwargs or {}))
class Quiet(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))
'''


def _names():
    return [type(m).__name__ for m in _get_current_function_mode_stack()]


@pytest.fixture
def empty_stack_after():
    yield
    while _get_current_function_mode_stack():
        torch._C._pop_torch_function_stack()
    torch.set_default_device(None)  # the DeviceContext popped above is torch's global still


def test_a_mode_that_changes_the_cells_calls_is_differentiated_as_it_computed(
        ip, run_ok, empty_stack_after):
    """The recorder sits beneath the user's modes: it records cos where the user's mode made
    sin a cos, so the derivative is that of what the cell computed (-sin), as autograd's."""
    run_ok(_COS + "m = Cos()\nm.__enter__()\n")
    r = run_ok("%%vjp\nx = torch.linspace(-1, 1, 5, requires_grad=True)\ny = torch.sin(x)\n")
    assert _names() == ["Cos"]
    x = torch.linspace(-1, 1, 5)
    torch.testing.assert_close(r.jacobian("x"),
                               torch.autograd.functional.jacobian(torch.cos, x))
    torch.testing.assert_close(ip.user_ns["y"], torch.cos(x))  # the cell ran under the mode


def test_a_mode_beside_a_default_device_stays_where_a_plain_run_leaves_it(
        ip, run_ok, empty_stack_after):
    """torch.set_default_device's DeviceContext stays at the bottom of the stack, beneath
    the user's mode, after %%vjp as after a plain run."""
    body = "m = Quiet()\nm.__enter__()\nx = torch.ones(3, requires_grad=True)\ny = x * 2\n"
    stacks = []
    for source in (body, "%%vjp\n" + body):
        run_ok(_COS + "torch.set_default_device('cpu')\n")
        run_ok(source)
        stacks.append(_names())
        while _get_current_function_mode_stack():
            torch._C._pop_torch_function_stack()
    assert stacks[0] == ["DeviceContext", "Quiet"]
    assert stacks[1] == stacks[0]


def test_a_cell_that_empties_the_mode_stack_empties_it_as_in_a_plain_run(
        ip, run_ok, empty_stack_after):
    """A cell that pops every mode (the recorder beneath the user's among them) leaves an
    empty stack, as a plain run, and %%vjp still answers (from the output's own graph)."""
    body = ("import torch.overrides as o\nwhile o._get_current_function_mode_stack():\n"
            "    torch._C._pop_torch_function_stack()\n"
            "x = torch.linspace(-1, 1, 4, requires_grad=True)\ny = x ** 2\n")
    run_ok(_COS + "m = Quiet()\nm.__enter__()\n")
    r = ip.run_cell("%%vjp\n" + body)
    assert _names() == []
    assert r.success, r.error_in_exec
    torch.testing.assert_close(r.result.jacobian("x"), torch.diag(2 * ip.user_ns["x"].detach()))


def test_a_number_written_in_the_cell_is_no_cut_after_an_exit(run_vjp):
    """Guard of the exit rule: after loss.item() left torch, x * 2.0 (a constant written in
    the cell) and x.sum(0) are no cut, and a read after the output keeps the proof."""
    r = run_vjp("x = torch.linspace(-1, 1, 5, requires_grad=True)\n"
                "print(x.sum().item())\ny = x * 2.0\nprint(y.sum().item())\n")
    assert r.cuts == ()
    text = " ".join(r._repr_mimebundle_()["text/plain"].split())
    assert "(checked at this x only)" in text  # the first print came before y was made
    r = run_vjp("x = torch.linspace(-1, 1, 5, requires_grad=True)\ny = x * 2.0\n"
                "print(y.sum().item())\n")
    assert r.cuts == () and r.steers == ()
    assert "(proved for every x)." in r._repr_mimebundle_()["text/plain"]


@pytest.mark.parametrize("entry", ["differentiate", "hessian"])
def test_a_branch_in_a_function_given_to_the_python_api_is_no_proof(entry):
    """differentiate(fn)/hessian(fn) with a branch on x's value: claimed at this x only
    (jacobian at another x: every off-diagonal entry non-zero, so no proof for every x)."""
    x = torch.linspace(-1, 1.5, 5, requires_grad=True)

    def f(t):
        return t**3 if t.sum() > 0 else t * t.sum()
    other = torch.linspace(-1.5, 1, 5, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(f, other)
    assert jac[~torch.eye(5, dtype=torch.bool)].abs().min() > 0
    call = getattr(vjp_magic, entry)
    r = call(lambda: f(x) if entry == "differentiate" else f(x).sum(), x)
    text = " ".join(r._repr_mimebundle_()["text/plain"].split())  # lines joined
    assert "(proved for every x" not in text
    assert "checked at this x only" in text
    assert r.steers and r.steers[0].inputs == ("x",)


def test_check_runs_the_users_mode_on_f_only(empty_stack_after):
    """vjp_magic.check(answer, f, x) under a user's function mode: the mode sees f's own
    calls (one call of f: pow, neg, mul, stack), none of the grading's."""
    x = torch.tensor([1., 2., 3.], requires_grad=True)

    def f(x):
        return torch.stack([-x**3, 5 * x])
    answer = torch.stack([-3 * x.detach()**2, 5 * torch.ones(3)])
    plain: list = []
    with FunctionLog(plain):
        f(x)
    log: list = []
    with FunctionLog(log):
        verdict = vjp_magic.check(answer, f, x)
    assert verdict.correct
    assert len(log) % len(plain) == 0 and 0 < len(log) <= 3 * len(plain)  # f's calls only
    assert set(log) == set(plain)


def test_a_tracing_dispatch_mode_is_refused_before_anything_runs():
    """FakeTensorMode (a mode torch keeps in a slot of its own) cannot be set aside: the
    usage error comes first, and the dispatch stack is left as it was."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils._python_dispatch import _get_current_dispatch_mode_stack

    x = torch.linspace(-1, 1, 5, requires_grad=True)
    y = torch.sin(x)
    with pytest.raises(vjp_magic.VJPUsageError, match="FakeTensorMode"):
        with FakeTensorMode():
            vjp_magic.differentiate(y, x)
    assert _get_current_dispatch_mode_stack() == []


def test_jacobian_of_an_expression_runs_the_users_mode_on_the_expression_only(
        ip, run_ok, empty_stack_after):
    """%jacobian (x**2).sum() wrt x with a user's mode left entered: the mode logs the
    expression's 2 calls, as evaluating it in a plain cell does, and stays entered."""
    run_ok("from torch.overrides import TorchFunctionMode\nlog = []\n"
           "class L(TorchFunctionMode):\n"
           "    def __torch_function__(self, func, types, args=(), kwargs=None):\n"
           "        log.append(func)\n        return func(*args, **(kwargs or {}))\n"
           "x = torch.linspace(-1, 1, 5, requires_grad=True)\nm = L()\nm.__enter__()\n")
    run_ok("_plain = (x**2).sum()")
    plain = len(ip.user_ns["log"])
    ip.user_ns["log"].clear()
    r = run_ok("%jacobian (x**2).sum() wrt x")
    assert len(ip.user_ns["log"]) == plain == 2
    assert _names() == ["L"]
    torch.testing.assert_close(r.jacobian("x"), 2 * ip.user_ns["x"].detach())
