"""Adversary review (s36 G19) of this session's changes: the strict pass guard (T12, 6ea6386),
dependency's rounding probe (R1), the ``.data`` refusal (F5).

Findings are strict xfails whose reason says what is wrong; what held is plain tests. Expected
values come from torch.autograd.functional.jacobian or from the mathematics of the cell.
"""
from __future__ import annotations

import functools
import os
import queue
import re
import sys
import threading

import pytest
import torch
from custom_functions import RUNS, Cube, hooked, linspace_x

import vjp_magic
from vjp_magic.core import origin

ENTRIES = ["differentiate", "dependency", "sparse_jacobian"]


def _refused_unrun(build, entry):
    x = linspace_x()
    RUNS.clear()
    y = build(x)
    with pytest.raises(vjp_magic.VJPUsageError):
        getattr(vjp_magic, entry)(y, x)
    assert not RUNS, f"{len(RUNS)} calls of the user's hook ran in the pass"


# -- what held: hooks of every shape are refused before they run --------------------------------

class _CallableHook:
    def __call__(self, grad):
        RUNS.append(grad)


class _ModuleHook(torch.nn.Module):
    def forward(self, grad):
        RUNS.append(grad)


def _tensor_hook(hook):
    return lambda x: hooked(x, hook)


def _on_view(x):
    h = x * 1
    v = h[1:]
    v.register_hook(lambda g: RUNS.append(g))
    return torch.sin(v)


def _node_prehook(x):
    h = x * 1
    h.grad_fn.register_prehook(lambda go: RUNS.append(go))
    return torch.sin(h)


def _node_hook(x):
    h = x * 1
    h.grad_fn.register_hook(lambda gi, go: RUNS.append(gi))
    return torch.sin(h)


def _module_pre(x):
    m = torch.nn.Linear(5, 3).double()
    m.register_full_backward_pre_hook(lambda mod, go: RUNS.append(go))
    return m(x)


def _module_full(x):
    m = torch.nn.Linear(5, 3).double()
    m.register_full_backward_hook(lambda mod, gi, go: RUNS.append(go))
    return m(x)


def _multi_grad(x):
    a, b = x * 1, x * 2
    torch.autograd.graph.register_multi_grad_hook((a, b), lambda gs: RUNS.append(gs))
    return a * b


HOOKED = {
    "callable-object": _tensor_hook(_CallableHook()),
    "functools.partial": _tensor_hook(functools.partial(lambda tag, g: RUNS.append(g), "t")),
    "nn.Module-as-hook": _tensor_hook(_ModuleHook()),
    "hook-on-a-view": _on_view,
    "Node.register_prehook": _node_prehook,
    "Node.register_hook": _node_hook,
    "full_backward_pre_hook": _module_pre,
    "full_backward_hook": _module_full,
    "multi_grad_hook": _multi_grad,
}


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("kind", list(HOOKED))
def test_a_hook_of_any_shape_is_refused_unrun(kind, entry):
    _refused_unrun(HOOKED[kind], entry)


@pytest.mark.parametrize("grad_mode", [False, True])
@pytest.mark.parametrize("entry", ENTRIES + ["hessian"])
def test_the_users_state_is_intact_after_a_refused_pass(entry, grad_mode):
    x = linspace_x()
    x.grad = torch.full((5,), 7.0, dtype=torch.float64)
    h = x * 1
    h.register_hook(lambda g: RUNS.append(g))
    h.retain_grad()
    y = torch.sin(h)
    output = y.sum() if entry == "hessian" else y
    thread_profile = lambda frame, event, arg: None  # noqa: E731
    threading.setprofile(thread_profile)
    trace_before, profile_before = sys.gettrace(), sys.getprofile()
    torch.manual_seed(3)
    rng = torch.get_rng_state().clone()
    RUNS.clear()
    try:
        with torch.set_grad_enabled(grad_mode):
            with pytest.raises(vjp_magic.VJPUsageError, match="your hook"):
                getattr(vjp_magic, entry)(output, x)
            assert torch.is_grad_enabled() is grad_mode
        assert sys.getprofile() is profile_before and sys.gettrace() is trace_before
        assert threading.getprofile() is thread_profile
    finally:
        threading.setprofile(None)
    assert not RUNS
    assert x.grad.tolist() == [7.0] * 5 and h.grad is None
    assert torch.equal(rng, torch.get_rng_state())


# -- what held: cells with no hook are answered, with the right numbers -------------------------

def _model(x):
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.GELU(), torch.nn.LayerNorm(4),
                            torch.nn.Linear(4, 3)).double()
    return m(Cube.apply(x))  # (its backward calls the user's own helper)


def test_a_cell_without_hooks_is_answered_with_the_jacobian():
    x = linspace_x()
    y = _model(x)
    h = y.detach()
    RUNS.clear()
    r = vjp_magic.differentiate(y, x)
    expected = torch.autograd.functional.jacobian(_model, x.detach())
    got = r.derivatives["x"]
    assert torch.allclose(got.reshape(expected.shape).double(), expected, rtol=1e-10, atol=1e-12)
    assert torch.equal(h, y.detach()) and x.grad is None
    d = vjp_magic.dependency(y, x, seed=0)
    assert bool(d.pattern.all())  # a dense linear layer: every output reads every input


# -- what held: R1's rescaled probe keeps real tiny dependences ----------------------------------

@pytest.mark.parametrize("dtype, scale", [(torch.float64, 1e-20), (torch.float64, 1e-300),
                                          (torch.float32, 1e-30), (torch.float32, 1e-38)])
def test_a_tiny_exact_coupling_is_a_dependence_not_rounding(dtype, scale):
    x = linspace_x(6, dtype)
    y = torch.sin(x) + scale * x.sum()  # ∂y_i/∂x_j = scale ≠ 0 for i ≠ j, exactly
    d = vjp_magic.dependency(y, x, seed=0)
    assert bool(d.pattern.all())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_patterns_are_exact(dtype):
    x = linspace_x(6, dtype)
    eye = torch.eye(6, dtype=torch.bool)
    assert torch.equal(vjp_magic.dependency(torch.sin(x) * 2, x, seed=0).pattern.bool(), eye)
    tril = torch.ones(6, 6, dtype=torch.bool).tril()
    assert torch.equal(vjp_magic.dependency(torch.cumsum(x, 0), x, seed=0).pattern.bool(), tril)
    assert bool(vjp_magic.dependency(torch.softmax(x, 0), x, seed=0).pattern.all())
    shifted = torch.exp(x - x.max().detach())  # the max detached: each entry reads its own x
    assert torch.equal(vjp_magic.dependency(shifted, x, seed=0).pattern.bool(), eye)


# -- findings ----------------------------------------------------------------------------------

class _GradQueue(queue.Queue):
    """A queue collecting gradients; the user's _put runs whenever the stdlib's put does."""

    def _put(self, item):
        RUNS.append(item)
        super()._put(item)


def _queue_hooked(x):
    return hooked(x, _GradQueue().put)


# Was a strict xfail (s36 G19): the guard passed user code whose caller was the standard
# library's (s37 T13: what is called decides, not who calls).
@pytest.mark.parametrize("entry", ENTRIES)
def test_user_code_behind_a_stdlib_hook_is_refused_unrun(entry):
    _refused_unrun(_queue_hooked, entry)


_HOOK_SOURCE = "def hook(grad):\n    RUNS.append(grad)\n"


def _hook_defined_in(filename):
    namespace = {"RUNS": RUNS}
    exec(compile(_HOOK_SOURCE, filename, "exec"), namespace)  # noqa: S102
    return _tensor_hook(namespace["hook"])


# Was a strict xfail (s36 G19): _OURS compared paths by a bare prefix (torch → torchvision).
@pytest.mark.parametrize("where", ["torchvision", "vjp_magic_scratch", "<string>"])
def test_a_hook_in_a_file_whose_path_merely_starts_like_torchs_is_refused(where):
    if where == "torchvision":
        filename = origin.TORCH_DIR.rstrip(os.sep) + "vision/ops/user_hooks.py"
    elif where == "<string>":  # (s37 T13: exec'd into globals naming no module)
        filename = where
    else:
        filename = origin.PACKAGE_DIR.rstrip(os.sep) + "_scratch.py"
    _refused_unrun(_hook_defined_in(filename), "differentiate")


# Was a strict xfail (s36 G19): only the setter x.data = … was named.
@pytest.mark.parametrize("write", ["x.data.mul_(2)", "x.data[0] = 5.0", "x.data.add_(1)"])
def test_an_in_place_write_through_data_is_named_with_its_line(run_vjp, write):
    r = run_vjp("x = torch.tensor([1., 2.], requires_grad=True)\ny = x ** 2\n"
                f"{write}\nz = y.sum()")
    assert f"{write} (line 3)" in " ".join(str(n) for n in r.notes)


# -- teach/grading's own-rounding ✓ (F5) --------------------------------------------------------

_LOSSY_CELL = "x = torch.tensor([10.03, 20.03, 30.03], requires_grad=True)\ny = x ** 2 / 2\n"


@pytest.mark.parametrize("ans, right", [
    ("(x.detach() + 1e6) - 1e6", True),  # exactly x in mathematics; float32 rounds to 1/16
    ("x.detach() + 0.05", False),  # wrong by 0.05 with no rounding to hide behind
])
def test_own_rounding_forgives_a_right_lossy_formula_only(run_vjp, ans, right):
    r = run_vjp(_LOSSY_CELL + f"ans = {ans}", "--check ans")
    assert r.check.correct is right, r.check.hint


# Was a strict xfail (s36 G19): the float32 value was moved toward the right one by its own
# rounding; now the float64 replay of the answer's formula is graded itself.
def test_own_rounding_never_passes_a_wrong_formula(run_vjp):
    r = run_vjp(_LOSSY_CELL + "ans = (x.detach() + 1e6) - 1e6 + 0.05", "--check ans")
    assert r.check.correct is False, r.check.hint


# -- run/grad_advice (F5, F6): advice followed must run and give the derivatives -----------------

# Was a strict xfail (s36 G19): a write through a view (x = b[:3]; x.add_(1)) was not one to b.
def test_advice_for_an_input_written_through_a_view_runs(ip, usage_error):
    body = "b = torch.ones(4)\nx = b[:3]\nx.add_(1)\ny = x**2"
    message = usage_error("%%vjp\n" + body)
    lines = body.splitlines()
    in_place = re.search(r"the line (\w+\.requires_grad_\(\)) after line (\d+)\.", message)
    if in_place:  # the in-place advice, followed as written
        after = int(in_place.group(2))
        lines = [*lines[:after], in_place.group(1), *lines[after:]]
    elif "b = torch.ones(4, requires_grad=True)" in message:
        lines[0] = "b = torch.ones(4, requires_grad=True)"
    result = ip.run_cell("%%vjp\n" + "\n".join(lines))
    assert result.success, (message, result.error_in_exec)
    d = result.result.derivatives
    assert set(d) == {"b"}, set(d)  # the leaf the advice made require grad
    b = torch.tensor([2.0, 2.0, 2.0, 1.0])  # b after x.add_(1) wrote its first 3 entries
    expected = torch.autograd.functional.jacobian(lambda b: b[:3] ** 2, b)  # 2·b_i δ_ij
    torch.testing.assert_close(d["b"].reshape(3, 4), expected)


# Was a strict xfail (s36 G19): an input written in place before it required grad was a cut.
@pytest.mark.parametrize("write", ["x.add_(1)", "x.mul_(x + 1)"])
def test_in_place_advice_followed_shows_no_cut(run_vjp, write):
    r = run_vjp(f"x = torch.ones(3)\n{write}\nx.requires_grad_()\ny = x**2")
    assert r.derivatives["x"].tolist() == [4.0, 4.0, 4.0]  # 2x at x = 2
    assert "graph is cut" not in str(r) and "makes x.requires_grad_()" not in str(r)


# -- render (U12): digits the width cut below -p are said, on every shape of display -------------

@pytest.mark.parametrize("cell", [
    "x = torch.linspace(0.1, 1, 40, dtype=torch.float64, requires_grad=True)\ny = torch.sin(x)",
    "x = torch.linspace(0.1, 1, 8, dtype=torch.float64, requires_grad=True)\n"
    "y = torch.sin(x).sum()",
    "torch.manual_seed(0)\nA = torch.rand(6, 6, dtype=torch.float64)\n"
    "x = torch.rand(6, dtype=torch.float64, requires_grad=True)\ny = torch.tanh(A @ x)",
], ids=["diagonal-vector", "scalar-gradient", "dense-matrix"])
def test_digits_cut_below_p_are_said_on_every_display(run_vjp, cell):
    text = str(run_vjp(cell, "-p 12"))
    assert "of the 12 asked" in text and "--full-matrix shows all 12" in text, text[-300:]
