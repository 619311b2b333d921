"""Writes into part of a tensor: ``out[..., a:b] = src`` and the ``copy_`` calls circular
padding is made of (``F.pad(mode="circular")`` and Conv's ``padding_mode="circular"`` fill an
empty tensor by copies into its slices on torch 2.5 .. 2.15), which leave a ``CopySlices``
node. The node does not show where its view lies, so its own backward (a built-in C++ node,
nothing of the user's) is called on index grids: output entry ``j`` carries the label ``j + 1``,
and each input's reply says which output entry each of its entries lands in.

The replies are accepted only as a copy's: every entry of every reply is one label or 0, no
label twice, and a shifted grid and a shuffled grid move the same way (a scaled, summed,
broadcast or value-dependent write such as ``view.mul_(w)`` fails these, unless its values
happen to be exactly those of a copy, and proves nothing). A write selected by a mask or an
index (``view.masked_fill_(mask, 0)``, ``view[mask] = src``, ``view.index_copy_``), or with
derivatives that vanish where x says (``view.clamp_(min=0)``), passes them, but where it lands
may depend on x: unless every source entry lands at output positions affine in its index with
positive steps (a view's strides) and the base loses exactly those (or, with no source, a
box), the proof is recorded as conditional on it (:meth:`.maps.Edge.selection`); so it is
whenever the wrapped op reads a saved index, mask or condition (an integer or boolean tensor
seen by a dispatch mode in one more call), whatever shape its values happen to have here.
A Python frame started during the call (a custom ``autograd.Function`` written in place into a
view, a dispatch mode) stops the call before its first line: nothing of the user's runs.
"""
from __future__ import annotations

import math
import sys

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ..capabilities import out_metadata
from .maps import NONE, Edge, IndexMap, Unproved


class _PythonReached(Exception):
    """The node's backward would run Python code (a custom function): it is not called."""


def _refuse_python(frame, event, arg):
    raise _PythonReached(frame.f_code.co_name)


_LAST: list = []  # [node, its replies]: the base's and the source's edges ask once


def forget() -> None:
    """Drop the replies kept for the last node (the walk calls it when it ends, so no graph
    is kept alive)."""
    _LAST.clear()


def copy_slices(edge: Edge) -> IndexMap:
    """Input ``edge.i`` of a ``CopySlices``: the base outside the written view, the source on
    it (each read once: injective)."""
    edge.afford(4 * math.prod(edge.out_shape))  # the three grids and their replies
    if not _LAST or _LAST[0] is not edge.node:
        forget()
        replies = _replies(edge.node)
        strided = _strided(replies, edge.in_shapes, edge.out_shape)
        _LAST.extend([edge.node, replies, strided and not _reads_selection(edge.node)])
    replies = _LAST[1]
    if not _LAST[2] and edge.reads is not None:  # where it lands may depend on a selection
        edge.reads.append(MASKED_WRITE)
    reply = replies[edge.i] if edge.i < len(replies) else None
    if reply is None or math.prod(reply.shape) != math.prod(edge.in_shape):
        raise Unproved("CopySlices: no reply for this input")
    out_numel = math.prod(edge.out_shape)
    labels = reply.reshape(-1)
    landed = labels > 0
    table = np.full(out_numel, NONE, dtype=np.int64)
    table[labels[landed] - 1] = np.flatnonzero(landed)
    return IndexMap(table.reshape(-1, 1), injective=True)


MASKED_WRITE = "an in-place write into a view"


def _strided(replies: list, in_shapes: list, out_shape) -> bool:
    """Whether the write lands where a strided view puts it, whatever any value: each source
    (input 1, 2, …) lands whole, at positions affine in its multi-index, and the base (input
    0, where it has a reply) loses exactly those; with no source, a box (a fill)."""
    landed = []
    for reply, shape in zip(replies[1:], in_shapes[1:]):
        if reply is None:
            continue
        if shape is None or not bool((reply > 0).all()) or not _affine(reply - 1, shape):
            return False
        landed.append(reply - 1)
    base = replies[0] if replies else None
    if base is None:
        return True
    lost = np.flatnonzero(base.reshape(-1) == 0)
    if landed:
        return np.array_equal(lost, np.sort(np.concatenate(landed)))
    return _box(lost, tuple(out_shape))


class _Selections(TorchDispatchMode):
    """Records whether an op the node runs takes an integer or boolean tensor (a saved index,
    mask or condition: ``masked_fill``, ``index_put``, ``index_fill``, ``scatter``, ``where``)."""

    def __init__(self):
        super().__init__()
        self.read = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.read = self.read or any(
            not (t.dtype.is_floating_point or t.dtype.is_complex)
            for t in _tensors([args, list(kwargs.values())]))
        return func(*args, **kwargs)


def _tensors(value):
    if isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, torch.Tensor):
        yield value


def _reads_selection(node) -> bool:
    """Whether the wrapped in-place op (CopySlices' inner node) reads a saved selection: then
    where it writes is the selection's, not the view's, whatever shape its values have here
    (a mask that is a box at this x). Called only after :func:`_replies` met no Python frame."""
    meta = out_metadata(node)[0]
    mode = _Selections()
    try:
        with torch.no_grad(), mode:
            node(torch.zeros(tuple(meta.shape), dtype=meta.dtype, device=meta.device))
    except RuntimeError:
        return True  # not seen through: not claimed unconditional
    return mode.read


def _affine(positions: np.ndarray, shape) -> bool:
    """Whether flat ``positions`` (one per entry of a tensor of ``shape``) step by a positive
    constant along each axis, as a view's strides place them (PyTorch has no negative
    strides: a reversed placement is an index's, as ``scatter_`` by [5, 4, 3])."""
    table = positions.reshape(tuple(shape))
    for axis in range(table.ndim):
        if table.shape[axis] > 1:
            steps = np.diff(table, axis=axis)
            step = steps.reshape(-1)[0]
            if step <= 0 or not bool((steps == step).all()):
                return False
    return True


def _box(flat: np.ndarray, shape: tuple) -> bool:
    """Whether the flat positions ``flat`` are every combination of a progression per axis."""
    if flat.size == 0:
        return True
    axes = np.unravel_index(flat, shape)
    values = [np.unique(a) for a in axes]
    if flat.size != math.prod(len(v) for v in values):
        return False
    return all(len(v) < 3 or bool((np.diff(v) == v[1] - v[0]).all()) for v in values)


def _replies(node) -> list[np.ndarray | None]:
    """Per input of ``node``: the label of the output entry each of its entries lands in (0:
    none), checked to be a copy's; :class:`Unproved` otherwise."""
    metadata = out_metadata(node)
    if len(metadata) != 1 or not metadata[0].dtype.is_floating_point \
            or metadata[0].dtype.is_complex:
        raise Unproved("CopySlices with other than one real floating output")
    meta = metadata[0]
    shape = tuple(int(s) for s in meta.shape)
    m = math.prod(shape)
    if m >= 2**31:  # the shuffle's products stay within int64
        raise Unproved("CopySlices: too many entries to label")
    labels = torch.arange(1, m + 1, dtype=torch.int64, device=meta.device)
    shuffle = (labels - 1) * _coprime(m) % max(m, 1) + 1  # a bijection of 1 .. m
    calls = [_call(node, g.to(meta.dtype).reshape(shape), m + 1)
             for g in (labels, labels + 1, shuffle)]
    replies: list[np.ndarray | None] = []
    for first, shifted, shuffled in zip(*calls):
        if first is None or shifted is None or shuffled is None:
            if not (first is None and shifted is None and shuffled is None):
                raise Unproved("CopySlices: replies that come and go")
            replies.append(None)
            continue
        replies.append(_checked(first, shifted, shuffled, shuffle, m))
    landed = [r[r > 0] for r in replies if r is not None]
    if landed and (np.bincount(np.concatenate(landed), minlength=m + 1) > 1).any():
        raise Unproved("CopySlices: an output entry read from two places")
    return replies


def _coprime(m: int) -> int:
    """A multiplier near ``0.618 m`` with no factor in common with ``m``."""
    a = max(int(0.618 * m) | 1, 1)
    while math.gcd(a, m) != 1:
        a += 2
    return a


def _call(node, grid: torch.Tensor, largest: int) -> list[torch.Tensor | None]:
    """The node's backward on ``grid`` (refused where a dtype cannot hold ``largest``
    exactly)."""
    if not _exact(grid.dtype, largest):
        raise Unproved("CopySlices: labels this dtype cannot hold exactly")
    old = sys.gettrace()
    try:
        with torch.no_grad():
            sys.settrace(_refuse_python)
            try:
                replies = node(grid)
            finally:
                sys.settrace(old)
    except _PythonReached as error:
        raise Unproved("CopySlices around Python code") from error
    replies = replies if isinstance(replies, tuple) else (replies,)
    for reply in replies:
        if reply is not None and (not reply.dtype.is_floating_point or reply.dtype.is_complex
                                  or not _exact(reply.dtype, largest)):
            raise Unproved("CopySlices: a reply this dtype cannot hold exactly")
    return [None if r is None else r.detach().reshape(-1) for r in replies]


def _exact(dtype: torch.dtype, largest: int) -> bool:
    """Whether ``dtype`` holds every integer up to ``largest`` exactly."""
    return largest < 2 / torch.finfo(dtype).eps


def _checked(first, shifted, shuffled, shuffle: torch.Tensor, m: int) -> np.ndarray:
    """The labels ``first`` holds, where every entry is one label or nothing: the shifted grid
    adds exactly 1 where a label lands (a row summing to 1), the shuffled grid moves the same
    way (one entry, not a mix)."""
    if not bool(((first >= 0) & (first <= m) & (first == first.round())).all()):
        raise Unproved("CopySlices: not a copy (a reply that is not a label)")
    labels = first.to(torch.int64)
    landed = labels > 0
    moved = torch.where(landed, shuffle[(labels - 1).clamp_(min=0)], 0)
    if not (torch.equal(shifted, (labels + landed).to(shifted.dtype))
            and torch.equal(shuffled, moved.to(shuffled.dtype))):
        raise Unproved("CopySlices: not a copy (replies that do not move as labels)")
    return labels.cpu().numpy()
