"""The strict pass guard decides by what is called inside the engine, not by who calls it
(s37 T13): the user's code behind a standard-library hook stops the pass unrun, whatever
state that hook would have changed is left as it was; what the interpreter runs at a free or
a collection inside a pass (a gc callback, a ``__del__``, a weakref callback) runs as in a
plain run, neither refused nor swallowed.
"""
from __future__ import annotations

import collections
import contextlib
import functools
import gc
import logging
import queue
import sys
import warnings
import weakref

import pytest
import torch
from custom_functions import RUNS, Cube, hooked, linspace_x, record_run

import vjp_magic
from vjp_magic.core import pass_guard as guard_module
from vjp_magic.core.pass_guard import pass_guard
from vjp_magic.core.torch_api import guarded_grad

ENTRIES = ["differentiate", "dependency", "sparse_jacobian"]


class _Plain(queue.Queue):
    pass


class _Logged(logging.Handler):
    def emit(self, record):
        RUNS.append(record)


def _logger():
    logger = logging.getLogger("test_pass_guard_s37T13")
    logger.handlers[:] = [_Logged()]
    logger.propagate = False
    return logger


@functools.singledispatch
def _dispatched(grad):
    RUNS.append(grad)


def _decorated():
    @contextlib.contextmanager
    def nothing():
        yield
    return nothing()(record_run)


# A hook that is the standard library's own Python (or a stdlib wrapper of the user's): its
# state (the queue, the list, the logger's handler) must be as a plain run without the pass
# leaves it, and the user's code behind it unrun.
STDLIB_HOOKS = {
    "Queue.put": lambda: _Plain().put,
    "UserList.append": lambda: collections.UserList().append,
    "Logger.warning": lambda: _logger().warning,
    "singledispatch": lambda: _dispatched,
    "contextlib decorator": _decorated,
}


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("kind", list(STDLIB_HOOKS))
def test_a_standard_library_hook_is_refused_unrun(kind, entry):
    hook = STDLIB_HOOKS[kind]()
    holder = getattr(hook, "__self__", None)
    x = linspace_x()
    y = hooked(x, hook)
    RUNS.clear()
    with pytest.raises(vjp_magic.VJPUsageError, match="your hook"):
        getattr(vjp_magic, entry)(y, x)
    assert not RUNS
    if isinstance(holder, queue.Queue):
        assert holder.empty()
    elif isinstance(holder, collections.UserList):
        assert len(holder) == 0


def test_a_wrapped_hook_is_named_by_the_users_function():
    """A decorator's wrapper (contextlib's ``inner``) is refused naming the user's function
    it holds, with its file and line."""
    x = linspace_x()
    with pytest.raises(vjp_magic.VJPUsageError) as error:
        vjp_magic.differentiate(hooked(x, _decorated()), x)
    where = f"record_run (custom_functions.py:{record_run.__code__.co_firstlineno})"
    assert where in str(error.value)


# -- what the interpreter runs inside a pass ---------------------------------------------------

def _deep():
    xs = [torch.tensor(0.5, dtype=torch.float64, requires_grad=True) for _ in range(100)]
    return torch.stack(xs).sin().sum(), xs


@contextlib.contextmanager
def _unraisable(collect: bool = False):
    """Every unraisable error kept (a profiler's raise inside a gc callback or ``__del__``
    is swallowed by the interpreter: the user's code then skipped, the pass going on); with
    ``collect``, a collection at every allocation (so inside the engine's run_backward too,
    where it wraps the gradients it returns)."""
    unraisable, before = [], sys.unraisablehook
    threshold = gc.get_threshold()
    sys.unraisablehook = unraisable.append
    if collect:
        gc.set_threshold(1, 1, 1)
    try:
        yield unraisable
    finally:
        gc.set_threshold(*threshold)
        sys.unraisablehook = before


def _in_the_engine(frame) -> bool:
    """Whether ``frame`` was called by C from inside the engine's ``run_backward``: the pass's
    guard is the thread's profiler, and ``frame``'s caller the frame that made that C call."""
    guard = getattr(sys.getprofile(), "__self__", None)
    return isinstance(guard, guard_module._Guard) and bool(guard._running) \
        and guard._running[-1] is frame.f_back


def test_a_gc_callback_runs_in_a_pass_neither_refused_nor_swallowed():
    calls = []

    def callback(phase, info):
        calls.append(_in_the_engine(sys._getframe()))

    y, xs = _deep()
    gc.callbacks.append(callback)
    try:
        with _unraisable(collect=True) as unraisable:
            for _ in range(5):
                grads = guarded_grad(y, xs, retain_graph=True)
    finally:
        gc.callbacks.remove(callback)
    assert not unraisable, unraisable[0].exc_value
    assert any(calls), "no collection fell inside the engine: the test tests nothing"
    torch.testing.assert_close(torch.stack(grads), torch.full((100,), 0.5).cos().double())


class _Freed:
    """A user's object with a ``__del__``, held by a tensor the graph saved and nothing else:
    the engine frees it inside a pass that does not retain the graph."""

    def __init__(self, log):
        self.log = log

    def __del__(self):
        self.log.append(("__del__", _in_the_engine(sys._getframe())))


def test_a_del_and_weakref_callbacks_run_in_a_pass_neither_refused_nor_swallowed():
    log = []
    x = linspace_x()
    t = x * 2
    t.held = _Freed(log)
    weakref.finalize(t.held, log.append, "finalize")
    kept = weakref.ref(t.held, lambda ref: log.append("weakref"))
    y = (t * t).sum()  # saves t, the only holder of t.held once the name is gone
    del t
    with _unraisable() as unraisable:  # (a plain free, no collection)
        (g,) = guarded_grad(y, x)
    assert not unraisable, unraisable[0].exc_value
    assert ("__del__", True) in log, log  # freed inside the engine, and run
    assert "finalize" in log and "weakref" in log and kept() is None
    torch.testing.assert_close(g, 8 * x.detach())  # y = Σ (2x)², ∂y/∂x = 8x


def test_a_warning_from_the_engine_is_shown_by_the_users_showwarning():
    """Anomaly mode's forward traceback is a warning the engine's C shows inside
    run_backward (C makes a warnings.WarningMessage and calls _showwarnmsg, which calls the
    user's showwarning): shown as in a plain run, and PyTorch's error follows, no refusal."""
    shown = []

    def showwarning(message, category, filename, lineno, file=None, line=None):
        shown.append(str(message))

    x = torch.tensor([-1.0, 1.0], requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.autograd.detect_anomaly():
            y = torch.sqrt(x).sum()  # nan at -1: its backward returns nan
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = showwarning
        with torch.autograd.detect_anomaly(check_nan=True), \
                pytest.raises(RuntimeError, match="returned nan values"), pass_guard():
            torch.autograd.grad(y, x)
    assert any("Error detected in SqrtBackward0" in text for text in shown), shown


def test_a_non_reentrant_checkpoint_recomputes_under_the_strict_guard():
    """Its recomputation (the user's forward, run by the checkpoint's unpack hook) is the
    user's code by design, like a custom backward: it runs, and the gradient is right."""
    calls = []

    def block(t):
        calls.append(1)
        return torch.sin(t) * t

    x = linspace_x()
    y = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False).sum()
    with pass_guard():
        (g,) = torch.autograd.grad(y, x)
    assert len(calls) == 2  # the forward and its recomputation in the pass
    expected = torch.autograd.functional.jacobian(lambda t: (torch.sin(t) * t).sum(),
                                                  x.detach())
    torch.testing.assert_close(g, expected)


@pytest.mark.parametrize("args, interpreters", [
    (("start", {"generation": 0, "collected": 0, "uncollectable": 0}), True),  # gc callback
    ((2, None), True),  # a signal handler (SIGINT, no frame)
    ((torch.ones(2),), False),  # a tensor hook's gradient
    (("start", {"generation": 0}, torch.ones(2)), False),  # a gradient among them
    (((torch.ones(2), None), (torch.ones(2),)), False),  # a node hook's
])
def test_the_interpreters_calls_are_told_by_their_arguments(args, interpreters):
    seen = []

    def called(*values):
        frame = sys._getframe()
        seen.append(guard_module._interpreters(frame, frame.f_code))

    called(*args)
    assert seen == [interpreters]


def test_a_custom_backward_and_its_helpers_still_run_under_the_strict_guard():
    """The user's custom Function is theirs by design: run (policed for re-entry only)."""
    x = linspace_x()
    with pass_guard():
        (g,) = torch.autograd.grad(torch.sin(Cube.apply(x)).sum(), x)
    expected = torch.autograd.functional.jacobian(lambda t: torch.sin(t ** 3).sum(),
                                                  x.detach())
    torch.testing.assert_close(g, expected)


# -- the guard's cost: armed around the engine's C call only ----------------------------------

def test_a_guarded_pass_profiles_the_engines_call_only(monkeypatch):
    """torch.autograd.grad's own Python on the way to the engine makes no profile event (it
    made some 80, each a call of the guard's profiler): a hook-free pass makes 3 or so."""
    events = []
    real = guard_module._Guard._watch

    def watch(self, frame, event, arg):
        events.append(event)
        return real(self, frame, event, arg)

    monkeypatch.setattr(guard_module._Guard, "_watch", watch)
    x = linspace_x()
    (g,) = guarded_grad(torch.sin(x).sum(), x)
    assert 0 < len(events) <= 6, events
    torch.testing.assert_close(g, torch.cos(x.detach()))
    y = hooked(x)  # and the strict guard still sees a hook inside the engine's call
    RUNS.clear()
    with pytest.raises(vjp_magic.VJPUsageError, match="your hook record_run"):
        guarded_grad(y.sum(), x)
    assert not RUNS


def test_the_engine_is_put_back_after_passes_on_several_threads():
    """Each guarded call swaps autograd's engine object for its own and puts it back, even
    when threads swap out of order; another thread's pass is not guarded by it."""
    import threading

    engine = torch.autograd.Variable._execution_engine
    errors, hooked_runs = [], []

    def work(hook_too):
        try:
            for _ in range(100):
                x = linspace_x()
                (g,) = guarded_grad(torch.sin(x).sum(), x)
                torch.testing.assert_close(g, torch.cos(x.detach()))
                if hook_too:  # a plain backward of the user's own, with a hook: it runs
                    z = x * 1
                    z.register_hook(lambda grad: hooked_runs.append(1))
                    z.sum().backward()
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(i % 2 == 1,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert torch.autograd.Variable._execution_engine is engine
    assert len(hooked_runs) == 200


def test_a_guarded_pass_leaves_nothing_to_the_collector():
    """The guard's profiler (a bound method) is held by the guard only while installed: held
    for good it made each pass's guard a cycle, 4 objects a pass for the collector (about
    4 us a pass in collections)."""
    x = linspace_x()
    y = torch.sin(x).sum()
    # collections until none finds more: an earlier test's graph can free in stages (a
    # collection drops a node, whose hook's cycle only then becomes garbage), not this pass's
    while gc.collect():
        pass
    gc.disable()
    try:
        for _ in range(50):
            guarded_grad(y, x, retain_graph=True)
            with pass_guard():
                torch.autograd.grad(y, x, retain_graph=True)
        found = gc.collect()
    finally:
        gc.enable()
    assert found == 0


# -- a custom backward the engine calls through apply_boxed -------------------------------------

class _Boxed(torch.autograd.Function):
    """x ↦ x³ whose backward takes its gradients boxed in a list (``boxed_grads_call``: the
    engine calls ``BackwardCFunction.apply_boxed``, as for a compiled model's AOT backward)."""

    boxed_grads_call = True
    reenter = False

    @staticmethod
    def forward(ctx, t):
        ctx.save_for_backward(t)
        return t ** 3

    @staticmethod
    def backward(ctx, grads):
        (t,) = ctx.saved_tensors
        if _Boxed.reenter:  # a backward re-entering autograd: stopped before it starts
            with torch.enable_grad():
                u = t.detach().requires_grad_()
                (d,) = torch.autograd.grad((u ** 3).sum(), u)
            return d * grads[0]
        return 3 * t * t * grads[0]


def test_a_boxed_custom_backward_is_the_users_by_design_and_policed():
    """Like apply's: it runs (it was refused as a hook: torch.compile'd models too), and a
    re-entry into autograd inside it is stopped with the custom-Function usage error."""
    x = linspace_x()
    y = torch.sin(_Boxed.apply(x)).sum()
    (g,) = guarded_grad(y, x, retain_graph=True)
    expected = torch.autograd.functional.jacobian(lambda t: torch.sin(t ** 3).sum(), x.detach())
    torch.testing.assert_close(g, expected)
    _Boxed.reenter = True
    try:
        with pytest.raises(vjp_magic.VJPUsageError, match="_Boxed"):
            guarded_grad(y, x, retain_graph=True)
    finally:
        _Boxed.reenter = False


# -- code compiled from a string is its maker's -------------------------------------------------

def test_a_nested_tensors_pass_runs_under_the_strict_guard():
    """A jagged nested tensor's dispatch (PyTorch's Python) evals a type's name: code of
    ``<string>`` called by PyTorch, PyTorch's own, not a hook (it was refused as one)."""
    a = torch.linspace(0.1, 1, 12, dtype=torch.float64).reshape(3, 4).requires_grad_()
    b = torch.linspace(-1, 1, 8, dtype=torch.float64).reshape(2, 4).requires_grad_()
    nested = torch.nested.as_nested_tensor([a, b], layout=torch.jagged)
    y = (nested.sin() * 2).values().sum()
    ga, gb = guarded_grad(y, [a, b])
    torch.testing.assert_close(ga, 2 * a.detach().cos())
    torch.testing.assert_close(gb, 2 * b.detach().cos())


@pytest.mark.parametrize("globals_", [{}, {"__name__": "__main__"}], ids=["no module", "main"])
@pytest.mark.parametrize("how", ["tensor hook", "module backward hook"])
def test_a_hook_compiled_from_a_string_is_the_users(globals_, how):
    """A hook exec'd in a REPL's ``__main__`` or into globals naming no module, called by the
    engine (its first call) or through PyTorch's module-hook machinery: the user's, refused."""
    namespace = dict(globals_, RUNS=RUNS)
    exec(compile("def hook(*args):\n    RUNS.append(args)\n", "<string>", "exec"), namespace)  # noqa: S102
    x = linspace_x()
    if how == "tensor hook":
        y = hooked(x, namespace["hook"]).sum()
    else:
        layer = torch.nn.Tanh()
        layer.register_full_backward_hook(namespace["hook"])
        y = layer(x).sum()
    RUNS.clear()
    with pytest.raises(vjp_magic.VJPUsageError, match="your hook hook"):
        guarded_grad(y, x)
    assert not RUNS
