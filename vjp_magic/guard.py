"""Keeping the autograd graph alive while a cell runs its own ``backward``.

A ``%%vjp`` cell may call ``y.backward(v)`` itself, which frees the graph that the
analysis needs afterwards. Inside :func:`keep_graphs`, ``backward`` and
``torch.autograd.grad`` always retain the graph; a graph the user's code would have
freed is remembered, and a second pass through it fails with PyTorch's own error,
so the cell behaves exactly as it would without the magic.

Every call is recorded (:class:`BackwardCall`: the cell line it came from, the tensors,
a copy of the ``gradient`` given, the error it raised) so that teaching can coach on the
cell's mistakes afterwards.
"""
from __future__ import annotations

import sys
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from .tagging import walk_nodes

FREED_MESSAGE = (
    "Trying to backward through the graph a second time (or directly access saved tensors "
    "after they have already been freed). Saved intermediate values of the graph are freed "
    "when you call .backward() or autograd.grad(). Specify retain_graph=True if you need to "
    "backward through the graph a second time or if you need to access saved tensors after "
    "calling backward."
)

# Calls whose tensors are kept for coaching (older ones are dropped, their graphs with them).
KEEP_CALLS = 32


@dataclass
class BackwardCall:
    """One ``backward`` / ``autograd.grad`` call made by the cell."""

    index: int
    kind: str  # "backward" or "grad"
    tensors: list  # the outputs differentiated
    gradients: list | None  # copies of the gradient arguments given (None entries: implicit)
    inputs: list | None  # backward(inputs=...) / grad(inputs) — None: every leaf
    retain_graph: bool | None
    line: int | None  # line in the cell that made the call (innermost cell frame)
    error: BaseException | None = None
    freed_by: int | None = None  # second-pass error: index of the call that freed the graph


@dataclass
class BackwardLog:
    """What the cell's own backward calls did (used to coach on mistakes)."""

    calls: int = 0
    freed: dict[int, object] = field(default_factory=dict)  # id → node, kept alive for the cell
    freed_by: dict[int, int] = field(default_factory=dict)  # node id → index of the freeing call
    second_pass_error: bool = False
    errors: list[BaseException] = field(default_factory=list)
    records: deque = field(default_factory=lambda: deque(maxlen=KEEP_CALLS))
    lines: dict[int, int | None] = field(default_factory=dict)  # call index → cell line
    kinds: dict[int, str] = field(default_factory=dict)  # call index → "backward" / "grad"
    mistake: object = None  # set by the magics when the cell stopped on a coached error
    # id(leaf) → (leaf, copy of its .grad before the cell's first backward reaching it)
    grad_before: dict[int, tuple] = field(default_factory=dict)

    def release(self) -> None:
        """Drop the tensors and graph nodes held for coaching (after the analysis)."""
        self.freed.clear()
        self.records.clear()
        self.grad_before.clear()
        for error in self.errors:  # their tracebacks hold the cell's frames and tensors
            error.__traceback__ = None


def _as_list(value) -> list:
    if value is None:
        return []
    if isinstance(value, torch.Tensor):
        return [value]
    return list(value)


def _roots(tensors) -> list:
    return [t.grad_fn for t in _as_list(tensors)
            if isinstance(t, torch.Tensor) and t.grad_fn is not None]


def _saves_tensors(node) -> bool:
    return any(name.startswith("_raw_saved_") for name in dir(node))


def _cell_line(filename: str | None) -> int | None:
    """Line of the innermost frame executing the cell's code, if any."""
    if filename is None:
        return None
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_filename == filename:
            return frame.f_lineno
        frame = frame.f_back
    return None


def _copy_gradients(gradients) -> list | None:
    if gradients is None:
        return None
    items = _as_list(gradients)
    return [g.detach().clone() if isinstance(g, torch.Tensor) else g for g in items] or None


@contextmanager
def keep_graphs(filename: str | None = None, namespace: dict | None = None):
    """Patch ``torch.autograd.backward``/``grad`` for the duration of a cell; yields a log.

    ``filename`` is the name the cell's code was compiled under: calls are recorded with
    the line of the cell that made them. ``namespace`` (the user's) is patched too: names
    bound to the real functions (``from torch.autograd import grad`` in an earlier cell)
    call the patched ones during the cell. Afterwards every name in it that holds a patched
    function (bound before, or imported by the cell itself) gets the real one back.
    """
    log = BackwardLog()
    real_backward, real_grad = torch.autograd.backward, torch.autograd.grad

    def check_and_mark(kind, tensors, gradients, inputs, retain_graph, create_graph, run):
        index = log.calls
        log.calls += 1
        outputs = _as_list(tensors)
        record = BackwardCall(
            index=index, kind=kind, tensors=outputs,
            gradients=_copy_gradients(gradients),
            inputs=None if inputs is None else _as_list(inputs),
            retain_graph=retain_graph, line=_cell_line(filename),
        )
        log.records.append(record)
        log.lines[index] = record.line
        log.kinds[index] = kind
        nodes = list(walk_nodes(_roots(tensors)))
        for node in nodes:
            if id(node) in log.freed and _saves_tensors(node):
                log.second_pass_error = True
                record.freed_by = log.freed_by.get(id(node))
                error = RuntimeError(FREED_MESSAGE)
                record.error = error
                log.errors.append(error)
                raise error
        for node in nodes:
            leaf = getattr(node, "variable", None)
            if isinstance(leaf, torch.Tensor) and id(leaf) not in log.grad_before:
                grad = leaf.grad
                log.grad_before[id(leaf)] = (leaf, None if grad is None else grad.detach().clone())
        try:
            result = run()
        except BaseException as error:
            record.error = error
            log.errors.append(error)
            raise
        keep = create_graph if retain_graph is None else retain_graph
        if not keep:
            for node in nodes:
                log.freed[id(node)] = node
                log.freed_by.setdefault(id(node), index)
        return result

    def backward(tensors, grad_tensors=None, retain_graph=None, create_graph=False,
                 grad_variables=None, inputs=None):
        return check_and_mark(
            "backward", tensors, grad_tensors if grad_tensors is not None else grad_variables,
            inputs, retain_graph, create_graph,
            lambda: real_backward(tensors, grad_tensors, True, create_graph,
                                  grad_variables=grad_variables, inputs=inputs),
        )

    def grad(outputs, inputs, grad_outputs=None, retain_graph=None, create_graph=False,
             *args, **kwargs):
        return check_and_mark(
            "grad", outputs, grad_outputs, inputs, retain_graph, create_graph,
            lambda: real_grad(outputs, inputs, grad_outputs, True, create_graph, *args, **kwargs),
        )

    real = {id(real_backward): backward, id(real_grad): grad}
    restore = {id(backward): real_backward, id(grad): real_grad}
    torch.autograd.backward, torch.autograd.grad = backward, grad
    if namespace is not None:
        for name, value in list(namespace.items()):
            if value is real_backward or value is real_grad:
                namespace[name] = real[id(value)]
    try:
        yield log
    finally:
        torch.autograd.backward, torch.autograd.grad = real_backward, real_grad
        if namespace is not None:
            for name, value in list(namespace.items()):
                if value is backward or value is grad:
                    namespace[name] = restore[id(value)]
