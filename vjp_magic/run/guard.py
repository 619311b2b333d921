"""Keeping the autograd graph alive while a cell runs its own ``backward`` — only where needed.

A ``%%vjp`` cell may call ``y.backward(v)`` itself, which frees the graph. The analysis
rebuilds a graph of its own from the cell's record (:mod:`.hookfree`), so mostly the cell's
pass frees its graph exactly as in a plain cell. Where the record cannot rebuild it (a custom
``autograd.Function``, no complete record, nodes from before the cell), the pass keeps its
graph instead: while the cell runs (:func:`keep_graphs`) the autograd engine object that
``backward`` and ``torch.autograd.grad`` hand their work to is wrapped, for the cell's own
thread only (another thread's passes go to the engine untouched); nothing the user's
code can hold a reference to is replaced, so nothing of the magic outlives the cell. A kept
graph the user's code would have freed is remembered, node by node as the engine ran them
(:func:`nodes_run`): a second pass through one of them within the cell fails with PyTorch's
own error, and once the analysis is done (or at once, if the cell raises)
:meth:`BackwardLog.release` frees it for real.

Every call is recorded in the :class:`~.backward_log.BackwardLog` (:mod:`.backward_log`), so
that teaching can coach on the cell's mistakes.
"""
from __future__ import annotations

import threading
import weakref
from contextlib import contextmanager

import torch

from ..core.quiet import no_subclass_code
from ..core.reentrant import unpacks_users_code
from ..core.torch_api import FREED_MESSAGE, engine_wrapped
from .backward_log import BackwardLog, CallKind, Freeing
from .passes import as_list, is_functorch, node_key, nodes_run, root_nodes, saves_tensors


class _ThreadsEngine:
    """The engine while the cell runs: the passes of the cell's thread (the one that entered
    :func:`keep_graphs`) go to ``wrapped``; every other thread's go to ``engine`` as if
    nothing were wrapped (a training thread's ``backward`` is none of the cell's). A pass
    re-entered from inside the cell's running pass on an engine thread (a custom backward or
    hook on a GPU's device thread) is the cell's too."""

    def __init__(self, engine, wrapped):
        self._engine, self._wrapped = engine, wrapped
        self._owner = threading.get_ident()
        self._running = 0  # the cell thread's passes now in progress

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def run_backward(self, *args, **kwargs):
        if threading.get_ident() != self._owner:
            inside_owners = self._running and torch._C._current_graph_task_id() != -1
            target = self._wrapped if inside_owners else self._engine
            return target.run_backward(*args, **kwargs)
        self._running += 1
        try:
            return self._wrapped.run_backward(*args, **kwargs)
        finally:
            self._running -= 1


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
        if is_functorch(tensors) or _compiling():  # inside torch.func transforms, or
            # torch.compile tracing the cell's function (aot_autograd's joint graph, on
            # tensors of its own): not the cell's own call
            return self._engine.run_backward(tensors, grad_tensors, keep_graph, create_graph,
                                             inputs, *args, **kwargs)
        log = self._log
        accumulate = kwargs.get("accumulate_grad", args[1] if len(args) > 1 else True)
        kind = CallKind.BACKWARD if accumulate else CallKind.GRAD
        record = log.record(kind, tensors, grad_tensors, inputs or None, keep_graph)
        nodes = nodes_run(root_nodes(tensors), inputs)
        freed = next((log.freed_by[node_key(n)] for n in nodes
                      if node_key(n) in log.freed_by and saves_tensors(n)), None)
        # (a graph the user's code unpacks is not kept: freeing it later would run that code)
        retain = not keep_graph and log.must_retain(nodes) and not unpacks_users_code(nodes)
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
        record.before = {key: copy for key, (_, copy) in leaves.items()}
        log.created_graph = log.created_graph or bool(create_graph)
        if not keep_graph:
            for node in nodes:
                log.freed_by.setdefault(node_key(node), record.index)
        if retain:
            log.retained_any = True
            log.freeing.append(Freeing(
                [weakref.ref(t) for t in as_list(tensors) if isinstance(t, torch.Tensor)],
                None if not inputs else list(inputs)))
        return result


def _compiling() -> bool:
    """Whether ``torch.compile`` is tracing now (:func:`torch.compiler.is_compiling`)."""
    compiling = getattr(getattr(torch, "compiler", None), "is_compiling", None)
    return compiling is not None and compiling()


def _added(leaves: dict) -> dict:
    """``{id(leaf): what the pass added to its .grad}``, from the copies made before it."""
    added = {}
    for key, (leaf, before) in leaves.items():
        grad = leaf.grad
        if grad is not None and not grad.is_sparse:
            added[key] = grad.detach().clone() if before is None else grad.detach() - before
    return added


@no_subclass_code()  # .retains_grad of a tensor subclass: none of its __torch_function__
def _retained_grad_tensors(namespace) -> list[torch.Tensor]:
    """Non-leaf tensors with ``retain_grad()`` among the namespace's values (and one level of
    lists, tuples and dicts in it): any backward pass through them adds to their ``.grad``."""
    found, seen = [], set()
    tensor = torch.Tensor
    for value in list(namespace.values()):
        if isinstance(value, tensor):
            items = (value,)
        elif isinstance(value, dict):
            items = value.values()
        elif isinstance(value, (list, tuple)):
            items = value
        else:
            continue  # (a module, a function, a number: no tensor of its own here)
        for item in items:
            if isinstance(item, tensor) and item.retains_grad and id(item) not in seen:
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
        with engine_wrapped(lambda engine: _ThreadsEngine(
                engine, _RetainingEngine(engine, log))):
            yield log
    except BaseException:
        log.release()  # the cell raised or was interrupted: free now what its passes freed
        raise


@contextmanager
def freed_if_raised(log: BackwardLog):
    """If the block raises (the user's error, a Ctrl-C), the graphs ``log`` kept are freed at
    once, inside the contexts that still hold what the cell's passes differentiated (the
    cell's record: :func:`keep_graphs` exits after it has let go)."""
    try:
        yield
    except BaseException:
        log.free()
        raise


_PROBE = torch.zeros((), requires_grad=True)  # a leaf of ours, only ever viewed


def _next_sequence_number() -> int:
    """The sequence number the next autograd node made on this thread will get (at least)."""
    with torch.enable_grad():
        probe = _PROBE.view(())  # a node of its own, nothing computed or allocated
    return probe.grad_fn._sequence_nr() + 1
