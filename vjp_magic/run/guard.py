"""Keeping the autograd graph alive while a cell runs its own ``backward`` — and only then.

A ``%%vjp`` cell may call ``y.backward(v)`` itself, which frees the graph that the analysis
needs afterwards. While the cell runs (:func:`keep_graphs`), the autograd engine object that
``backward`` and ``torch.autograd.grad`` hand their work to is wrapped so that every pass
retains its graph; nothing the user's code can hold a reference to (``torch.autograd.grad``,
``Tensor.backward``) is replaced, so nothing of the magic outlives the cell. A graph the
user's code would have freed is remembered: a second pass through it within the cell fails
with PyTorch's own error, and once the analysis is done :meth:`BackwardLog.release` frees it
for real, so afterwards memory and errors are as a plain cell leaves them.

Every call is recorded (:class:`BackwardCall`: the cell line it came from, the tensors, a
copy of the gradients, the error it raised) so that teaching can coach on the cell's
mistakes; a call that failed before reaching the engine (a non-scalar ``backward()``) is
rebuilt from its traceback (:meth:`BackwardLog.record_failure`).
"""
from __future__ import annotations

import sys
import weakref
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from ..core.tagging import walk_nodes
from ..core.torch_api import ENGINE, FREED_MESSAGE, engine_wrapped

# Calls whose tensors are kept for coaching (older ones are dropped, their graphs with them).
KEEP_CALLS = 8


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
class _Freeing:
    """A pass the user's code made without retain_graph: its graph is freed after the cell."""

    roots: list  # weak references to the tensors differentiated
    inputs: list | None


@dataclass
class BackwardLog:
    """What the cell's own backward calls did (used to coach on mistakes)."""

    filename: str | None = None
    calls: int = 0
    freed_by: dict[tuple, int] = field(default_factory=dict)  # node key → freeing call
    freeing: list[_Freeing] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)
    records: deque = field(default_factory=lambda: deque(maxlen=KEEP_CALLS))
    lines: dict[int, int | None] = field(default_factory=dict)  # call index → cell line
    kinds: dict[int, str] = field(default_factory=dict)  # call index → "backward" / "grad"
    mistake: object = None  # set by run.execute when the cell stopped on a coached error
    # id(leaf) → (leaf, copy of its .grad before the cell's first backward reaching it)
    grad_before: dict[int, tuple] = field(default_factory=dict)

    def record(self, kind, tensors, gradients, inputs, retain_graph) -> BackwardCall:
        record = BackwardCall(
            index=self.calls, kind=kind, tensors=_as_list(tensors),
            gradients=_copy_gradients(gradients),
            inputs=None if inputs is None else _as_list(inputs),
            retain_graph=retain_graph, line=_cell_line(self.filename),
        )
        self.calls += 1
        self.records.append(record)
        self.lines[record.index] = record.line
        self.kinds[record.index] = kind
        return record

    def record_failure(self, error: BaseException) -> None:
        """Record a ``backward``/``grad`` call that raised ``error`` before reaching the engine
        (wrong gradient shape, implicit gradient for a non-scalar output), from its frames."""
        if any(e is error for e in self.errors):
            return
        frame_locals = _autograd_frame(error)
        if frame_locals is None:
            return
        kind, values = frame_locals
        if kind == "backward":
            gradients = values.get("grad_tensors")
            if gradients is None:
                gradients = values.get("grad_variables")
            record = self.record(kind, values.get("tensors"), gradients, values.get("inputs"),
                                 values.get("retain_graph"))
        else:
            record = self.record(kind, values.get("outputs"), values.get("grad_outputs"),
                                 values.get("inputs"), values.get("retain_graph"))
        record.line = _line_in(error, self.filename)
        self.lines[record.index] = record.line
        record.error = error
        self.errors.append(error)

    def release(self) -> None:
        """Drop what was held for coaching, then free the graphs the cell's own backward calls
        would have freed (as PyTorch would have: a later pass through them fails)."""
        self.records.clear()
        self.grad_before.clear()
        for error in self.errors:  # their tracebacks hold the cell's frames and tensors
            error.__traceback__ = None
        freeing, self.freeing = self.freeing, []
        for item in freeing:
            roots = [r() for r in item.roots]
            if any(r is None for r in roots):
                continue
            _free_graph(roots, item.inputs)


def _as_list(value) -> list:
    if value is None:
        return []
    if isinstance(value, (torch.Tensor, torch.autograd.graph.GradientEdge)):
        return [value]
    return list(value)


def _root_nodes(tensors) -> list:
    nodes = []
    for t in _as_list(tensors):
        if isinstance(t, torch.Tensor):
            nodes.append(t.grad_fn)
        elif isinstance(t, torch.autograd.graph.GradientEdge):
            nodes.append(t.node)
    return [n for n in nodes if n is not None]


def _key(node) -> tuple:
    """Identifies a node for as long as the cell runs without keeping it alive. Not by ``id``:
    some PyTorch versions (2.11) give the same node a new Python object each time it is
    reached, and a freed object's ``id`` is reused. A node's sequence number is its own
    (a per-thread counter at creation; the cell's nodes are made on one thread)."""
    return type(node).__name__, node._sequence_nr()


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


def _traceback_frames(error: BaseException):
    tb = error.__traceback__
    while tb is not None:
        yield tb.tb_frame, tb.tb_lineno
        tb = tb.tb_next


def _autograd_frame(error: BaseException):
    """("backward" | "grad", the locals of torch.autograd's function) from the traceback."""
    for frame, _ in _traceback_frames(error):
        code = frame.f_code
        if code.co_name in ("backward", "grad") and code.co_filename.replace("\\", "/") \
                .endswith("torch/autograd/__init__.py"):
            return code.co_name, dict(frame.f_locals)
    return None


def _line_in(error: BaseException, filename: str | None) -> int | None:
    line = None
    for frame, lineno in _traceback_frames(error):
        if filename is not None and frame.f_code.co_filename == filename:
            line = lineno
    return line


def _copy_gradients(gradients) -> list | None:
    if gradients is None:
        return None
    items = _as_list(gradients)
    return [g.detach().clone() if isinstance(g, torch.Tensor) else g for g in items] or None


def _is_functorch(tensors) -> bool:
    is_wrapped = torch._C._functorch.is_functorch_wrapped_tensor
    return any(isinstance(t, torch.Tensor) and is_wrapped(t) for t in _as_list(tensors))


def _has_python_backward(nodes) -> bool:
    return any(isinstance(n, torch.autograd.function.BackwardCFunction) for n in nodes)


def _free_graph(roots, inputs) -> None:
    """Run one pass with zero gradients and ``retain_graph=False`` through the graph of
    ``roots``: the engine frees each node's saved tensors as it goes. ``.grad`` is untouched
    (nothing accumulates). Graphs with Python backward code (custom ``autograd.Function``s)
    are left retained rather than run again."""
    nodes = list(walk_nodes(_root_nodes(roots)))
    if _has_python_backward(nodes):
        return
    if inputs is None:
        inputs = [n.variable for n in nodes if type(n).__name__ == "AccumulateGrad"]
    inputs = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    tensors = [t for t in roots if isinstance(t, torch.Tensor) and t.requires_grad]
    if not inputs or not tensors:
        return
    zeros = tuple(torch.zeros_like(t) for t in tensors)
    try:
        ENGINE.run_backward(
            tuple(tensors), zeros, False, False, tuple(inputs),
            allow_unreachable=True, accumulate_grad=False)
    except RuntimeError:
        pass  # already freed, or modified in place since: nothing left to free here


class _RetainingEngine:
    """The autograd engine as the cell sees it: every pass keeps its graph; calls recorded."""

    def __init__(self, engine, log: BackwardLog):
        self._engine = engine
        self._log = log

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def run_backward(self, tensors, grad_tensors, keep_graph, create_graph, inputs=(),
                     *args, **kwargs):
        if _is_functorch(tensors):  # inside torch.func transforms: not the cell's own call
            return self._engine.run_backward(tensors, grad_tensors, keep_graph, create_graph,
                                             inputs, *args, **kwargs)
        log = self._log
        accumulate = kwargs.get("accumulate_grad", args[1] if len(args) > 1 else True)
        record = log.record("backward" if accumulate else "grad", tensors, grad_tensors,
                            inputs or None, keep_graph)
        nodes = list(walk_nodes(_root_nodes(tensors)))
        for node in nodes:
            key = _key(node)
            if key in log.freed_by and _saves_tensors(node):
                record.freed_by = log.freed_by[key]
                record.error = RuntimeError(FREED_MESSAGE)
                log.errors.append(record.error)
                raise record.error
        if accumulate:
            for node in nodes:
                leaf = getattr(node, "variable", None)
                if isinstance(leaf, torch.Tensor) and id(leaf) not in log.grad_before:
                    grad = leaf.grad
                    log.grad_before[id(leaf)] = (leaf, None if grad is None
                                                 else grad.detach().clone())
        try:
            result = self._engine.run_backward(tensors, grad_tensors, True, create_graph,
                                               inputs, *args, **kwargs)
        except BaseException as error:
            record.error = error
            log.errors.append(error)
            raise
        if not keep_graph:
            for node in nodes:
                log.freed_by.setdefault(_key(node), record.index)
            log.freeing.append(_Freeing(
                [weakref.ref(t) for t in _as_list(tensors) if isinstance(t, torch.Tensor)],
                None if not inputs else list(inputs)))
        return result


def _retained_grad_tensors(namespace) -> list[torch.Tensor]:
    """Non-leaf tensors with ``retain_grad()`` among the namespace's values (and one level of
    lists, tuples and dicts in it): any backward pass through them adds to their ``.grad``."""
    found, seen = [], set()
    for value in list(namespace.values()):
        items = value.values() if isinstance(value, dict) else \
            value if isinstance(value, (list, tuple)) else (value,)
        for item in items:
            if isinstance(item, torch.Tensor) and id(item) not in seen and item.retains_grad:
                seen.add(id(item))
                found.append(item)
    return found


@contextmanager
def retained_grads_kept(namespace):
    """The ``.grad`` of every ``retain_grad()`` tensor in ``namespace`` is as it was before the
    block: autograd's retain_grad hooks also fire during the analysis's own passes."""
    saved = []
    for tensor in _retained_grad_tensors(namespace):
        grad = tensor.grad
        saved.append((tensor, grad, None if grad is None else grad.detach().clone()))
    try:
        yield
    finally:
        for tensor, grad, values in saved:
            if grad is not None and not torch.equal(grad, values):
                with torch.no_grad():
                    grad.copy_(values)
            tensor.grad = grad


@contextmanager
def keep_graphs(filename: str | None = None):
    """While the block runs, every backward pass keeps its graph and is recorded; yields the
    :class:`BackwardLog`. ``filename`` is the name the cell's code was compiled under: calls
    are recorded with the line of the cell that made them."""
    log = BackwardLog(filename=filename)
    with engine_wrapped(lambda engine: _RetainingEngine(engine, log)):
        yield log
