"""The strict pass guard's rule for G23's findings (s37 F12): a standard library callable that
PyTorch's hook machinery calls as the engine would (a module backward hook, old or full, a
multi-grad hook) is the user's hook, refused unrun, while PyTorch's Python calling the
standard library by name (``typing.cast`` in a multi-grad hook's dispatch) is no hook; a
function named ``__del__`` is the interpreter's only as its object's finaliser; code compiled
from a string is a module's only in that module's own namespace.

Expected values: ``torch.autograd.functional.jacobian`` and mathematics.
"""
from __future__ import annotations

import queue
import sys
import types

import pytest
import torch
from custom_functions import RUNS, linspace_x

import vjp_magic
from vjp_magic.core import pass_guard as guard_module
from vjp_magic.core.torch_api import guarded_grad


class _Plain(queue.Queue):
    pass


def test_an_old_style_module_backward_hook_from_the_standard_library_is_refused_unrun():
    """``register_backward_hook(q.put)``: PyTorch's ``_WrappedHook`` calls it (held as its
    ``self.hook``), as the engine would call a tensor hook."""
    q = _Plain()
    x = linspace_x()
    m = torch.nn.Linear(5, 5).double()
    m.register_backward_hook(q.put)
    y = m(x).sum()
    with pytest.raises(vjp_magic.VJPUsageError, match="your hook"):
        guarded_grad(y, x)
    assert q.empty()


def test_a_partial_of_a_standard_library_callable_as_a_module_hook_is_refused_unrun():
    import functools
    q = _Plain()
    x = linspace_x()
    m = torch.nn.Tanh()
    m.register_full_backward_pre_hook(functools.partial(q.put))
    y = m(x).sum()
    with pytest.raises(vjp_magic.VJPUsageError, match="your hook"):
        guarded_grad(y, x)
    assert q.empty()


def test_a_multi_grad_hook_of_pytorchs_own_python_runs():
    """``register_multi_grad_hook`` with a PyTorch function: its dispatch calls ``typing.cast``
    (the standard library's Python, by name) and then the function; neither is the user's, so
    the pass runs and its gradient is the Jacobian's."""
    import torch.utils._pytree as pytree
    x = linspace_x()
    a, b = x * 2, x * 3
    torch.autograd.graph.register_multi_grad_hook((a, b), pytree.tree_leaves)
    y = (torch.sin(a) + torch.cos(b)).sum()
    (g,) = guarded_grad(y, x)
    expected = torch.autograd.functional.jacobian(
        lambda t: (torch.sin(2 * t) + torch.cos(3 * t)).sum(), x.detach())
    torch.testing.assert_close(g, expected)


def test_a_multi_grad_hook_of_the_users_is_named_not_typing_cast():
    x = linspace_x()
    a, b = x * 2, x * 3

    def users_hook(grads):
        RUNS.append(grads)

    torch.autograd.graph.register_multi_grad_hook((a, b), users_hook)
    y = (torch.sin(a) + torch.cos(b)).sum()
    RUNS.clear()
    with pytest.raises(vjp_magic.VJPUsageError, match="your hook .*users_hook"):
        guarded_grad(y, x)
    assert not RUNS


def test_a_function_named_del_is_the_interpreters_only_as_its_objects_finaliser():
    seen = []

    class Owned:
        def __del__(self):
            frame = sys._getframe()
            seen.append(guard_module._interpreters(frame, frame.f_code))

    def __del__(g):  # noqa: N807
        frame = sys._getframe()
        seen.append(guard_module._interpreters(frame, frame.f_code))

    Owned().__del__()
    __del__(torch.ones(2))
    __del__(Owned.__new__(type("Other", (), {})))  # one argument, not its finaliser's object
    assert seen[:1] == [True] and seen[1:3] == [False, False]


def test_string_code_is_a_modules_only_in_that_modules_namespace():
    code = compile("def _s37F12_probe():\n    import sys\n    return sys._getframe()\n",
                   "<string>", "exec")
    real = vars(torch.utils.hooks)
    exec(code, real)  # noqa: S102
    try:
        frame = real["_s37F12_probe"]()
    finally:
        del real["_s37F12_probe"]
    assert guard_module._generated(frame, False) == "machinery"
    forged = {"__name__": "torch.utils.hooks"}
    exec(code, forged)  # noqa: S102
    assert guard_module._generated(forged["_s37F12_probe"](), False) == "users"
    namedtuple_like = {"__name__": "namedtuple_Point"}
    exec(code, namedtuple_like)  # noqa: S102
    assert guard_module._generated(namedtuple_like["_s37F12_probe"](), False) == "users"


def test_a_real_namedtuples_new_is_still_the_standard_librarys():
    import collections
    point = collections.namedtuple("Point", "a")
    frames = []

    def profile(frame, event, arg):
        if event == "call" and frame.f_code is point.__new__.__code__:
            frames.append(frame)

    sys.setprofile(profile)
    try:
        point(1)
    finally:
        sys.setprofile(None)
    assert frames and guard_module._generated(frames[0], False) == "standard"
    assert isinstance(frames[0], types.FrameType)
