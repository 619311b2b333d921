"""Adversarial review, session 37 (G20, priority 1): the user's state, and claims that must hold
for every input.

What earlier sessions did not try: the user's own ``TorchFunctionMode``/``TorchDispatchMode``
(entered in an earlier cell and left active, or entered/exited by the cell itself), a Python
branch on an input's value under a "(proved for every x)" headline, a weakref finaliser on a
tensor the cell deletes, a Ctrl-C inside the analysis' backward passes, and modules whose
forward does more than compute (spectral_norm's power iteration, parametrize, lazy modules).

Expected values: a plain run of the same cell in the same shell (state), mathematics and
``torch.autograd.functional.jacobian`` / ``torch.func`` (numbers). Strict xfails are findings;
their reasons say what is wrong and the class to fix. Unmarked tests guard what held.
"""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch.overrides import _get_current_function_mode_stack
from torch.utils._python_dispatch import _get_current_dispatch_mode_stack

from mode_loggers import DispatchLog, FunctionLog, mode_stacks

import vjp_magic

_MODES = '''
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
log = []
class FM(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        log.append(getattr(func, "__name__", "?"))
        return func(*args, **(kwargs or {}))
class DM(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        log.append(str(func))
        return func(*args, **(kwargs or {}))
'''

_BODY = "x = torch.linspace(-1, 1, 5, requires_grad=True)\ny = torch.sin(x)\n"


@pytest.fixture
def no_modes_left():
    """Whatever a test (or vjp_magic) leaves on the mode stacks is popped after it."""
    yield
    while _get_current_function_mode_stack():
        torch._C._pop_torch_function_stack()
    from torch.utils._python_dispatch import _pop_mode
    while _get_current_dispatch_mode_stack():
        _pop_mode()


def _plain_then_vjp(ip, setup: str, body: str, line: str = ""):
    """(plain, after): (error type, mode stacks, len(log), len(log) after a next cell) of a
    plain run of ``body`` and of ``%%vjp line`` on it, each after ``setup``; the stacks are
    emptied between them."""
    out = []
    for source in (body, f"%%vjp {line}\n{body}"):
        assert ip.run_cell(setup).success
        result = ip.run_cell(source)
        error = type(result.error_in_exec).__name__ if result.error_in_exec else None
        seen = (error, mode_stacks(), len(ip.user_ns["log"]))
        assert ip.run_cell("z = torch.cos(torch.ones(2))").success
        out.append(seen + (len(ip.user_ns["log"]),))
        while _get_current_function_mode_stack():
            torch._C._pop_torch_function_stack()
        from torch.utils._python_dispatch import _pop_mode
        while _get_current_dispatch_mode_stack():
            _pop_mode()
    return out


# -- 1. a mode the cell enters and leaves active ----------------------------------------------

def test_a_function_mode_the_cell_leaves_entered_stays_entered(ip, no_modes_left):
    body = "m = FM()\nm.__enter__()\n" + _BODY
    plain, after = _plain_then_vjp(ip, _MODES, body)
    assert plain == (None, (["FM"], []), 2, 4)  # the premise: torch's own behaviour
    assert after == plain


def test_a_function_mode_the_cell_exits_runs_no_more(ip, no_modes_left):
    setup = _MODES + "m = FM()\nm.__enter__()\n"
    plain, after = _plain_then_vjp(ip, setup, "m.__exit__(None, None, None)\n" + _BODY)
    assert plain == (None, ([], []), 0, 0)
    assert after == plain


def test_a_dispatch_mode_the_cell_leaves_entered_runs_only_on_the_cells_calls(
        ip, no_modes_left):
    body = "m = DM()\nm.__enter__()\n" + _BODY
    plain, after = _plain_then_vjp(ip, _MODES, body)
    assert plain == (None, ([], ["DM"]), 2, 4)
    assert after[1:] == plain[1:]  # refused or answered, the user's mode ran as often


# -- 2. a mode left active by an earlier cell, around every entry point -----------------------

def _entry(entry, x):
    """Run ``entry`` on sin(x) (a function where the entry takes one); return the user's
    calls its plain counterpart makes under the mode (``fn`` is called once)."""
    if entry == "differentiate(y)":
        return lambda y: vjp_magic.differentiate(y, x)
    if entry == "differentiate(fn)":
        return lambda y: vjp_magic.differentiate(lambda: torch.sin(x), x)
    if entry == "dependency":
        return lambda y: vjp_magic.dependency(y, x)
    if entry == "sparse_jacobian":
        return lambda y: vjp_magic.sparse_jacobian(y, x)
    return lambda y: vjp_magic.hessian(lambda: torch.sin(x).sum(), x)


_ENTRIES = ["differentiate(y)", "differentiate(fn)", "dependency", "sparse_jacobian", "hessian"]


@pytest.mark.parametrize("entry", _ENTRIES)
def test_a_function_mode_left_active_runs_only_on_the_users_calls(entry, no_modes_left):
    x = torch.linspace(-1, 1, 5, requires_grad=True)
    y = torch.sin(x)
    plain: list = []
    with FunctionLog(plain):
        if entry in ("differentiate(fn)", "hessian"):
            (torch.sin(x).sum() if entry == "hessian" else torch.sin(x))
    log: list = []
    with FunctionLog(log):
        _entry(entry, x)(y)
    assert len(log) == len(plain)


@pytest.mark.parametrize("entry", _ENTRIES)
def test_a_dispatch_mode_left_active_is_refused_before_it_runs(entry, no_modes_left):
    x = torch.linspace(-1, 1, 5, requires_grad=True)
    y = torch.sin(x)
    plain: list = []
    with DispatchLog(plain):
        if entry in ("differentiate(fn)", "hessian"):
            (torch.sin(x).sum() if entry == "hessian" else torch.sin(x))
    log: list = []
    with DispatchLog(log):
        try:
            _entry(entry, x)(y)
        except vjp_magic.VJPUsageError:
            pass  # a refusal is fine; running the user's mode first is not
    assert len(log) == len(plain)


# -- 3. "(proved for every x)" over a Python branch on x's value ------------------------------

_BRANCHES = {
    "if on a tensor": "if x.sum() > 0:\n    y = x**2\nelse:\n    y = x * x.sum()\n",
    "float() in a conditional expression": "y = x**2 if float(x.sum()) > 0 else x * x.sum()\n",
}


def _cell_function(branch: str):
    def f(x):
        if branch == "if on a tensor":
            return x**2 if x.sum() > 0 else x * x.sum()
        return x**2 if float(x.sum()) > 0 else x * x.sum()
    return f


@pytest.mark.parametrize("branch", list(_BRANCHES))
def test_proved_for_every_x_is_not_claimed_over_a_branch_on_x(run_vjp, branch):
    other = torch.linspace(-1.5, 1, 5, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(_cell_function(branch), other)
    off = ~torch.eye(5, dtype=torch.bool)
    assert jac[off].abs().min() > 0  # a counterexample: every off-diagonal entry is non-zero
    r = run_vjp("x = torch.linspace(-1, 1.5, 5, requires_grad=True)\n" + _BRANCHES[branch])
    assert "(proved for every x)." not in r._repr_mimebundle_()["text/plain"]  # unqualified


def test_proved_for_every_x_holds_without_a_branch(run_vjp):
    """The guard's counterpart: a branch-free cell keeps its proof (it must not be lost)."""
    r = run_vjp("x = torch.linspace(-1, 1.5, 5, requires_grad=True)\ny = x**2\n")
    assert "(proved for every x)." in r._repr_mimebundle_()["text/plain"]


# -- 4. a tensor the cell deletes ----------------------------------------------------------------

_FREED = ("import weakref\nfreed = []\n"
          "x = torch.linspace(-1, 1, 5, requires_grad=True)\nh = torch.sin(x)\n"
          "weakref.finalize(h, freed.append, 'h')\ny = h * 2\ndel h\n")


def test_a_tensor_the_cell_deletes_lives_as_long_as_the_output_as_documented(ip, run_ok):
    """Was a strict xfail (G20): a tensor the cell deletes (h = torch.sin(x); y = h * 2;
    del h) is freed at 'del h' in a plain run; after %%vjp the record kept for a later
    %jacobian/%hessian on y (run/record.KeptRecord) holds it while y lives. Freeing it would
    lose what that record needs (y's call reads h: a replay rebuilds y from it), so the
    behaviour is documented (docs/api.md, "What a %%vjp cell keeps") and tested here: h is
    alive after the cell, and freed once y is dropped or the next %%vjp cell runs (F8, s37)."""
    import gc

    run_ok(_FREED)
    assert ip.user_ns["freed"] == ["h"]  # the premise: freed at once in a plain run
    run_ok("%%vjp\n" + _FREED)
    assert ip.user_ns["freed"] == []  # kept by the record, as documented
    run_ok("y = None")
    gc.collect()
    assert ip.user_ns["freed"] == ["h"]  # freed with the output
    run_ok("%%vjp\n" + _FREED)
    assert ip.user_ns["freed"] == []
    run_ok("%%vjp\nz = torch.sin(x)")  # the next %%vjp cell replaces the record
    gc.collect()
    assert ip.user_ns["freed"] == ["h"]


def test_the_output_is_freed_when_the_user_drops_it(ip, run_ok):
    """Guard for what held: after %%vjp and the user's ``y = None``, y (and with it the kept
    record) is garbage, as after a plain run."""
    import gc

    run_ok("%%vjp\n" + _FREED + "fy = weakref.finalize(y, freed.append, 'y')\n")
    run_ok("y = None")
    gc.collect()
    assert sorted(ip.user_ns["freed"]) == ["h", "y"]


# -- 5. Ctrl-C inside the analysis' backward passes --------------------------------------------

class _Interrupting:
    """Autograd's engine, raising KeyboardInterrupt at its ``at``-th pass (a Ctrl-C then)."""

    def __init__(self, engine, at: int):
        self.engine, self.at, self.calls = engine, at, 0

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def run_backward(self, *args, **kwargs):
        self.calls += 1
        if self.calls == self.at:
            raise KeyboardInterrupt
        return self.engine.run_backward(*args, **kwargs)


def _switches():
    from vjp_magic.core.quiet import _hooks

    import sys
    return {"grad": torch.is_grad_enabled(), "anomaly": torch.is_anomaly_enabled(),
            "hooks": _hooks._top_saved_tensors_default_hooks(True) is not None,
            "stacks": mode_stacks(), "profile": sys.getprofile(), "trace": sys.gettrace()}


_SWITCHES_ON = ("ctx = torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t)\n"
                "ctx.__enter__()\ntorch.autograd.set_detect_anomaly(True)\n"
                "torch.set_grad_enabled(False)\n")
_SWITCHES_OFF = ("ctx.__exit__(None, None, None)\ntorch.autograd.set_detect_anomaly(False)\n"
                 "torch.set_grad_enabled(True)\n")


@pytest.mark.parametrize("line, at", [("--wrt x", 1), ("--wrt x", 2), ("--gradcheck", 3),
                                      ("--symbolic", 1), ("--explain", 2)])
def test_a_ctrl_c_in_a_pass_reaches_the_user_with_their_switches(ip, run_ok, line, at):
    """Guard for what held: a KeyboardInterrupt in one of the analysis' backward passes
    reaches the user (never swallowed into a result), the cell's names are assigned, and
    grad mode (off), anomaly mode (on), the saved-tensor hooks the user entered, the mode
    stacks and the profiler are as the plain cell leaves them."""
    body = ("with torch.enable_grad():\n    x = torch.linspace(-1, 1, 5, requires_grad=True)\n"
            "    y = torch.sin(x) * x.sum()\n")
    run_ok(_SWITCHES_ON)
    run_ok(body)
    plain = _switches()
    run_ok(_SWITCHES_OFF)
    run_ok(_SWITCHES_ON + "del x, y\n")
    engine = torch.autograd.Variable._execution_engine
    interrupting = _Interrupting(engine, at)
    torch.autograd.Variable._execution_engine = interrupting
    try:
        result = ip.run_cell(f"%%vjp {line}\n{body}")
    finally:
        torch.autograd.Variable._execution_engine = engine
        after = _switches()
        run_ok(_SWITCHES_OFF)
    assert interrupting.calls >= at  # the premise: a pass was interrupted
    assert isinstance(result.error_in_exec, KeyboardInterrupt)
    assert after == plain
    assert "y" in ip.user_ns and "x" in ip.user_ns


# -- 6. modules whose forward does more than compute, random draws of numpy and random -------

def _snapshot(ns) -> dict:
    out = {"torch": torch.get_rng_state(), "numpy": np.random.get_state()[1].copy(),
           "random": random.getstate(),
           "names": sorted(k for k in ns if not k.startswith("_"))}
    for k, v in ns.items():
        if k.startswith("_"):
            continue
        if isinstance(v, torch.Tensor):
            out[k] = (v.detach().clone(), v._version, v.requires_grad, v.is_leaf,
                      v.retains_grad, None if v.grad is None else v.grad.clone())
        elif isinstance(v, torch.nn.Module):
            out[k] = ([(n, b.clone(), b._version) for n, b in v.named_buffers()],
                      [(n, p.detach().clone(), p._version, p.grad) for n, p in
                       v.named_parameters()], [m.training for m in v.modules()])
        elif k == "log":
            out[k] = list(v)
    return out


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and a.dtype == b.dtype \
            and torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return np.array_equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(p, q) for p, q in zip(a, b))
    return a == b


_MODULE_SETUPS = {
    "spectral_norm": "lin = nn.utils.spectral_norm(nn.Linear(4, 3))\n",
    "parametrize": (
        "class Sym(nn.Module):\n    def forward(self, W):\n        log.append(1)\n"
        "        return W + W.T\nlin = nn.Linear(4, 4)\n"
        "P.register_parametrization(lin, 'weight', Sym())\n"),
    "lazy": "lin = nn.LazyLinear(3)\n",
    "batchnorm + dropout": "lin = nn.Sequential(nn.BatchNorm1d(4), nn.Dropout(0.5))\n",
}
_HEAD = ("import random, numpy as np, torch.nn as nn\nimport torch.nn.utils.parametrize as P\n"
         "log = []\ntorch.manual_seed(0)\nnp.random.seed(0)\nrandom.seed(0)\n")
_CELL = ("X = torch.randn(6, 4, requires_grad=True)\n"
         "y = lin(X) * torch.from_numpy(np.random.rand(1)).float() * random.random()\n")


# a lazy module has no parameters to name before the cell: no ``--wrt lin`` for it
_MODULE_LINES = [(module, line) for module in _MODULE_SETUPS
                 for line in ("--wrt lin", "--gradcheck", "--wrt X --symbolic")
                 if (module, line) != ("lazy", "--wrt lin")]


@pytest.mark.parametrize(("module", "line"), _MODULE_LINES)
def test_a_module_with_side_effects_leaves_the_state_of_a_plain_run(ip, run_ok, module, line):
    """Guard for what held: spectral_norm's power iteration (writes u, v in place), a
    parametrization (the user's forward, logged), a lazy module (initialised on first call,
    from torch's RNG), BatchNorm's running statistics and dropout's draws: every tensor, its
    version, .grad and flags, every buffer and parameter, the three RNGs and the names are
    as after a plain run of the cell."""
    setup = _HEAD + _MODULE_SETUPS[module]
    run_ok(setup)
    run_ok(_CELL)
    plain = _snapshot(ip.user_ns)
    run_ok(setup)
    result = ip.run_cell(f"%%vjp {line}\n{_CELL}")
    after = _snapshot(ip.user_ns)
    assert result.success, result.error_in_exec
    assert after.keys() == plain.keys()
    assert [k for k in plain if not _same(plain[k], after[k])] == []


def test_parametrized_weights_are_differentiated_through_the_users_parametrization(run_ok):
    """Guard for what held: --wrt lin on a parametrized Linear gives the Jacobian with respect
    to the stored original (torch.func.jacrev of X @ (W + Wᵀ)ᵀ + b)."""
    run_ok(_HEAD + _MODULE_SETUPS["parametrize"] + "X = torch.randn(6, 4)\n")
    r = run_ok("%%vjp --wrt lin\ny = lin(X)\n")
    lin, X = run_ok("lin"), run_ok("X")
    W = lin.parametrizations.weight.original.detach()
    jac = torch.func.jacrev(lambda w: X @ (w + w.T).T + lin.bias.detach())(W)
    torch.testing.assert_close(r.jacobian("lin.parametrizations.weight.original"), jac)


def test_a_scripted_function_with_a_coupling_is_not_taken_for_points(run_vjp):
    """Guard for what held: a torch.jit.script function (its inner calls bypass the
    recorder's TorchFunctionMode) that couples neighbours gets its true Jacobian."""
    import torch.jit

    @torch.jit.script
    def f(x):
        return x * torch.roll(x, 1)

    import builtins
    builtins._s37g20_f = f
    try:
        r = run_vjp("x = torch.linspace(-1, 1, 5, requires_grad=True)\ny = _s37g20_f(x)\n")
    finally:
        del builtins._s37g20_f
    x = torch.linspace(-1, 1, 5)
    jac = torch.autograd.functional.jacobian(lambda t: t * torch.roll(t, 1), x)
    torch.testing.assert_close(r.jacobian("x"), jac)


# -- 7. a value read with .item() that reaches the output after Python arithmetic --------------

_POINT = [0.3, -1.2, 2.0, 0.7, -0.1]
# the cell's line, and the same function without leaving autograd (its true Jacobian)
_EXITS = {
    "clamp(x, min=x.min().item() + 0.5)": (
        "y = torch.clamp(x, min=x.min().item() + 0.5)\n",
        lambda x: torch.clamp(x, min=x.min() + 0.5)),
    "x.clamp(max=x.max().item() - 0.5)": (
        "y = x.clamp(max=x.max().item() - 0.5)\n", lambda x: x.clamp(max=x.max() - 0.5)),
    "m = x.min().item() then clamp(min=m + 0.5)": (
        "m = x.min().item()\ny = torch.clamp(x, min=m + 0.5)\n",
        lambda x: torch.clamp(x, min=x.min() + 0.5)),
    "x * (x.sum().item() + 0.5)": (
        "y = x * (x.sum().item() + 0.5)\n", lambda x: x * (x.sum() + 0.5)),
    "x * math.exp(x[0].item())": (
        "import math\ny = x * math.exp(x[0].item())\n", lambda x: x * torch.exp(x[0])),
    "x * np.float32(x.sum().item())": (
        "import numpy as np\ny = x * np.float32(x.sum().item())\n", lambda x: x * x.sum()),
    "x * sum(x.tolist())": ("y = x * sum(x.tolist())\n", lambda x: x * x.sum()),
    "x * x.detach().numpy().sum()": (
        "y = x * x.detach().numpy().sum()\n", lambda x: x * x.sum()),
}


@pytest.mark.parametrize("cell", list(_EXITS))
def test_an_exited_value_after_python_arithmetic_is_named_as_a_cut(run_vjp, cell):
    source, f = _EXITS[cell]
    true = torch.autograd.functional.jacobian(f, torch.tensor(_POINT, dtype=torch.float64))
    r = run_vjp(f"x = torch.tensor({_POINT}, requires_grad=True)\n" + source)
    shown = r.jacobian("x").double()
    assert not torch.allclose(shown, true, atol=1e-4)  # premise: the formula's derivative differs
    assert r.cuts, "the value computed from x is not named"
    assert "(proved for every x)." not in r._repr_mimebundle_()["text/plain"]


@pytest.mark.parametrize("source", ["y = x * x.sum().item()\n",
                                    "y = torch.clamp(x, min=x.min().item())\n",
                                    "y = torch.clamp(x, min=x.min().detach() + 0.5)\n"])
def test_an_exited_value_used_directly_is_named_as_a_cut(run_vjp, source):
    """The guard's counterpart (held): the value used as it left autograd is a named cut."""
    r = run_vjp(f"x = torch.tensor({_POINT}, requires_grad=True)\n" + source)
    assert len(r.cuts) == 1
    assert "as computed" in r._repr_mimebundle_()["text/plain"]


# -- 8. a cell that stops half-way; a generator of the user's ----------------------------------

_HALF_WAY = {
    "KeyboardInterrupt after dropout": (
        "torch.manual_seed(0)\nX = torch.randn(6, requires_grad=True)\na = torch.sin(X)\n"
        "b = torch.nn.functional.dropout(X, 0.5)\nX.grad = torch.ones(6)\n"
        "raise KeyboardInterrupt\nc = 1\n"),
    "ValueError inside no_grad": (
        "torch.manual_seed(0)\nX = torch.randn(6, requires_grad=True)\n"
        "with torch.no_grad():\n    a = torch.sin(X)\n    raise ValueError\n"),
    "ValueError inside saved_tensors_hooks": (
        "torch.manual_seed(0)\nX = torch.randn(6, requires_grad=True)\n"
        "with torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):\n"
        "    a = torch.sin(X)\n    raise ValueError\n"),
}


@pytest.mark.parametrize("line", ["", "--wrt X"])
@pytest.mark.parametrize("cell", list(_HALF_WAY))
def test_a_cell_that_stops_half_way_leaves_the_state_of_a_plain_run(ip, cell, line):
    """Guard for what held: the cell's own exception reaches the user; the names it assigned,
    .grad, the RNGs, grad mode, the hook and mode stacks are as after a plain run."""
    results, states = [], []
    for source in (_HALF_WAY[cell], f"%%vjp {line}\n{_HALF_WAY[cell]}"):
        assert ip.run_cell("torch.manual_seed(1)").success
        results.append(type(ip.run_cell(source).error_in_exec))
        states.append((_snapshot(ip.user_ns), _switches()))
    assert results[1] is results[0]
    assert states[1][1] == states[0][1]
    assert [k for k in states[0][0] if not _same(states[0][0][k], states[1][0][k])] == []


@pytest.mark.parametrize("line", ["", "--wrt lin", "--wrt X --gradcheck", "--symbolic"])
def test_a_generator_of_the_users_is_left_as_a_plain_run_leaves_it(ip, run_ok, line):
    """Guard for what held: draws from the user's own torch.Generator in the cell (not the
    global one) are not drawn again by a replay: its state after %%vjp is a plain run's."""
    setup = ("g = torch.Generator().manual_seed(0)\n"
             "X = torch.randn(6, 4, generator=g, requires_grad=True)\n"
             "lin = torch.nn.Linear(4, 3)\n")
    cell = ("y = lin(X + torch.randn(6, 4, generator=g)) * "
            "torch.bernoulli(torch.full((6, 3), 0.5), generator=g)\n")
    run_ok(setup)
    run_ok(cell)
    plain = ip.user_ns["g"].get_state()
    run_ok(setup)
    run_ok(f"%%vjp {line}\n{cell}")
    assert torch.equal(ip.user_ns["g"].get_state(), plain)
