"""quiet_autograd sets its modes through torch's C guards (core/quiet.py ``_quiet``, no
``inference_mode`` / ``enable_grad`` / ``ExitStack`` wrappers): inside, grad mode on,
inference mode off, no subclass ``__torch_function__``, autocast off; after, each exactly as
before, also where the code inside switched grad mode off and left it so, or raised.

Expected values: the states read with torch's own readers before the call.
"""
from __future__ import annotations

import contextlib

import pytest
import torch

from vjp_magic.core.quiet import quiet_autograd


class _Logged(torch.Tensor):
    """A subclass with a ``__torch_function__`` of its own (the user's code)."""

    calls = 0

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        cls.calls += 1
        return super().__torch_function__(func, types, args, kwargs or {})


def _inside() -> dict:
    t = torch.ones(2).as_subclass(_Logged)
    before = _Logged.calls
    t + 1
    return {"grad": torch.is_grad_enabled(), "inference": torch.is_inference_mode_enabled(),
            "autocast": torch.is_autocast_enabled("cpu"), "subclass": _Logged.calls - before}


@pytest.mark.parametrize("outer", ["plain", "no_grad", "inference_mode", "autocast"])
def test_modes_inside_and_after(outer):
    contexts = {"plain": torch.enable_grad, "no_grad": torch.no_grad,
                "inference_mode": torch.inference_mode,
                "autocast": lambda: torch.autocast("cpu", dtype=torch.bfloat16)}
    with contexts[outer]():
        before = (torch.is_grad_enabled(), torch.is_inference_mode_enabled(),
                  torch.is_autocast_enabled("cpu"))
        with quiet_autograd():
            inside = _inside()
        after = (torch.is_grad_enabled(), torch.is_inference_mode_enabled(),
                 torch.is_autocast_enabled("cpu"))
    assert inside == {"grad": True, "inference": False, "autocast": False, "subclass": 0}
    assert after == before


@pytest.mark.parametrize("raises", [False, True])
def test_grad_mode_left_off_inside_is_put_back(raises):
    """Code inside that switches grad mode off and does not switch it back (or raises):
    grad mode after is the caller's, not what that code left."""
    for caller in (True, False):
        torch.set_grad_enabled(caller)
        try:
            with pytest.raises(KeyError) if raises else contextlib.nullcontext():
                with quiet_autograd():
                    torch.set_grad_enabled(False)
                    if raises:
                        raise KeyError("inside")
            assert torch.is_grad_enabled() is caller
            assert not torch.is_inference_mode_enabled()
        finally:
            torch.set_grad_enabled(True)

