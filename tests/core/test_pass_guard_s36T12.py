"""The strict pass guard, done right (s36 T12): the two causes that made T11's guard fail the
full suite, and the class behind each.

1. After a pass stopped by an exception (a refused hook, an interrupt in a custom backward), the
   thread's profiler is what it was before the pass: None, a Python profile function, or a C
   profiler (cProfile); an object that is no function is never installed as the profiler
   (the profiler would call it at the next event: "'traceback' object is not callable").
2. Only Python that autograd's engine calls from inside its ``run_backward`` C call is a hook:
   a Python wrapper of the engine that PyTorch's own Python calls on its way in (the tests'
   pass counter) runs, and a hook behind it is still refused; a custom backward calling the
   engine through such a wrapper is still stopped.
"""
from __future__ import annotations

import contextlib
import cProfile
import functools
import sys
import types

import pytest
import torch
from custom_functions import RUNS, Twice, hooked, linspace_x
from custom_functions import record_run as _hook
from pass_counter import counted

import vjp_magic
from vjp_magic.core.pass_guard import _restore_profile, pass_guard
from vjp_magic.core.reentrant import reentrant_nodes
from vjp_magic.core.torch_api import guarded_grad

_x, _hooked = linspace_x, hooked


def _events():
    seen = []

    def profile(frame, event, arg):
        seen.append(event)
    return profile, seen


# -- 1. the profiler after an exception inside a pass ------------------------------------------

@pytest.mark.parametrize("before", ["none", "a profile function", "cProfile"])
@pytest.mark.parametrize("entry", ["differentiate", "dependency", "sparse_jacobian"])
def test_the_profiler_is_restored_after_a_refused_hook(before, entry):
    x = _x()
    y = _hooked(x)
    RUNS.clear()
    profiler = None
    if before == "a profile function":
        profiler, seen = _events()
        sys.setprofile(profiler)
    elif before == "cProfile":
        profiler = cProfile.Profile()
        profiler.enable()
    try:
        with pytest.raises(vjp_magic.VJPUsageError, match="your hook record_run"):
            getattr(vjp_magic, entry)(y, x)
        inside = sys.getprofile()
    finally:
        if before == "cProfile":
            profiler.disable()
        else:
            sys.setprofile(None)
    assert not RUNS
    assert inside is profiler  # the same object, not a traceback nor the guard's function
    # and a later pass, unguarded by the test, leaves None as None
    torch.autograd.grad(torch.sin(x).sum(), x)
    assert sys.getprofile() is None


def test_the_profiler_is_restored_after_each_of_many_refusals():
    """Many refusals in a row (a stale or dangling profile object would show here)."""
    for _ in range(50):
        x = _x()
        with pytest.raises(vjp_magic.VJPUsageError):
            vjp_magic.differentiate(_hooked(x), x)
        assert sys.getprofile() is None


class _Interrupting(Twice):
    @staticmethod
    def backward(ctx, g):
        if _Interrupting.armed:
            raise KeyboardInterrupt
        return g * 2


_Interrupting.armed = False


def test_the_profiler_is_restored_after_an_interrupt_in_a_pass():
    x = _x()
    y = torch.sin(_Interrupting.apply(x))
    profiler, _ = _events()
    sys.setprofile(profiler)
    _Interrupting.armed = True
    try:
        with pytest.raises(KeyboardInterrupt):
            guarded_grad(y.sum(), x, retain_graph=True)
        inside = sys.getprofile()
    finally:
        _Interrupting.armed = False
        sys.setprofile(None)
    assert inside is profiler


@pytest.mark.parametrize("previous", [types.SimpleNamespace(), (1, 2)],
                         ids=["an object", "a tuple"])
def test_an_object_that_is_no_function_is_never_installed(previous):
    """sys.setprofile takes any object and the next event calls it: the guard restores None
    in its place (a C profiler with .enable() is enabled again instead)."""
    _restore_profile(previous)
    assert sys.getprofile() is None


# -- 2. only Python the engine calls is a hook -------------------------------------------------

def test_a_python_wrapper_of_the_engine_is_not_refused():
    x = _x()
    y = torch.sin(x)
    grads, passes = counted(lambda: guarded_grad(y.sum(), x, retain_graph=True))
    assert passes == 1
    torch.testing.assert_close(grads[0], torch.cos(x.detach()))
    r, passes = counted(lambda: vjp_magic.differentiate(torch.sin(x) * x.roll(1), x))
    assert passes >= 1
    expected = torch.autograd.functional.jacobian(lambda t: torch.sin(t) * t.roll(1),
                                                  x.detach())
    torch.testing.assert_close(r.jacobian("x"), expected)


def test_a_hook_behind_a_wrapper_of_the_engine_is_still_refused():
    x = _x()
    y = _hooked(x)
    RUNS.clear()
    with pytest.raises(vjp_magic.VJPUsageError, match="your hook record_run"):
        counted(lambda: vjp_magic.differentiate(y, x))
    assert not RUNS


def test_a_torch_function_subclass_is_no_hook():
    """PyTorch's Python calls __torch_function__ on its way to the engine, outside it."""
    calls = []

    class Logged(torch.Tensor):
        @classmethod
        def __torch_function__(cls, func, types_, args=(), kwargs=None):
            calls.append(func)
            return super().__torch_function__(func, types_, args, kwargs or {})

    x = _x()
    y = torch.sin(x).as_subclass(Logged)
    with pass_guard():
        (g,) = torch.autograd.grad(y.sum(), x)
    assert calls
    torch.testing.assert_close(torch.Tensor(g), torch.cos(x.detach()))


class _ViaTheEngine(torch.autograd.Function):
    """A backward that calls autograd's engine through whatever stands for it (a wrapper)."""

    @staticmethod
    def forward(ctx, t):
        ctx.save_for_backward(t)
        return t * 2

    @staticmethod
    def backward(ctx, g):
        (t,) = ctx.saved_tensors
        with torch.enable_grad():
            u = t.detach().requires_grad_()
            engine = torch.autograd.Variable._execution_engine
            (d,) = engine.run_backward(((u * 2).sum(),), (torch.ones(()),), False, False,
                                       (u,), allow_unreachable=True, accumulate_grad=False)
        return d * g


def test_a_backward_calling_the_engine_through_a_wrapper_is_stopped():
    x = _x()
    y = _ViaTheEngine.apply(x)
    found, _ = counted(lambda: reentrant_nodes(y))
    assert found == ("_ViaTheEngineBackward",)


# -- the class of hooks: a wrapper of the standard library's around the user's hook -------------

def _decorated(hook):
    @contextlib.contextmanager
    def nothing():
        yield

    return nothing()(hook)


@pytest.mark.parametrize("wrap", [_decorated, functools.partial],
                         ids=["contextlib decorator", "functools.partial"])
def test_a_wrapped_hook_is_refused_unrun(wrap):
    x = _x()
    h = x * 1
    h.register_hook(wrap(_hook))
    RUNS.clear()
    with pytest.raises(vjp_magic.VJPUsageError, match="your hook"):
        vjp_magic.differentiate(torch.sin(h), x)
    assert not RUNS
