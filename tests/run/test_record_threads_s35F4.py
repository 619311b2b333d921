"""Recording a call changes no process-wide state (s35 F4): the warnings filters and
``showwarning`` are the same inside a recorded call as outside, so another thread warning
meanwhile is filtered, shown or raised as in a plain run, in its own thread. (Before: each
recorded call swapped in an "always" filter and a collector: a warning of another thread was
taken into the cell's call and raised there, after the call, under an "error" filter.)"""
from __future__ import annotations

import threading
import warnings

import torch

import vjp_magic

SEEN: dict = {}


def _other_thread():
    try:
        warnings.warn("from the other thread", UserWarning, stacklevel=1)
        SEEN["other"] = "warned"
    except UserWarning as error:  # the "error" filter, as in a plain run
        SEEN["other"] = f"raised: {error}"


class Doubling(torch.autograd.Function):
    """Its forward (run inside the recorded call) looks at the warnings state and lets
    another thread warn."""

    @staticmethod
    def forward(ctx, x):
        SEEN["filters"] = warnings.filters
        SEEN["showwarning"] = warnings.showwarning
        thread = threading.Thread(target=_other_thread)
        thread.start()
        thread.join()
        return x * 2

    @staticmethod
    def backward(ctx, g):
        return 2 * g


def test_a_recorded_call_leaves_the_warnings_state_alone():
    x = torch.linspace(-1, 1, 3, requires_grad=True)
    filters, show = warnings.filters, warnings.showwarning
    vjp_magic.differentiate(lambda: Doubling.apply(x), x)
    assert SEEN["filters"] is filters and SEEN["showwarning"] is show


def test_another_threads_warning_stays_in_that_thread():
    x = torch.linspace(-1, 1, 3, requires_grad=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="from the other thread")
        r = vjp_magic.differentiate(lambda: Doubling.apply(x), x)  # (no warning raised here)
    assert SEEN["other"] == "raised: from the other thread"
    torch.testing.assert_close(r.jacobian("x"), 2 * torch.eye(3))
