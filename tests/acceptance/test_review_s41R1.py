"""Review, session 41 (R1, tests only): the user's state, and "the analysis runs none of the
user's code".

What earlier reviews did not try: reading the result object (``r.jacobian``,
``r.jacobian_block``, ``r.dependency``, ``r.picture``, ``r.code``, ``h.hessian``, a
dependency's ``describe``) in a later cell while the user's own torch mode is entered (the
entry points set the user's modes aside; the result's methods are public entry points too),
what a first ``%%vjp`` cell imports (``sys.modules``, ``warnings.filters``), and a plain-run
twin that also compares version counters, ``.grad`` and ``.grad_fn`` identity, the numpy and
Python generators and torch's global switches.

Expected values: a plain run of the same cell from the same seeds (state), mathematics and
``torch.autograd.functional.jacobian`` (numbers). Strict xfails are findings (``R1-n``; the
reason says what is wrong and the class to fix); unmarked tests guard what held.
"""
from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch

from mode_loggers import DispatchLog, FunctionLog

import vjp_magic


# -- 1. reading the result while the user's own torch mode is entered ------------------------

def _stencil(x):
    return torch.nn.functional.pad(x, (1, 1))[2:] - x  # y_i = x_{i+1} - x_i


def _results():
    """(name, read) for each public read of a result, a hessian result and a verdict."""
    x = torch.linspace(-1.0, 1.0, 6, requires_grad=True)
    r = vjp_magic.differentiate(_stencil(x), x)
    rp = vjp_magic.differentiate(torch.sin(x), x)
    xh = torch.linspace(-1.0, 1.0, 6, requires_grad=True)
    h = vjp_magic.hessian(lambda: (xh ** 3).sum() + (xh[1:] * xh[:-1]).sum(), xh)
    d = vjp_magic.dependency(_stencil(x), x, 0, 0)
    return x, xh, r, rp, h, d


_BLOCK = (torch.arange(2), torch.arange(3))  # the block's rows and columns: the user's own
_READS = {
    "r.jacobian": lambda r, rp, h, d: r.jacobian("x"),
    "r.jacobian(csr)": lambda r, rp, h, d: r.jacobian("x", layout=torch.sparse_csr),
    "points r.jacobian": lambda r, rp, h, d: rp.jacobian("x"),
    "r.jacobian_block": lambda r, rp, h, d: r.jacobian_block("x", *_BLOCK),  # made outside
    "r.dependency": lambda r, rp, h, d: r.dependency("x"),
    "points r.dependency": lambda r, rp, h, d: rp.dependency("x"),
    "h.hessian": lambda r, rp, h, d: h.hessian("x"),
    "h.hessian(csr)": lambda r, rp, h, d: h.hessian("x", layout=torch.sparse_csr),
    "r.picture": lambda r, rp, h, d: r.picture("x"),
    "r.code": lambda r, rp, h, d: r.code,
    "r.gradients": lambda r, rp, h, d: r.gradients["x"],
    "d.describe": lambda r, rp, h, d: (d.kind, d.describe(), d.witness, d.pattern),
}

R1_1 = ("R1-1: the result's public methods (r.jacobian, r.jacobian_block, r.dependency, "
        "r.picture, h.hessian; r.code and r.gradients under a function mode) called while "
        "the user's own TorchFunctionMode or "
        "TorchDispatchMode is entered (a logging/counting/FLOP mode from an earlier cell) "
        "run that mode's __torch_function__/__torch_dispatch__ on the package's own torch "
        "calls, 20-250 times where the user made none; the entry points and the display "
        "set the user's modes aside (core/modes.modes_aside), the result's methods do not; "
        "class: a public read of the result is an entry point outside modes_aside")


@pytest.fixture(scope="module")
def results():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _results()


_MODE_CASES = [
    pytest.param(read, mode, id=f"{read}-{kind}")  # R1-1 fixed: quiet.guarded_reads
    for read in _READS for kind, mode in (("function", FunctionLog), ("dispatch", DispatchLog))]


@pytest.mark.parametrize("read, mode", _MODE_CASES)
def test_reading_the_result_runs_no_mode_of_the_users(results, read, mode):
    _, _, r, rp, h, d = results
    _READS[read](r, rp, h, d)  # a first read may fill a cache: not the question here
    log: list = []
    with mode(log):
        _READS[read](r, rp, h, d)
    assert log == [], f"{len(log)} calls of the user's mode: {log[:5]}"


def test_the_display_of_a_result_runs_no_mode_of_the_users(results):
    _, _, r, rp, h, d = results
    for shown in (r, rp, h):
        shown._repr_mimebundle_()
        for mode in (FunctionLog, DispatchLog):
            log: list = []
            with mode(log):
                shown._repr_mimebundle_()
            assert log == []


def test_reads_of_the_result_equal_the_jacobian_and_leave_the_generators(results):
    x, xh, r, rp, h, d = results
    states = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    for read in _READS.values():
        read(r, rp, h, d)
    assert torch.equal(torch.get_rng_state(), states[0])
    assert np.array_equal(np.random.get_state()[1], states[1]) and random.getstate() == states[2]
    expected = torch.autograd.functional.jacobian(_stencil, x.detach())
    torch.testing.assert_close(r.jacobian("x"), expected)
    torch.testing.assert_close(r.jacobian("x", layout=torch.sparse_csr).to_dense(), expected)
    torch.testing.assert_close(rp.jacobian("x"), torch.diag(torch.cos(x.detach())))
    hessian = torch.func.hessian(lambda t: (t ** 3).sum() + (t[1:] * t[:-1]).sum())(
        xh.detach())
    torch.testing.assert_close(h.hessian("x"), hessian)


# -- 2. what a first %%vjp cell imports: sys.modules and warnings.filters -------------------

_FIRST_CELL = textwrap.dedent('''
    import sys, warnings
    from IPython.testing.globalipapp import start_ipython
    ip = start_ipython()
    ip.run_line_magic("load_ext", "vjp_magic")
    assert ip.run_cell("import torch").success
    assert ip.run_cell(sys.argv[2]).success
    assert ip.run_cell(sys.argv[3]).success  # the plain run: what it imports is the user's
    filters, modules = list(warnings.filters), set(sys.modules)
    ip.run_cell("%%vjp " + sys.argv[1] + chr(10) + sys.argv[3])
    print("FILTERS", len([f for f in warnings.filters if f not in filters]))
    print("MODULES", sorted({m.split(".")[0] for m in set(sys.modules) - modules
                             if not m.startswith("vjp_magic")}))
''')

_SQUARE = """
class Square(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x ** 2
    @staticmethod
    def backward(ctx, g):
        x, = ctx.saved_tensors
        return 2 * x * g
"""

_X5 = "x = torch.linspace(-2, 2, 5, requires_grad=True)\n"

R1_2 = ("R1-2: the first %%vjp cell of a session imports third-party modules the cell never "
        "named (sympy and mpmath for --gradcheck and for a custom autograd.Function; "
        "matplotlib, PIL, dateutil, fontTools for --picture): sys.modules grows by hundreds of "
        "entries and sympy's import adds a 'once' SymPyDeprecationWarning filter to "
        "warnings.filters, where a plain run of the cell leaves both as they were; class: "
        "the package's lazy imports happen inside the user's cell instead of at load_ext")


@pytest.mark.slow
@pytest.mark.parametrize("line, setup, body", [
    ("", "", _X5 + "y = x ** 2"),
    ("--explain", "", _X5 + "y = x ** 2"),
    ("--picture", "", "x = torch.randn(4, 3, requires_grad=True)\ny = x.cumsum(1)"),
    ("--gradcheck", "", _X5 + "y = x ** 2"),  # R1-2 fixed: imported at load_ext
    ("", _SQUARE, _X5 + "y = Square.apply(x)"),
], ids=["plain", "explain", "picture", "gradcheck", "custom-function"])
def test_a_first_cell_leaves_sys_modules_and_warnings_filters_as_a_plain_run(line, setup, body):
    done = subprocess.run(
        [sys.executable, "-c", _FIRST_CELL, line, setup or "pass", body], capture_output=True,
        text=True, timeout=300, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith(("FILTERS", "MODULES"))]
    assert done.returncode == 0 and len(lines) == 2, done.stderr[-2000:]
    assert lines == ["FILTERS 0", "MODULES []"], lines


# -- 3. a later cell that gives the input new data: the result reads the live tensor ---------

R1_3 = ("R1-3: after the cell, giving the input new data of another shape (x.data = "
        "torch.zeros(7), as a notebook does re-initialising a parameter) makes r.jacobian('x') "
        "raise IndexError and the result's first display raise RuntimeError ('shape [4, 7] is "
        "invalid'), while r.jacobian(layout=csr) and r.dependency still give the 4 x 4 "
        "Jacobian computed: the result keeps the user's live tensor (r.inputs[name].tensor) "
        "and reads its shape when read; class: a result read in a later cell depends on the "
        "user's mutable tensors instead of what the analysis saw")


def _stencil_times_x(x):
    return torch.nn.functional.pad(x, (1, 1))[2:] * x


@pytest.mark.parametrize("f", [_stencil_times_x, lambda x: x ** 3], ids=["stencil", "points"])
def test_a_result_read_after_the_input_got_new_data_is_the_jacobian_it_computed(f):
    x = torch.linspace(-1.0, 1.0, 4, requires_grad=True)
    expected = torch.autograd.functional.jacobian(f, x.detach().clone())
    r = vjp_magic.differentiate(f(x), x)
    x.data = torch.zeros(7)
    torch.testing.assert_close(r.jacobian("x", layout=torch.sparse_csr).to_dense(), expected)
    r._repr_mimebundle_()
    torch.testing.assert_close(r.jacobian("x"), expected)


@pytest.mark.parametrize("line", ["", "--explain", "--gradcheck"])
def test_a_result_shown_before_an_in_place_update_keeps_its_numbers(ip, run_ok, line):
    r = run_ok(f"%%vjp {line}\nx = torch.linspace(-1, 1, 4, requires_grad=True)\ny = x ** 3")
    shown = r._repr_mimebundle_()
    run_ok("with torch.no_grad():\n    x.add_(5)\n    y.mul_(0)")
    assert r._repr_mimebundle_() == shown
    torch.testing.assert_close(r.jacobian("x"), torch.diag(3 * torch.linspace(-1, 1, 4) ** 2))


# -- 4. torch.compile: a compiled function in the cell ---------------------------------------

R1_4 = ("R1-4: a torch.compile'd function (backend='eager') that a plain cell compiles once and "
        "then reuses is compiled again in every %%vjp cell (10 cells: 27 frames and 7 graphs "
        "where plain cells compile 1 and 1), and the next plain call compiles once more: "
        "dynamo traces into the recorder's TorchFunctionMode, breaks the user's graph at the "
        "recorder's own str.lower (graph break gb0156), and guards on the mode, so the "
        "user's compile cache is invalidated (with inductor: a recompile of seconds per "
        "cell, and toward torch._dynamo.config.recompile_limit, past which the function runs "
        "uncompiled); class: the recorder is visible to torch.compile's guards")

_COMPILED = """
@torch.compile(backend="eager")
def f(t):
    return torch.nn.functional.pad(t.sin(), (1, 1))[2:] * t
"""


@pytest.fixture
def dynamo_counters():
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    yield counters
    torch._dynamo.reset()
    counters.clear()


def _compiled_frames(counters) -> int:
    return counters["frames"]["total"]


def test_a_compiled_function_is_not_compiled_again_by_vjp(ip, run_ok, dynamo_counters):
    body = "x = torch.linspace(-1, 1, 6, requires_grad=True)\ny = f(x)"
    run_ok(_COMPILED)
    run_ok(body)  # a plain cell compiles it once
    assert _compiled_frames(dynamo_counters) == 1
    run_ok(body)
    assert _compiled_frames(dynamo_counters) == 1  # ... and reuses it
    run_ok(f"%%vjp\n{body}")
    run_ok(body)
    assert _compiled_frames(dynamo_counters) == 1


def test_the_derivatives_of_a_compiled_function_are_its_jacobian(ip, run_ok, dynamo_counters):
    run_ok(_COMPILED)
    r = run_ok("%%vjp\nx = torch.linspace(-1, 1, 6, requires_grad=True)\ny = f(x)")
    x = torch.linspace(-1, 1, 6)
    expected = torch.autograd.functional.jacobian(
        lambda t: torch.nn.functional.pad(t.sin(), (1, 1))[2:] * t, x)
    torch.testing.assert_close(r.jacobian("x"), expected)


# -- 5. reading the result after a later cell set another default device ---------------------

R1_5 = ("R1-5: after a later cell's torch.set_default_device('meta') (a notebook building a "
        "big model's skeleton), r.jacobian(layout=torch.sparse_csr) comes back on the meta "
        "device, without values, and r.dependency, h.hessian(layout=csr), r.picture and a "
        "result's first display raise 'Tensor.item() cannot be called on meta tensors' from "
        "inside the package; the entry points build their tensors on the CPU "
        "(core/quiet.analysis_device), the result's reads do not; class, as R1-1: a public "
        "read of the result is an entry point without the entry points' guards")


@pytest.mark.parametrize("read", ["r.jacobian(csr)", "r.dependency", "h.hessian(csr)",
                                  "r.picture", "display"])
def test_reading_the_result_under_another_default_device(read):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        x, xh, r, rp, h, d = _results()
    expected = torch.autograd.functional.jacobian(_stencil, x.detach())
    torch.set_default_device("meta")
    try:
        if read == "r.jacobian(csr)":
            got = r.jacobian("x", layout=torch.sparse_csr)
            assert got.device.type == "cpu"
            torch.testing.assert_close(got.to_dense(), expected)
        elif read == "r.dependency":
            assert torch.equal(r.dependency("x").pattern.cpu(), expected != 0)
        elif read == "h.hessian(csr)":
            assert h.hessian("x", layout=torch.sparse_csr).device.type == "cpu"
        elif read == "r.picture":
            r.picture("x")
        else:
            assert "x" in r._repr_mimebundle_()["text/plain"]
    finally:
        torch.set_default_device(None)


# -- 6. grading against the exercise's f: how often f runs -----------------------------------

R1_6 = ("R1-6: vjp_magic.check / assert_correct (answer, f, inputs) and %%vjp --check d "
        "--against f call the user's f once for a right answer but twice for a wrong one "
        "(the float64 re-check of a 'wrong' verdict calls f again): a BatchNorm inside f "
        "ends with num_batches_tracked 2 and moved running stats, a counter f appends to "
        "has two entries, so the user's state depends on whether the student's answer was "
        "right; class: a re-check runs the user's code again instead of replaying the "
        "record of its one call")

_GRADED = """
calls = []
bn = torch.nn.BatchNorm1d(5)
def f(x):
    calls.append(1)
    return bn(x[None].expand(3, 5)).sum(0) * 0 + x ** 3
"""


def _cubed_jacobian():
    return torch.diag(3 * torch.linspace(-1, 1, 5) ** 2)


def _graded_python(right: bool):
    namespace: dict = {"torch": torch}
    exec(_GRADED, namespace)
    x = torch.linspace(-1, 1, 5, requires_grad=True)
    answer = _cubed_jacobian() * (1 if right else 2)
    verdict = vjp_magic.check(answer, namespace["f"], x)
    return verdict.correct, len(namespace["calls"]), int(namespace["bn"].num_batches_tracked)


def _graded_magic(ip, run_ok, right: bool):
    run_ok(_GRADED)
    run_ok("answer = torch.diag(3 * torch.linspace(-1, 1, 5) ** 2)")
    scale = 1 if right else 2
    r = run_ok("%%vjp --check d --against f\nx = torch.linspace(-1, 1, 5, requires_grad=True)\n"
               f"y = x ** 3\nd = answer * {scale}")
    return r.check.correct, len(ip.user_ns["calls"]), int(ip.user_ns["bn"].num_batches_tracked)


def test_a_right_answer_calls_f_once(ip, run_ok):
    assert _graded_python(right=True) == (True, 1, 1)
    assert _graded_magic(ip, run_ok, right=True) == (True, 1, 1)


@pytest.mark.parametrize("entry", ["python", "magic"])
def test_a_wrong_answer_calls_f_as_often_as_a_right_one(ip, run_ok, entry):
    graded = _graded_python(False) if entry == "python" else _graded_magic(ip, run_ok, False)
    assert graded == (False, 1, 1)


R1_7 = ("R1-7: vjp_magic.check / assert_correct (answer, f, inputs) with a right answer call "
        "f once, and f's BatchNorm moves once, but torch's, numpy's and Python's generators "
        "are put back as if f had never run: the next draws differ from those after one "
        "plain call of f, and from differentiate(lambda: f(x), x) and hessian(...), which "
        "leave the generators as one call does; class: the grading's call of the user's f "
        "is half rolled back (generators restored, modules and counters kept)")


def _draws(x):
    return x ** 3 * (1 + 0 * torch.rand(5)) + 0 * float(np.random.rand()) + 0 * random.random()


def _generators():
    return torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()


def _seeded():
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)


def _as_one_call(entry):
    x = torch.linspace(-1, 1, 5, requires_grad=True)
    _seeded()
    _draws(x)
    plain = _generators()
    _seeded()
    answer = torch.diag(3 * x.detach() ** 2)
    if entry == "check":
        assert vjp_magic.check(answer, _draws, x).correct
    elif entry == "assert_correct":
        vjp_magic.assert_correct(answer, _draws, x)
    elif entry == "differentiate":
        vjp_magic.differentiate(lambda: _draws(x), x)
    else:
        vjp_magic.hessian(lambda: _draws(x).sum(), x)
    after = _generators()
    return (torch.equal(after[0], plain[0]), np.array_equal(after[1], plain[1]),
            after[2] == plain[2])


@pytest.mark.parametrize("entry", [
    "check", "assert_correct", "differentiate", "hessian"])  # R1-7 fixed: Exercise.drawn
def test_a_callable_leaves_the_generators_as_one_plain_call(entry):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert _as_one_call(entry) == (True, True, True)


# -- 7. the next cell's backward through a graph with a custom Function -----------------------

R1_8 = ("R1-8: a %%vjp cell whose graph holds a custom autograd.Function and which runs its own "
        "y2.sum().backward() leaves that graph retained (README: 'graphs with custom "
        "autograd.Functions are left retained rather than run again'), so the next cell's "
        "y1.sum().backward() through the same nodes succeeds and adds a second gradient to "
        "x.grad, where after the plain cell PyTorch raises 'Trying to backward through the "
        "graph a second time' and x.grad keeps the first; class: a graph kept for the "
        "analysis changes what the user's next backward does (silently accumulates instead "
        "of raising)")

_SQUARE_CELL = _SQUARE + """
x = torch.linspace(-1, 1, 5, requires_grad=True)
"""
_TWICE = "y1 = Square.apply(x) * x.sin()\ny2 = y1.sin()\ny2.sum().backward()"


def _then_backward_again(ip, line: str | None):
    assert ip.run_cell(_SQUARE_CELL).success
    cell = _TWICE if line is None else f"%%vjp {line}\n{_TWICE}"
    assert ip.run_cell(cell).success
    first = ip.user_ns["x"].grad.clone()
    later = ip.run_cell("y1.sum().backward()")
    error = type(later.error_in_exec).__name__ if later.error_in_exec else None
    return error, first, ip.user_ns["x"].grad.clone()


@pytest.mark.parametrize("line", ["", "--gradcheck"])
def test_the_next_backward_through_a_custom_functions_graph_is_as_after_a_plain_cell(
        ip, line):
    plain = _then_backward_again(ip, None)
    assert plain[0] == "RuntimeError"
    ip.run_cell("del x, y1, y2")
    magic = _then_backward_again(ip, line)
    assert magic[0] == plain[0]
    torch.testing.assert_close(magic[1], plain[1])
    torch.testing.assert_close(magic[2], plain[2])


# -- 8. the user's backward raising inside the analysis' passes -------------------------------

R1_9 = ("R1-9: a custom autograd.Function whose backward refuses some gradients (here any "
        "zero in g, which the analysis' 0/1 vectors have) makes a %%vjp cell that runs fine "
        "plainly end with the user's ValueError and a traceback through torch's engine and "
        "vjp_magic/core/pass_guard.py, after the backward ran 2-10 times for the analysis; "
        "class: an error in user code called by the analysis (not by the cell) is shown as the "
        "cell's own error, where a short message naming the backward (or a result without "
        "that part) is due, as for every other refusal")

_PICKY = """
calls = []
class Picky(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x ** 2
    @staticmethod
    def backward(ctx, g):
        calls.append(1)
        if (g == 0).any():
            raise ValueError("picky backward: a zero in g")
        x, = ctx.saved_tensors
        return 2 * x * g
x = torch.linspace(-1, 1, 5, requires_grad=True)
"""


@pytest.mark.parametrize("body", [
    pytest.param("h = x.exp()\ny = Picky.apply(h) * 1", id="points"),
    pytest.param("h = x.exp()\ny = torch.nn.functional.pad(Picky.apply(h), (1, 1))[2:] + h",
                 id="stencil"),
])
def test_a_backward_that_raises_for_the_analysis_is_not_the_cells_error(ip, body):
    assert ip.run_cell(_PICKY).success
    result = ip.run_cell(f"%%vjp\n{body}")
    error = result.error_in_exec
    assert error is None or (type(error).__name__ == "UsageError" and "Picky" in str(error)), \
        repr(error)


def test_after_a_backward_raised_for_the_analysis_the_next_backward_runs(ip):
    assert ip.run_cell(_PICKY).success
    ip.run_cell("%%vjp\nh = x.exp()\ny = Picky.apply(h) * 1")
    assert ip.run_cell("y.sum().backward()").success
    x = torch.linspace(-1, 1, 5)
    torch.testing.assert_close(ip.user_ns["x"].grad, 2 * x.exp() ** 2)


# -- 9. what held: global module hooks, and expressions of the line magics run once ----------

_NET = """
calls = []
net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Dropout(0.2),
                          torch.nn.Linear(4, 1))
Xb = torch.randn(6, 3)
xx = torch.randn(6, 3, requires_grad=True)
"""
_GLOBAL_HOOKS = """
from torch.nn.modules import module as _module
handles = [_module.register_module_forward_hook(lambda m, i, o: calls.append("f")),
           _module.register_module_forward_pre_hook(lambda m, i: calls.append("p")),
           _module.register_module_full_backward_hook(lambda m, gi, go: calls.append("b"))]
"""


def _net_state(ip):
    net = ip.user_ns["net"]
    return (list(ip.user_ns["calls"]), int(net[1].num_batches_tracked),
            net[1].running_mean.clone(), torch.get_rng_state())


def _global_hooks_run(ip, source: str):
    torch.manual_seed(0)
    assert ip.run_cell(_NET + _GLOBAL_HOOKS).success
    try:
        result = ip.run_cell(source)
        assert result.success, result.error_in_exec
        return _net_state(ip)
    finally:
        for handle in ip.user_ns["handles"]:
            handle.remove()


@pytest.mark.parametrize("line, body", [
    ("--wrt net", "losses = net(Xb).squeeze(1) ** 2"),
    ("--wrt net --gradcheck", "loss = (net(Xb) ** 2).mean()"),
    ("--gradcheck", "y = net(xx)"),
])
def test_global_module_hooks_fire_as_in_a_plain_cell(ip, line, body):
    plain = _global_hooks_run(ip, body)
    magic = _global_hooks_run(ip, f"%%vjp {line}\n{body}")
    assert magic[:2] == plain[:2]
    assert torch.equal(magic[2], plain[2]) and torch.equal(magic[3], plain[3])


@pytest.mark.parametrize("magic", [
    "%jacobian net(xx) wrt xx", "%jacobian net(Xb).squeeze(1) wrt net[0].weight",
    "%hessian (net(xx) ** 2).mean() wrt xx", "%hessian (net(Xb) ** 2).mean() wrt net[3].weight"])
def test_a_line_magics_expression_runs_once(ip, magic):
    expression = magic.split(" ", 1)[1].split(" wrt ")[0]
    states = []
    for source in (f"_value = {expression}", magic):
        torch.manual_seed(0)
        assert ip.run_cell(_NET + "net.register_forward_hook(lambda m, i, o: calls.append(1))"
                           ).success
        assert ip.run_cell(source).success
        states.append(_net_state(ip))
    assert states[1][:2] == states[0][:2] == ([1], 1)
    assert torch.equal(states[1][2], states[0][2]) and torch.equal(states[1][3], states[0][3])
