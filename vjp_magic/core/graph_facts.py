"""Facts the display needs that only the output's autograd graph shows, read off the graph
(the walks live here, in core; :mod:`vjp_magic.render.graph_facts` only looks up what was
read while the result kept its graph).

- sparse ``.grad``: autograd hands the input a sparse (COO) ``.grad`` — an
  ``nn.Embedding(sparse=True)`` or ``gather(..., sparse_grad=True)`` feeds it — so code that
  copies ``.grad`` into a dense tensor reads ``.grad.to_dense()``.
- one function: the graph proves every point applies the same function f, not only the
  pairing (``y[i]`` reads ``x[i]`` only): each node on the way is a function of the chain's
  own values and of numbers shared by every entry. ``x ** 2`` is one f at every point;
  ``x ** w``, ``x * w``, ``where(mask, sin x, cos x)`` pair the points too, but each point
  may apply its own function (``w[i]``, ``mask[i]`` differ), so the display names no one f.
  Asked only where a display may say it: an input with points, or one number per point.
- filled: the inputs whose ``.grad`` a plain ``backward`` from the output fills, or None
  where it fills another tensor's too (a model's parameter, an input left out by ``--wrt``):
  code written for the reader names its ``inputs=[...]`` then, so pasting it changes no
  ``.grad`` but those it reads. The graph's edges alone say it: readable after the cell's
  own backward freed the saved values.

Where the graph cannot say (saved values freed by the cell's backward, a hook), each fact
takes its always-true side: a sparse flag unread is set (``.to_dense()`` is right for a
dense ``.grad`` too); one function f is not proved (the pairing alone is said).

What a node class saves (its ``_saved_*`` attribute names, the sparse flag it has) is read
once per class (:func:`saved_attributes`): a pure function of the class, never stale.
"""
from __future__ import annotations

import math

import torch

from .tagging import walk_nodes

_SPARSE_FLAGS = ("_saved_sparse", "_saved_sparse_grad")
# Nodes that may give different points different entries (a slice here, a gather there):
# with one, the pieces a cat or stack joins may be different functions at different points.
_SELECTING = ("Slice", "Select", "Index", "Gather", "Take", "Narrow", "Split", "Unbind",
              "Flip", "Roll", "Diagonal", "AsStrided", "Masked", "Scatter", "Unfold", "Put")
# Nodes whose operand the input does not reach is saved, so the walk reads it (x * w, x / w).
_SAVES_OPERANDS = ("MulBackward0", "DivBackward0")
# Nodes that move the input's axes (a view, a permute, a reduction): past one, the walk does
# not know which axes of a factor are the points'.
_MOVES_AXES = frozenset({
    "TBackward0", "TransposeBackward0", "TransposeBackward1", "PermuteBackward0",
    "ViewBackward0", "UnsafeViewBackward0", "ReshapeAliasBackward0", "ExpandBackward0",
    "SqueezeBackward0", "SqueezeBackward1", "SqueezeBackward2", "UnsqueezeBackward0",
    "MovedimBackward0", "SumBackward1", "MeanBackward1", "AmaxBackward0", "MaxBackward1",
    "StackBackward0", "CatBackward0", "UnsafeSplitBackward0", "RepeatBackward0",
    # (the in-place views': t_(), transpose_(), unsqueeze_(), squeeze_(), as_strided_())
    "TBackward1", "UnsqueezeBackward1", "SqueezeBackward3", "SqueezeBackward4",
    "SqueezeBackward5", "AsStridedBackward1"})
# Matrix products: the factor the input does not reach is used whole by every point.
_SHARED_FACTOR = ("MmBackward0", "MvBackward0")

_CLASSES: dict[type, tuple[tuple[str, ...], str | None]] = {}  # node class → its saved names


def saved_attributes(node) -> tuple[tuple[str, ...], str | None]:
    """(the node's ``_saved_*`` attribute names, its sparse flag's name or None), read once
    per node class (``dir`` is then a pure function of the class); a node with attributes of
    its own (a custom ``autograd.Function``'s, its ``ctx``) is read each time."""
    kind = type(node)
    known = _CLASSES.get(kind)
    if known is None:
        names = dir(node)
        known = (tuple(a for a in names if a.startswith("_saved_")),
                 next((f for f in _SPARSE_FLAGS if f in names), None))
        if not hasattr(node, "__dict__"):
            _CLASSES[kind] = known
    return known


# Whether this torch shows a SavedTensor's unpack hook and packed data without unpacking it
# (2.5 does not: there the saved tensors' hooks cannot be seen, and raw_saved finds none)
SAVED_READABLE = hasattr(torch._C._autograd.SavedTensor, "unpack_hook")


def raw_saved(node) -> list:
    """The ``SavedTensor``s ``node`` holds (its ``_raw_saved_*``, a custom Function's
    ``_raw_saved_tensors``), each with its ``unpack_hook`` and packed ``data``: read without
    unpacking, so no hook runs; none where a backward freed them, or where this torch does
    not show them (:data:`SAVED_READABLE`)."""
    if not SAVED_READABLE:
        return []
    found = []
    for name in raw_names(type(node)):
        try:
            raw = getattr(node, name)
        except RuntimeError:  # (freed by a backward)
            continue
        if isinstance(raw, (list, tuple)):
            found.extend(r for r in raw if hasattr(r, "unpack_hook"))
        elif raw is not None:
            found.append(raw)
    return found


def unpack_hooked(raw) -> bool:
    """Whether reading a node's saved value runs an unpack hook (``saved_tensors_hooks``,
    ``save_on_cpu``, a non-reentrant checkpoint's recompute): ``raw`` is its raw value (a
    ``_raw_saved_*`` attribute: one ``SavedTensor``, a list or tuple of them, or None where
    nothing was saved). Fails closed: a saved item whose hook this torch does not show
    (2.5's ``SavedTensor``) counts as hooked. The one answer to this question (the walks
    here, :mod:`.reentrant`, :mod:`vjp_magic.run.hookfree`, :mod:`vjp_magic.teach`)."""
    items = raw if isinstance(raw, (list, tuple)) else (raw,)
    return any(item is not None and getattr(item, "unpack_hook", True) is not None
               for item in items)


_RAW: dict[type, tuple[str, ...]] = {}  # node class → its _raw_saved_ attribute names


def raw_names(kind: type) -> tuple[str, ...]:
    """The ``_raw_saved_*`` attribute names of the node class ``kind`` (a custom Function's
    node: its ``_raw_saved_tensors``), read once per class: a pure function of the class
    (a ``ctx``'s own attributes are not among them)."""
    names = _RAW.get(kind)
    if names is None:
        names = _RAW[kind] = tuple(a for a in dir(kind) if a.startswith("_raw_saved_"))
    return names


def facts(output: torch.Tensor | None, inputs) -> dict:
    """The ``View`` fields these facts fill (``sparse_grads``, ``one_function``: frozensets of
    names), read off ``output``'s graph; ``inputs``: name → input result (``.tensor``,
    ``.pairing``)."""
    root = getattr(output, "grad_fn", None)
    nodes = nodes_of(output)
    return {"sparse_grads": _sparse_grads(nodes, inputs),
            "one_function": frozenset(n for n, item in inputs.items()
                                      if _may_say(item) and one_function(root, item)),
            "filled": filled(nodes, inputs)}


def nodes_of(output: torch.Tensor | None) -> list:
    """Every node of ``output``'s graph, each once."""
    root = getattr(output, "grad_fn", None)
    return list(walk_nodes([root])) if root is not None else []


def filled(nodes: list, inputs) -> frozenset | None:
    """The names of the inputs whose ``.grad`` a backward through ``nodes`` (the output's
    graph) fills, or None where it also reaches a leaf that is none of them."""
    leaves = {id(item.tensor): n for n, item in inputs.items() if item.tensor.grad_fn is None}
    made = [(item.tensor.grad_fn, n) for n, item in inputs.items()
            if item.tensor.grad_fn is not None]  # (a non-leaf input: its node is reached)
    found = set()
    for node in nodes:
        leaf = getattr(node, "variable", None)
        if leaf is not None:
            if id(leaf) not in leaves:
                return None
            found.add(leaves[id(leaf)])
        found.update(n for maker, n in made if node is maker)
    return frozenset(found)


def _sparse_grads(nodes: list, inputs) -> frozenset:
    """The names of the inputs autograd hands a sparse ``.grad``: one walk for them all."""
    fed: list = []  # the nodes a node with its sparse flag set feeds
    for node in nodes:
        flag = saved_attributes(node)[1]
        if flag is not None and _flag_set(node, flag):
            fed.extend(n for n, _ in node.next_functions if n is not None)
    return frozenset(name for name, item in inputs.items()
                     if item.tensor.layout != torch.strided
                     or any(_is_input(n, item.tensor) for n in fed))


def _flag_set(node, flag: str) -> bool:
    try:
        return bool(getattr(node, flag))
    except RuntimeError:  # (saved values freed by the cell's backward)
        return True


def _is_input(node, tensor) -> bool:
    if tensor.grad_fn is not None:
        return node is tensor.grad_fn
    return getattr(node, "variable", None) is tensor


def _may_say(item) -> bool:
    """Whether a display may say "one function f" of this input: it has points, or one
    number per point (the renderers ask nothing else)."""
    shape, paired = item.tensor.shape, set(item.pairing.in_axes)
    return any(shape[b] > 1 for b in paired) or \
        math.prod(n for b, n in enumerate(shape) if b not in paired) == 1


def one_function(root, item) -> bool:
    """Whether the graph below ``root`` proves one function f at every point of the input
    ``item`` (module docstring)."""
    if root is None:
        return False
    tensor = item.tensor
    target = tensor.grad_fn
    reach = _reaching(root, lambda n: n is target if target is not None
                      else getattr(n, "variable", None) is tensor)
    along = _point_axes(item, reach)
    for node in reach:
        if node is target or getattr(node, "variable", None) is tensor:
            continue  # (a non-leaf input: what made it is not the function)
        kind = node.name()
        if kind.startswith(_SELECTING) or hasattr(node, "_forward_cls"):
            return False  # (a custom autograd.Function: what it does is not known)
        constants = [k for k, (n, _) in enumerate(node.next_functions) if n not in reach]
        if constants and not _shared_operands(node, kind, constants, along[node]):
            return False
        if kind not in _SHARED_FACTOR and not _saved_shared(node, along[node], reach):
            return False
    return True


def _reaching(root, is_input) -> dict:
    """The nodes of the graph below ``root`` from which the input is reached (each once),
    children before parents."""
    reach: dict = {}
    done: set = set()
    stack = [(root, False)]
    while stack:  # (iterative post-order: a graph can be deeper than Python's recursion)
        node, children_done = stack.pop()
        if node is None or (node in done and not children_done):
            continue
        nexts = [n for n, _ in getattr(node, "next_functions", ())]
        if not children_done:
            done.add(node)
            stack.append((node, True))
            stack.extend((n, False) for n in nexts if n is not None and n not in done)
        elif is_input(node) or any(n in reach for n in nexts):
            reach[node] = None
    return reach


def _point_axes(item, reach: dict) -> dict:
    """For each node, the input's shape and point axes where every node between it and the
    input keeps the input's axes in place (no view, permute, reduction), so a factor it
    multiplies by is shared by every point if it is one number along these axes; None where
    the walk cannot say."""
    shape, axes = tuple(item.tensor.shape), tuple(item.pairing.in_axes)
    clean: set = set()
    along: dict = {}
    for node in reach:  # (children first)
        below = [n for n, _ in node.next_functions if n in reach]
        if not below or all(n in clean for n in below):
            along[node] = (shape, axes)
            if node.name() not in _MOVES_AXES and _keeps_points(node, shape, axes):
                clean.add(node)
        else:
            along[node] = None
    return along


def _keeps_points(node, shape: tuple, axes: tuple) -> bool:
    """Whether ``node``'s output has the input's number of axes and its sizes along the point
    axes, so a factor broadcast against it lines up with the input's points (a reduction that
    drops an axis, logsumexp(1), prod(1), mv, does not: past it the walk cannot say); not
    known: no."""
    try:
        out = tuple(node._input_metadata[0].shape)
    except (AttributeError, IndexError, RuntimeError, TypeError):
        return False
    return len(out) == len(shape) and all(out[a] == shape[a] for a in axes)


def _same_along(value: torch.Tensor, along) -> bool:
    """Whether ``value``, broadcast against the input (``along``: its shape and point axes),
    is one number along each point axis."""
    if along is None:
        return _all_equal(value)
    shape, axes = along
    if value.dim() > len(shape):
        return False
    lead = len(shape) - value.dim()
    for axis in axes:
        here = axis - lead
        if here >= 0 and value.shape[here] > 1 and not bool(
                (value == value.narrow(here, 0, 1)).all()):
            return False
    return True


def _shared_operands(node, kind: str, positions: list[int], along) -> bool:
    """Whether the operands at ``positions`` that the input does not reach are the same for
    every point: a matrix product's other factor is (every row, or column, uses all of it);
    a product's or quotient's saved factor is where it is one number along the points."""
    if kind in _SHARED_FACTOR:
        return True
    if kind == "AddmmBackward0" and positions in ([0, 2], [2]):  # a layer's b + x W, the
        if 0 not in positions:                                  # rows of x the points
            return True
        bias = getattr(node.next_functions[0][0], "variable", None)  # (b, a parameter: a
        return bias is not None and bias.dim() <= 1                  # row shared by each)
    if kind not in _SAVES_OPERANDS:
        return False  # an operand the walk cannot read (x + w): it may differ per entry
    for position in positions:
        try:
            value = _saved(node, ("_saved_self", "_saved_other")[position])
        except (RuntimeError, IndexError, _Hooked):
            return False
        if isinstance(value, torch.Tensor) and value.numel() > 1 \
                and not _same_along(value.detach(), along):
            return False
    return True


class _Hooked(Exception):
    """A saved value the user's unpack hook would make (checkpoint, save_on_cpu, their own
    saved_tensors_hooks): reading it runs user code, so the walk does not."""


def _saved(node, attribute: str):
    """``node.<attribute>`` (a ``_saved_`` one), never through a user's unpack hook
    (:func:`unpack_hooked`: one this torch does not show counts as one)."""
    if unpack_hooked(getattr(node, "_raw" + attribute, None)):
        raise _Hooked(attribute)
    return getattr(node, attribute)


def _saved_shared(node, along, reach: dict) -> bool:
    """Every tensor the node saved is a value of the graph (it requires grad), or one number
    along the points (``along``: :func:`_same_along`): a mask, a condition, a detached value
    may differ per point. One freed by a backward is known only where it was a value of the
    graph (:func:`_graph_value`)."""
    for attribute in saved_attributes(node)[0]:
        try:
            value = _saved(node, attribute)
        except _Hooked:  # (a hook would make it): not known
            return False
        except RuntimeError:  # (freed by a backward)
            if _graph_value(node, attribute, reach):
                continue
            return False
        values = value if isinstance(value, (list, tuple)) else [value]
        for v in values:
            if isinstance(v, torch.Tensor) and v.numel() > 1 and not v.requires_grad \
                    and not _same_along(v.detach(), along):
                return False
    return True


_OPERANDS = {"_saved_self": 0, "_saved_other": 1}  # saved operand → its edge's position


def _graph_value(node, attribute: str, reach: dict) -> bool:
    """Whether the saved ``attribute`` of ``node`` (a node the input reaches), freed by a
    backward, was a value of the graph computed from the input, so required grad: the node's
    own output (``result``), or its operand ``self`` / ``other`` whose edge the input reaches
    (``x ** 2`` after ``y.backward(v)``: its ``self`` is x). Anything else: not known."""
    if attribute == "_saved_result":
        return True
    position = _OPERANDS.get(attribute)
    edges = node.next_functions
    return position is not None and position < len(edges) and edges[position][0] in reach


def _all_equal(tensor: torch.Tensor) -> bool:
    flat = tensor.detach().reshape(-1)
    return bool((flat == flat[0]).all()) if flat.numel() else True
