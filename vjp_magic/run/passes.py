"""Which autograd nodes a backward pass runs, and freeing a graph the guard kept.

The engine runs, from the roots, every node it reaches — or, when the pass names its
``inputs`` (``backward(inputs=…)``, ``torch.autograd.grad``), only the nodes with a way down
to one of them; only those are freed by a pass without ``retain_graph``
(:func:`nodes_run`). :func:`free_graph` frees a kept graph as the user's pass would have.
"""
from __future__ import annotations

import functools
import gc
import types
from collections import OrderedDict
from collections.abc import Iterable
from contextlib import contextmanager

import torch

from ..core.errors import VJPUsageError
from ..core.pass_guard import pass_guard, stopped_call
from ..core.tagging import walk_nodes
from ..core.torch_api import ENGINE


def as_list(value) -> list:
    """A backward call's tensors or gradients as a list: one tensor (or a number, as
    ``gradient=1`` is given by mistake) as a list of one."""
    if value is None:
        return []
    if isinstance(value, (torch.Tensor, torch.autograd.graph.GradientEdge)) \
            or not isinstance(value, Iterable):
        return [value]
    return list(value)


def root_nodes(tensors) -> list:
    nodes = []
    for t in as_list(tensors):
        if isinstance(t, torch.Tensor):
            nodes.append(t.grad_fn)
        elif isinstance(t, torch.autograd.graph.GradientEdge):
            nodes.append(t.node)
    return [n for n in nodes if n is not None]


def node_key(node) -> tuple:
    """Identifies a node for as long as the cell runs without keeping it alive. Not by ``id``:
    some PyTorch versions (2.11) give the same node a new Python object each time it is
    reached, and a freed object's ``id`` is reused. A node's sequence number is its own
    (a per-thread counter at creation; the cell's nodes are made on one thread)."""
    return type(node).__name__, node._sequence_nr()


def saves_tensors(node) -> bool:
    return any(name.startswith("_raw_saved_") for name in dir(node))


def is_functorch(tensors) -> bool:
    is_wrapped = torch._C._functorch.is_functorch_wrapped_tensor
    return any(isinstance(t, torch.Tensor) and is_wrapped(t) for t in as_list(tensors))


class _Undefined(torch.autograd.Function):
    """The root of :func:`free_graph`'s pass: it hands its inputs' nodes undefined gradients
    (no zeros), so every node runs and frees what it saved while no ``retain_grad()``
    tensor's ``.grad`` is touched (a zero added would replace it: a new tensor, -0.0 made
    +0.0), not only those of the tensors the cell holds."""

    @staticmethod
    def forward(ctx, *tensors):
        return tensors[0].new_zeros(())

    @staticmethod
    def backward(ctx, grad):
        return (None,) * len(ctx.needs_input_grad)


def _no_gradients(count: int, *gradients) -> tuple:
    """Stands for a custom Function's backward in :func:`free_graph`'s pass: no gradient for
    any of its ``count`` inputs (the engine frees what its node saved all the same)."""
    return (None,) * count


def _stand_ins(nodes) -> list:
    """The custom Functions' nodes among ``nodes``, each with :func:`_no_gradients` set as
    the ``apply`` the engine calls for it (taken away again by :func:`_put_back`)."""
    found = []
    for node in nodes:
        if isinstance(node, torch.autograd.function.BackwardCFunction):
            node.apply = functools.partial(_no_gradients, len(node.needs_input_grad))
            found.append(node)
    return found


def _put_back(nodes) -> None:
    for node in nodes:
        vars(node).pop("apply", None)


@contextmanager
def _hooks_muted(tensors, dicts=()):
    """The ``register_hook`` hooks of ``tensors`` (plain tensors and parameters) and the hook
    dicts ``dicts`` (:func:`_stopped_at`) taken out of the dicts PyTorch calls them from for
    the block, and put back in their order after; the ``.grad`` of those tensors that
    ``retain_grad()`` (the block's pass replaces it) put back too."""
    muted, seen, kept = [], set(), []
    for tensor in tensors:
        if type(tensor) not in (torch.Tensor, torch.nn.Parameter):
            continue
        if tensor.retains_grad:
            kept.append((tensor, tensor.grad))
        hooks = tensor._backward_hooks
        if hooks and id(hooks) not in seen:
            seen.add(id(hooks))
            _set_aside(hooks, muted)
    for hooks in dicts:
        if id(hooks) not in seen:
            seen.add(id(hooks))
            _set_aside(hooks, muted)
    try:
        yield
    finally:
        for hooks, items in muted:
            hooks.update(items)
        for tensor, grad in kept:
            tensor.grad = grad


def _set_aside(hooks, muted: list) -> None:
    if hooks:
        muted.append((hooks, list(hooks.items())))
        hooks.clear()


def _unused(*_) -> None:
    """Registered on a node for an instant, to reach the dict its hooks of a kind live in."""


@contextmanager
def _node_hooks_muted(nodes):
    """The hooks registered on ``nodes`` (``grad_fn.register_hook`` / ``register_prehook``,
    a module's full backward (pre-)hooks, which sit on nodes) taken out for the block and
    put back in their order after. PyTorch keeps a node's hooks of a kind in one dict and
    has no getter for it: a hook registered and removed at once hands that dict over
    (its handle's ``hooks_dict_ref``; an empty one is left where the node had none)."""
    muted: list = []
    try:
        for node in nodes:
            for register in ("register_prehook", "register_hook"):
                try:
                    handle = getattr(node, register)(_unused)
                except (AttributeError, RuntimeError):  # a node that takes none: the guard
                    continue
                hooks = handle.hooks_dict_ref()
                handle.remove()
                _set_aside(hooks, muted)
        yield
    finally:
        for hooks, items in muted:
            hooks.update(items)


def free_graph(roots, inputs, hooked=()) -> None:
    """Run one pass with undefined gradients (:class:`_Undefined`) and ``retain_graph=False``
    through the graph of ``roots``: the engine frees each node's saved tensors as it goes,
    as the user's pass would have. None of the user's code runs: ``.grad`` is untouched
    (nothing accumulates, no ``retain_grad()`` tensor's is replaced),
    a custom ``autograd.Function``'s backward is not called (:func:`_no_gradients` stands
    for it), the tensor hooks of ``roots``, the leaves and ``hooked`` (the cell's tensors),
    the hooks on the graph's nodes and those of any other tensor on it (an earlier cell's,
    one gone, a multi-grad hook's: :func:`_untouched`) are set aside, and the passes run
    under the pass guard, which stops one before any hook of the user's would run."""
    nodes = list(walk_nodes(root_nodes(roots)))
    if inputs is None:
        inputs = [n.variable for n in nodes if type(n).__name__ == "AccumulateGrad"]
    inputs = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    tensors = [t for t in roots if isinstance(t, torch.Tensor) and t.requires_grad]
    if not inputs or not tensors:
        return
    stand_ins = _stand_ins(nodes)
    leaves = [n.variable for n in nodes if type(n).__name__ == "AccumulateGrad"]
    known = [*tensors, *leaves, *inputs, *hooked]

    def run(keep: bool, dicts) -> None:
        with torch.enable_grad():
            root = _Undefined.apply(*tensors)
        with _hooks_muted(known, dicts), _node_hooks_muted(nodes):
            pass_guard().run_backward(
                ENGINE, ((root,), (torch.ones_like(root),), keep, False, tuple(inputs)),
                {"allow_unreachable": True, "accumulate_grad": False})

    try:
        run(False, _untouched(run))
    except (RuntimeError, VJPUsageError):
        pass  # freed already, changed in place since, or a hook no dict of was found
    finally:
        _put_back(stand_ins)


_PROBES_MOST = 16  # passes that keep the graph, each finding one hook dict more, at most


def _untouched(run) -> list:
    """The hook dicts of the tensors on the graph that no tensor the cell holds leads to: a
    pass that keeps the graph is run (``run(True, dicts)``), and each time the guard stops
    it at a hook of the user's, that hook's dict is found (:func:`_stopped_at`) and set
    aside for the next; [] where the first pass runs through (the common case)."""
    dicts: list = []
    for _ in range(_PROBES_MOST):
        try:
            run(True, dicts)
            return dicts
        except VJPUsageError as error:
            found = _stopped_at(error)
        except RuntimeError:
            return dicts
        if not found:
            return dicts
        dicts.extend(found)
    return dicts


def _stopped_at(error: VJPUsageError) -> list:
    """The hook dicts (a tensor's ``_backward_hooks``, which its node holds) holding the
    callable whose call the guard stopped with ``error`` (:func:`.stopped_call`): the
    functions of its code, then the dicts holding one of them (a bound method or a partial
    of one included), by the garbage collector's referrers (full scans: only where a hook
    stopped a pass)."""
    code = stopped_call(error)
    if code is None:
        return []
    functions = [f for f in gc.get_referrers(code)
                 if type(f) is types.FunctionType and f.__code__ is code]
    held = functions + [w for w in gc.get_referrers(*functions) if type(w) in _WRAPPERS]
    return [d for d in gc.get_referrers(*held) if type(d) in (dict, OrderedDict)
            and any(v is h for v in d.values() for h in held)] if held else []


_WRAPPERS = (types.MethodType, functools.partial)


def nodes_run(roots: list, inputs) -> list:
    """The nodes a pass from ``roots`` runs: all it reaches, or with ``inputs`` given
    (``backward(inputs=…)``, ``autograd.grad``) only those with a way down to one of them
    (the engine runs nothing else, so nothing else is freed)."""
    nodes = list(walk_nodes(roots))
    if not inputs:
        return nodes
    targets = _input_nodes(inputs, nodes)
    reaches: dict[int, bool] = {}
    for node in reversed(_parents_first(nodes)):  # children before their parents
        reaches[id(node)] = any(id(n) in targets or reaches.get(id(n), False)
                                for n, _ in node.next_functions if n is not None)
    return [n for n in nodes if reaches[id(n)]]


def _parents_first(nodes: list) -> list:
    """``nodes`` (a whole graph below its roots) ordered so that a node comes after every
    node that points to it (Kahn's algorithm)."""
    count = {id(n): 0 for n in nodes}
    for node in nodes:
        for child, _ in node.next_functions:
            if child is not None and id(child) in count:
                count[id(child)] += 1
    ready = [n for n in nodes if count[id(n)] == 0]
    order = []
    while ready:
        node = ready.pop()
        order.append(node)
        for child, _ in node.next_functions:
            if child is not None and id(child) in count:
                count[id(child)] -= 1
                if count[id(child)] == 0:
                    ready.append(child)
    return order


def _input_nodes(inputs, nodes) -> set:
    """ids of the nodes where a pass with ``inputs`` takes its gradients: a leaf's gradient
    accumulator, a non-leaf input's producer (not run for it), a gradient edge's node."""
    wanted = as_list(inputs)
    leaves = {id(t) for t in wanted if isinstance(t, torch.Tensor) and t.grad_fn is None}
    found = {id(n) for n in nodes if id(getattr(n, "variable", None)) in leaves}
    return found | {id(n) for n in root_nodes(wanted)}


__all__ = ["as_list", "free_graph", "is_functorch", "node_key", "nodes_run", "root_nodes",
           "saves_tensors"]
