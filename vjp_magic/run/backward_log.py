"""The log of a cell's own ``backward`` / ``autograd.grad`` calls, kept for coaching.

Every call the cell makes is recorded (:class:`BackwardCall`: its kind, the cell line it came
from, the tensors, a copy of the gradients, the error it raised); a call that failed before
reaching the engine (a non-scalar ``backward()``) is rebuilt from its traceback
(:meth:`BackwardLog.record_failure`). The log also holds the graphs the cell's passes would
have freed, freed for real by :meth:`BackwardLog.release` (:mod:`.guard` fills it while the
cell runs). :func:`reaches` says whether a call went through to a leaf.
"""
from __future__ import annotations

import sys
from collections import deque
from dataclasses import dataclass, field

import torch

from ..core.tagging import depends_on
from ..core.textenum import TextEnum
from .passes import as_list, free_graph
from .record import outs_of, reads_of


class CallKind(TextEnum):
    """Which autograd entry point a cell's call went through."""

    BACKWARD = "backward"  # tensor.backward() or torch.autograd.backward(): adds to .grad
    GRAD = "grad"  # torch.autograd.grad(): returns the gradients


# Calls whose tensors are kept for coaching (older ones are dropped, their graphs with them).
KEEP_CALLS = 8
MAX_COPIED_ENTRIES = 1 << 22  # .grad entries copied around each pass, for coaching


@dataclass
class BackwardCall:
    """One ``backward`` / ``autograd.grad`` call made by the cell."""

    index: int
    kind: CallKind
    tensors: list  # the outputs differentiated
    gradients: list | None  # copies of the gradient arguments given (None entries: implicit)
    inputs: list | None  # backward(inputs=...) / grad(inputs) — None: every leaf
    retain_graph: bool | None
    line: int | None  # line in the cell that made the call (innermost cell frame)
    error: BaseException | None = None
    freed_by: int | None = None  # second-pass error: index of the call that freed the graph
    # the gradients were batched (is_grads_batched, a vectorized jacobian): they live only
    # inside the call's vmap, so none was copied (``gradients`` is None, not "implicit")
    batched: bool = False
    # id(leaf) → what this call added to the leaf's .grad (read off .grad around the call,
    # so that coaching needs no pass of its own through a graph the call may have freed)
    added: dict = field(default_factory=dict)
    before: dict = field(default_factory=dict)  # id(leaf) → its .grad just before (None: unset)


@dataclass
class Freeing:
    """A pass the user's code made without retain_graph: its graph is freed after the cell."""

    roots: list  # weak references to the tensors differentiated
    inputs: list | None


@dataclass
class BackwardLog:
    """What the cell's own backward calls did (used to coach on mistakes)."""

    filename: str | None = None
    calls: int = 0
    freed_by: dict[tuple, int] = field(default_factory=dict)  # node key → freeing call
    freeing: list[Freeing] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)
    records: deque = field(default_factory=lambda: deque(maxlen=KEEP_CALLS))
    lines: dict[int, int | None] = field(default_factory=dict)  # call index → cell line
    kinds: dict[int, CallKind] = field(default_factory=dict)  # call index → kind
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
        batched = _batched(gradients)
        record = BackwardCall(
            index=self.calls, kind=CallKind(kind), tensors=as_list(tensors), batched=batched,
            gradients=None if batched else _copy_gradients(gradients),
            inputs=None if inputs is None else as_list(inputs),
            retain_graph=retain_graph, line=_cell_line(self.filename),
        )
        self.calls += 1
        self.records.append(record)
        self.lines[record.index] = record.line
        self.kinds[record.index] = record.kind
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
        if kind == CallKind.BACKWARD:
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
        """Free the graphs the cell's own backward calls would have freed (:meth:`free`),
        then drop what was held for coaching."""
        self.free()
        self.records.clear()
        self.grad_before.clear()
        for error in self.errors:  # their tracebacks hold the cell's frames and tensors
            error.__traceback__ = None

    def free(self) -> None:
        """Free the graphs the cell's own backward calls would have freed, as PyTorch would
        have (a later pass through them fails); called while the records and the cell's
        record still hold the tensors differentiated (a temporary ``y.sum()`` lives only
        there): on every way out of the cell, before they are let go."""
        freeing, self.freeing = self.freeing, []
        graphs = [([r() for r in item.roots], item.inputs) for item in freeing]  # held first
        hooked = _hooked(self.ops) if freeing else []
        for roots, inputs in graphs:
            if all(r is not None for r in roots):
                free_graph(roots, inputs, hooked)


def _hooked(ops) -> list:
    """The tensors the cell's recorded calls read or made that hold ``register_hook`` hooks
    or retain their gradient (set aside while a kept graph is freed)."""
    calls = getattr(ops, "calls", None) or ()
    return [t for call in calls for t in (*reads_of(call), *outs_of(call))
            if type(t) in (torch.Tensor, torch.nn.Parameter)
            and (t._backward_hooks or t.retains_grad)]


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


def _batched(gradients) -> bool:
    """Whether a gradient is a vmap's batched tensor (``autograd.grad(is_grads_batched=True)``
    hands the engine one per row): it cannot be copied outside its vmap (not even detached)."""
    functorch = torch._C._functorch
    return gradients is not None and any(
        isinstance(g, torch.Tensor) and (functorch.is_legacy_batchedtensor(g)
                                         or functorch.is_functorch_wrapped_tensor(g))
        for g in as_list(gradients))


def _copy_gradients(gradients) -> list | None:
    if gradients is None:
        return None
    items = as_list(gradients)
    return [g.detach().clone() if isinstance(g, torch.Tensor) else g for g in items] or None


def reaches(call: BackwardCall, x: torch.Tensor) -> bool:
    """Whether the successful ``backward`` ``call`` went through to the leaf ``x``."""
    if call.kind is not CallKind.BACKWARD or call.error is not None:
        return False
    if call.inputs is not None and not any(t is x for t in call.inputs):
        return False
    return any(isinstance(t, torch.Tensor) and t.requires_grad and depends_on(t, x)
               for t in call.tensors)
