"""Keeping the autograd graph alive while a cell runs its own ``backward`` — only where needed.

A ``%%vjp`` cell may call ``y.backward(v)`` itself, which frees the graph. The analysis
rebuilds a graph of its own from the cell's record (:mod:`.hookfree`), so mostly the cell's
pass frees its graph exactly as in a plain cell. Where the record cannot rebuild it (a custom
``autograd.Function``, no complete record, nodes from before the cell), the pass keeps its
graph instead: while the cell runs (:func:`keep_graphs`) the autograd engine object that
``backward`` and ``torch.autograd.grad`` hand their work to is wrapped; nothing the user's
code can hold a reference to is replaced, so nothing of the magic outlives the cell. A kept
graph the user's code would have freed is remembered, node by node as the engine ran them
(:func:`nodes_run`): a second pass through one of them within the cell fails with PyTorch's
own error, and once the analysis is done (or at once, if the cell raises)
:meth:`BackwardLog.release` frees it for real.

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

from ..core.torch_api import FREED_MESSAGE, engine_wrapped
from .passes import (as_list, free_graph, is_functorch, node_key, nodes_run, root_nodes,
                     saves_tensors)

# Calls whose tensors are kept for coaching (older ones are dropped, their graphs with them).
KEEP_CALLS = 8
MAX_COPIED_ENTRIES = 1 << 22  # .grad entries copied around each pass, for coaching


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
    # id(leaf) → what this call added to the leaf's .grad (read off .grad around the call,
    # so that coaching needs no pass of its own through a graph the call may have freed)
    added: dict = field(default_factory=dict)


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
    ops: object = None  # the cell's recorded torch calls (run.record.OpRecord), if any
    first_node: int = 0  # sequence number of the first autograd node the cell can make
    retained_any: bool = False  # whether a pass kept a graph its call would have freed
    created_graph: bool = False  # a pass made a graph (create_graph=True): not in the record

    def must_retain(self, nodes: list) -> bool:
        """Whether a graph the cell's own pass frees must be kept for the analysis: only where
        the analysis cannot rebuild it from the record (:mod:`.hookfree`): no complete record,
        a custom ``autograd.Function`` (its forward is the user's code), nodes made before
        the cell, or a graph made by an earlier pass (``create_graph=True``), which the
        record does not see."""
        ops = self.ops
        if ops is None or ops.failed is not None or self.created_graph:
            return True
        for node in nodes:
            if isinstance(node, torch.autograd.function.BackwardCFunction) and \
                    type(node).__name__ != "BackwardHookFunctionBackward":
                return True
            if not hasattr(node, "variable") and node._sequence_nr() < self.first_node:
                return True
        return False

    def note_grads_before(self, nodes: list) -> dict:
        """Keep each reached leaf's ``.grad`` as it was before the cell's first pass to it;
        return ``{id: (leaf, copy of its .grad now)}`` for the leaves this pass reaches (none
        when they are too large to copy at every pass)."""
        leaves = [n.variable for n in nodes if isinstance(getattr(n, "variable", None),
                                                          torch.Tensor)]
        now = {}
        small = sum(leaf.numel() for leaf in leaves) <= MAX_COPIED_ENTRIES
        for leaf in leaves:
            first = id(leaf) not in self.grad_before
            if not (small or first):
                continue  # no copy wanted: none made (a training loop's hot path)
            grad = leaf.grad
            copy = None if grad is None else grad.detach().clone()
            if first:
                self.grad_before[id(leaf)] = (leaf, copy)
            if small:
                now[id(leaf)] = (leaf, copy)
        return now

    def record(self, kind, tensors, gradients, inputs, retain_graph) -> BackwardCall:
        record = BackwardCall(
            index=self.calls, kind=kind, tensors=as_list(tensors),
            gradients=_copy_gradients(gradients),
            inputs=None if inputs is None else as_list(inputs),
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
            free_graph(roots, item.inputs)


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
    items = as_list(gradients)
    return [g.detach().clone() if isinstance(g, torch.Tensor) else g for g in items] or None


class _RetainingEngine:
    """The autograd engine as the cell sees it: every call recorded; a pass keeps its graph
    only where the analysis will need that graph itself (:meth:`BackwardLog.must_retain`)."""

    def __init__(self, engine, log: BackwardLog):
        self._engine = engine
        self._log = log

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def run_backward(self, tensors, grad_tensors, keep_graph, create_graph, inputs=(),
                     *args, **kwargs):
        if is_functorch(tensors):  # inside torch.func transforms: not the cell's own call
            return self._engine.run_backward(tensors, grad_tensors, keep_graph, create_graph,
                                             inputs, *args, **kwargs)
        log = self._log
        accumulate = kwargs.get("accumulate_grad", args[1] if len(args) > 1 else True)
        record = log.record("backward" if accumulate else "grad", tensors, grad_tensors,
                            inputs or None, keep_graph)
        nodes = nodes_run(root_nodes(tensors), inputs)
        freed = next((log.freed_by[node_key(n)] for n in nodes
                      if node_key(n) in log.freed_by and saves_tensors(n)), None)
        retain = not keep_graph and log.must_retain(nodes)
        if freed is not None and log.retained_any:  # PyTorch's own error, where it would be
            record.freed_by = freed
            record.error = RuntimeError(FREED_MESSAGE)
            log.errors.append(record.error)
            raise record.error
        leaves = log.note_grads_before(nodes) if accumulate else {}
        try:
            result = self._engine.run_backward(tensors, grad_tensors, keep_graph or retain,
                                               create_graph, inputs, *args, **kwargs)
        except BaseException as error:
            record.error, record.freed_by = error, freed
            log.errors.append(error)
            raise
        record.added = _added(leaves)
        log.created_graph = log.created_graph or bool(create_graph)
        if not keep_graph:
            for node in nodes:
                log.freed_by.setdefault(node_key(node), record.index)
        if retain:
            log.retained_any = True
            log.freeing.append(_Freeing(
                [weakref.ref(t) for t in as_list(tensors) if isinstance(t, torch.Tensor)],
                None if not inputs else list(inputs)))
        return result


def _added(leaves: dict) -> dict:
    """``{id(leaf): what the pass added to its .grad}``, from the copies made before it."""
    added = {}
    for key, (leaf, before) in leaves.items():
        grad = leaf.grad
        if grad is not None and not grad.is_sparse:
            added[key] = grad.detach().clone() if before is None else grad.detach() - before
    return added


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
    """While the block runs, every backward pass is recorded, and keeps its graph where the
    analysis will need it (:meth:`BackwardLog.must_retain`; set ``log.ops`` to the cell's
    record first); yields the :class:`BackwardLog`. ``filename`` is the name the cell's code
    was compiled under: calls are recorded with the line of the cell that made them. If the
    block raises, the graphs kept are freed at once."""
    log = BackwardLog(filename=filename, first_node=_next_sequence_number())
    try:
        with engine_wrapped(lambda engine: _RetainingEngine(engine, log)):
            yield log
    except BaseException:
        log.release()  # the cell raised or was interrupted: free now what its passes freed
        raise


def _next_sequence_number() -> int:
    """The sequence number the next autograd node made on this thread will get (at least)."""
    with torch.enable_grad():
        probe = torch.zeros((), requires_grad=True).mul(1)
    return probe.grad_fn._sequence_nr() + 1
