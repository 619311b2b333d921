"""Counting the backward passes a call hands to autograd's engine (a vmap-batched backward
is one pass), for the tests and the bench that assert or report pass counts."""
from __future__ import annotations

from vjp_magic.core.torch_api import engine_wrapped


class _Counting:
    """Autograd's engine, counting the backward passes handed to it."""

    def __init__(self, engine) -> None:
        self.engine, self.passes = engine, 0

    def run_backward(self, *args, **kwargs):
        self.passes += 1
        return self.engine.run_backward(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.engine, name)


def counted(fn):
    """``(fn(), the backward passes it made)``."""
    engines = []
    with engine_wrapped(lambda engine: engines.append(_Counting(engine)) or engines[-1]):
        value = fn()
    return value, engines[0].passes
