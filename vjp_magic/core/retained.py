"""``.grad`` of ``retain_grad()`` tensors, kept as a plain run leaves it.

Autograd runs a tensor's retains-grad hook on every backward pass through its node,
``torch.autograd.grad`` included, so the analysis's passes would add their vectors into the
``.grad`` of a tensor the user marked with ``retain_grad()`` (and a vectorised pass leaves a
vmap BatchedTensor there, on which the user's next backward raises). PyTorch lists no such
tensors, so :func:`grads_kept` looks for them where they can be found cheaply: the output, the
locals and module globals of the frames on the stack (and the lists, tuples, dicts and sets in
them, a few levels deep), and the young generations of the garbage collector (tensors made
recently); each found on the output's graph has its ``.grad`` put back afterwards. A full
``gc.get_objects()`` scan is not made: it costs tens of milliseconds with a loaded torch
(about 170,000 objects), every call. A retain_grad tensor reachable only from an old object
elsewhere is missed; a BatchedTensor is still never left in the ``.grad`` of a found tensor
or a young one.
"""
from __future__ import annotations

import contextlib
import functools
import gc
import itertools
import sys
import threading

import torch

MAX_VISITED = 1_000  # objects looked at from the frames (about 0.5 ms at most)
DEPTH = 3  # container levels below a frame's variables
_STATE = threading.local()


def _is_batched(t) -> bool:
    check = getattr(getattr(torch._C, "_functorch", None), "is_batchedtensor", None)
    return bool(check is not None and isinstance(t, torch.Tensor) and check(t))


def _from_frames(found: dict, frame) -> None:
    """Breadth first from the frames' variables, at most :data:`MAX_VISITED` objects."""
    level: list = []
    globals_seen: set[int] = set()
    while frame is not None:
        level.extend(frame.f_locals.values())  # 3.13: a proxy, not a dict
        g = frame.f_globals
        if id(g) not in globals_seen and g.get("__name__") == "__main__":
            globals_seen.add(id(g))
            level.extend(g.values())
        frame = frame.f_back
    seen: set[int] = set()
    budget = MAX_VISITED
    for _ in range(DEPTH + 1):
        deeper: list = []
        for obj in level:
            if budget <= 0:
                return
            if id(obj) in seen:
                continue
            budget -= 1
            seen.add(id(obj))
            if isinstance(obj, torch.Tensor):
                if obj.retains_grad:
                    found[id(obj)] = obj
            elif isinstance(obj, (list, tuple, set, frozenset)):
                deeper.extend(itertools.islice(obj, budget))
            elif isinstance(obj, dict):
                deeper.extend(itertools.islice(obj.values(), budget))
        level = deeper


def _young() -> list:
    return [o for gen in (0, 1) for o in gc.get_objects(gen) if isinstance(o, torch.Tensor)]


def retained(output: torch.Tensor, frame=None) -> list[torch.Tensor]:
    """The retain_grad tensors found (see the module's note) whose node is on ``output``'s
    graph."""
    found: dict[int, torch.Tensor] = {}
    if isinstance(output, torch.Tensor) and output.retains_grad:
        found[id(output)] = output
    _from_frames(found, frame if frame is not None else sys._getframe(1))
    for t in _young():
        if t.retains_grad:
            found[id(t)] = t
    if not found or not isinstance(output, torch.Tensor) or output.grad_fn is None:
        return []
    nodes = _nodes(output.grad_fn)
    return [t for t in found.values() if t.grad_fn is not None and t.grad_fn in nodes]


def _nodes(root) -> set:
    seen, stack = {root}, [root]
    while stack:
        for child, _ in stack.pop().next_functions:
            if child is not None and child not in seen:
                seen.add(child)
                stack.append(child)
    return seen


@contextlib.contextmanager
def grads_kept(output: torch.Tensor):
    """Every retain_grad tensor found on ``output``'s graph has its ``.grad`` (the same tensor
    object, or None) back on leaving; nested uses scan once."""
    if getattr(_STATE, "depth", 0):
        yield
        return
    kept = [(t, t.grad) for t in retained(output, sys._getframe(2))]
    _STATE.depth, _STATE.kept, _STATE.batched = 1, [t for t, _ in kept], False
    try:
        yield
    finally:
        batched, _STATE.depth, _STATE.kept, _STATE.batched = _STATE.batched, 0, [], False
        for t, grad in kept:
            t.grad = grad
        for t in _young() if batched else ():  # no BatchedTensor left, even in one not found
            if t.retains_grad and _is_batched(t.grad):
                t.grad = None


def cleared() -> None:
    """After a backward pass inside :func:`grads_kept`: the found tensors' ``.grad`` None
    again, so the next pass's hook neither adds to it nor meets a vmap BatchedTensor there."""
    _STATE.batched = True
    for t in getattr(_STATE, "kept", ()):
        t.grad = None


def keeps_retained_grads(function):
    """Decorator for an entry point whose first argument is the output: :func:`grads_kept`."""
    @functools.wraps(function)
    def wrapper(output, *args, **kwargs):
        with grads_kept(output):
            return function(output, *args, **kwargs)
    return wrapper


__all__ = ["cleared", "grads_kept", "keeps_retained_grads", "retained"]
