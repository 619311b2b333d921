"""What a custom ``autograd.Function``'s forward writes when a replay runs it again: put back.

A plain run of a cell runs such a forward once; a replay (``--gradcheck``'s float64 copies)
runs it again, and it is the user's code: a running statistic it adds to (a global tensor,
one in a dict or on an object, a module's running stats and ``num_batches_tracked``) would
end written once per replay, a call it counts (a list, a global) counted once per replay,
and what it prints would show once per replay.
:func:`forward_kept` runs one such call with the tensors the forward can reach copied and
put back after (values, then version counters where this PyTorch can set them), and its
printing silenced. Only replays of a user's Function pay.
"""
from __future__ import annotations

import contextlib
import io

from ..core import user_effects
from ..core.backward_writes import copied, put_back
from ..core.reach import class_attribute, read_by, reached, tensors_of
from .record import tensors_in


def reachable(function: type, args: tuple, kwargs: dict, held: list | None = None) -> list:
    """The tensors ``function``'s forward can write besides its arguments' own: what its
    code reads by a global name or a closure, what the arguments hold (a dict, a module, an
    object: :func:`..core.reach.reached`), the parameters and buffers of the
    modules among them. The tensors given as arguments are the replay's own values.
    ``held``: what it reaches (:func:`_held`), where already found."""
    given = {id(t) for t in tensors_in((args, kwargs))}
    held = _held(function, args, kwargs) if held is None else held
    found, seen = [], set(given)
    for tensor in tensors_of(held):
        if id(tensor) not in seen:
            seen.add(id(tensor))
            found.append(tensor)
    return found


def _held(function: type, args: tuple, kwargs: dict) -> list:
    """What ``function``'s forward reaches: by its code's names, and through its arguments."""
    return read_by(class_attribute(function, "forward")) + reached([*args, *kwargs.values()])


@contextlib.contextmanager
def forward_kept(function: type, args: tuple, kwargs: dict):
    """The block (a replay's call of ``function``, a user's custom Function) leaves the
    tensors and the Python state (:mod:`..core.user_effects`) its forward can reach as they
    were, and prints nothing."""
    held = _held(function, args, kwargs)
    forward = getattr(function, "forward", None)
    effects = user_effects.kept(held, [getattr(forward, "__func__", forward)])
    kept = copied(reachable(function, args, kwargs, held))
    try:
        with contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        put_back(kept)
        user_effects.put_back(effects)


__all__ = ["forward_kept", "reachable"]
