"""Keeping the autograd graph alive while a cell runs its own ``backward``.

A ``%%vjp`` cell may call ``y.backward(v)`` itself, which frees the graph that the
analysis needs afterwards. Inside :func:`keep_graphs`, ``backward`` and
``torch.autograd.grad`` always retain the graph; a graph the user's code would have
freed is remembered, and a second pass through it fails with PyTorch's own error,
so the cell behaves exactly as it would without the magic.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

FREED_MESSAGE = (
    "Trying to backward through the graph a second time (or directly access saved tensors "
    "after they have already been freed). Saved intermediate values of the graph are freed "
    "when you call .backward() or autograd.grad(). Specify retain_graph=True if you need to "
    "backward through the graph a second time or if you need to access saved tensors after "
    "calling backward."
)


@dataclass
class BackwardLog:
    """What the cell's own backward calls did (used to coach on mistakes)."""

    calls: int = 0
    freed: dict[int, object] = field(default_factory=dict)  # id → node, kept alive for the cell
    second_pass_error: bool = False
    errors: list[BaseException] = field(default_factory=list)


def _roots(tensors) -> list:
    if isinstance(tensors, torch.Tensor):
        tensors = [tensors]
    return [t.grad_fn for t in tensors if isinstance(t, torch.Tensor) and t.grad_fn is not None]


def _reachable(roots) -> list:
    seen: dict[int, object] = {}
    stack = list(roots)
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen[id(node)] = node
        stack.extend(n for n, _ in node.next_functions)
    return list(seen.values())


def _saves_tensors(node) -> bool:
    return any(name.startswith("_raw_saved_") for name in dir(node))


@contextmanager
def keep_graphs():
    """Patch ``torch.autograd.backward``/``grad`` for the duration of a cell; yields a log."""
    log = BackwardLog()
    real_backward, real_grad = torch.autograd.backward, torch.autograd.grad

    def check_and_mark(tensors, retain_graph, create_graph, run):
        log.calls += 1
        nodes = _reachable(_roots(tensors))
        if any(id(n) in log.freed and _saves_tensors(n) for n in nodes):
            log.second_pass_error = True
            raise RuntimeError(FREED_MESSAGE)
        try:
            result = run()
        except BaseException as error:
            log.errors.append(error)
            raise
        keep = create_graph if retain_graph is None else retain_graph
        if not keep:
            log.freed.update((id(n), n) for n in nodes)
        return result

    def backward(tensors, grad_tensors=None, retain_graph=None, create_graph=False,
                 grad_variables=None, inputs=None):
        return check_and_mark(
            tensors, retain_graph, create_graph,
            lambda: real_backward(tensors, grad_tensors, True, create_graph,
                                  grad_variables=grad_variables, inputs=inputs),
        )

    def grad(outputs, inputs, grad_outputs=None, retain_graph=None, create_graph=False,
             *args, **kwargs):
        return check_and_mark(
            outputs, retain_graph, create_graph,
            lambda: real_grad(outputs, inputs, grad_outputs, True, create_graph, *args, **kwargs),
        )

    torch.autograd.backward, torch.autograd.grad = backward, grad
    try:
        yield log
    finally:
        torch.autograd.backward, torch.autograd.grad = real_backward, real_grad
