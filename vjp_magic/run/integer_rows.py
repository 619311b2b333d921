"""Integer per-sample data (targets, token ids, padding masks) followed through a replay, for
:func:`.persample.samples_apart`: autograd cannot follow them, so each call reading them must
be one that keeps rows apart (row b of its result reads row b of the integer tensor: a loss's
targets, an embedding's ids, an elementwise comparison), and each floating tensor such a
call makes from them alone becomes a leaf, whose rows :func:`..core.axisflow.prove` then
follows like the floating data's. A call of any other kind reading them (a roll, a sum, an
index along the batch, a view merging it) is not followed: the record proves nothing."""
from __future__ import annotations

import torch

from ..core.axisrules.indexing import batch_identity
from .record import tensors_in
from .steps import Interpreter

# calls whose result's row b reads only row b of every tensor argument of its own number of
# axes with the batch on axis 0 (elementwise, or along other axes only), by the function's
# name; those in ADDS_AXIS read row b of an argument with one axis fewer (ids -> vectors)
ADDS_AXIS = frozenset({"embedding", "one_hot"})
ROW_WISE = ADDS_AXIS | frozenset(
    "cross_entropy nll_loss embedding one_hot masked_fill masked_fill_ where eq ne lt le gt "
    "ge __eq__ __ne__ __lt__ __le__ __gt__ __ge__ logical_not logical_and logical_or "
    "__invert__ __and__ __or__ to float double half long int bool type zeros_like ones_like "
    "full_like clone contiguous detach".split())
# calls laying a tensor out anew in its row-major order: a result whose axis 0 has the
# argument's size B holds row b of it at row b (``t[:, None]`` as ``t.unsqueeze(1)``,
# ``t.view(-1, 1)``, ``t.reshape(B, -1)``); ``t.reshape(2, -1)`` moves rows (axis 0 not B)
RESHAPES = frozenset("reshape view flatten unsqueeze squeeze reshape_as view_as".split())
GATHERS = {"gather": ("input", "dim", "index"), "take_along_dim": ("input", "indices", "dim")}


class IntegerRows(Interpreter):
    """The replay's steps, run with the integer per-sample tensors ``tainted`` followed:
    :attr:`leaves` the floating tensors made from them alone (leaves of the run's graph);
    :attr:`refused` whether a call not known to keep rows apart read one."""

    def __init__(self, steps: list, batch: int):
        super().__init__(steps)
        self.batch, self.held, self.leaves, self.refused = batch, [], [], False

    def follow(self, tensor: torch.Tensor) -> None:
        """Follow ``tensor`` (held, so that its id stays its own for the run)."""
        self.held.append(tensor)

    def call_function(self, step, args: tuple, kwargs: dict):
        value = super().call_function(step, args, kwargs)
        given = tensors_in((args, kwargs))
        held = {id(t) for t in self.held}
        read = [t for t in given if id(t) in held]
        if not read:
            return value
        made = tensors_in(value)
        if not _rows_kept(getattr(step.func, "__name__", ""), args, kwargs, read, made,
                          self.batch):
            self.refused = True
            return value
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            for t in made:
                self.follow(t)
            return value
        if any(t.requires_grad for t in given):
            return value  # its floating arguments' rows: the graph's rules follow them
        value = value.detach().requires_grad_()
        self.leaves.append(value)
        return value


def _rows_kept(name: str, args: tuple, kwargs: dict, read: list, made: list,
               batch: int) -> bool:
    """Whether a call named ``name`` with ``args`` and ``kwargs``, reading the followed
    tensors ``read`` and making ``made``, keeps the rows apart: every tensor with the batch
    on axis 0, and the call a known kind whose result row b reads only row b: row-wise
    (the arguments' axes aligned with the result's from the left, no broadcast moving the
    batch axis), a row-major re-layout, an index keeping axis 0 whole, a gather along
    another axis."""
    if not made or not all(t.dim() and t.shape[0] == batch for t in read + made):
        return False
    if name in ROW_WISE:
        extra = 1 if name in ADDS_AXIS else 0
        return all(m.dim() == t.dim() + extra for t in read for m in made)
    if name in RESHAPES:
        return True
    if name == "__getitem__" and len(args) == 2:
        if all(t is args[0] for t in read) and _index_keeps_axis_0(args[1], args[0].dim()):
            return True
        return _identity_keeps_rows(args, read, batch)
    if name in GATHERS:
        return _gather_keeps_rows(GATHERS[name], args, kwargs, batch)
    return False


def _index_keeps_axis_0(index, dims: int) -> bool:
    """Whether ``tensor[index]`` (``tensor`` with ``dims`` axes) keeps axis 0 whole and
    first: a full first slice (``t[:, None]``, ``t[:, 0]``) then at most one advanced index
    (which keeps its place there), or an ``Ellipsis`` first that covers axis 0
    (``mask[..., None]``)."""
    items = index if isinstance(index, tuple) else (index,)
    if not items:
        return False
    first, rest = items[0], items[1:]
    basic = all(i is None or i is Ellipsis or isinstance(i, (int, slice)) for i in rest)
    if first is Ellipsis:
        return basic and sum(i is not None for i in rest) < dims
    if not isinstance(first, slice) or first.step not in (None, 1):
        return False  # (with sizes B both sides, a step-1 slice is the whole axis)
    return basic or sum(not (i is None or i is Ellipsis or isinstance(i, (int, slice)))
                        for i in rest) == 1


def _identity_keeps_rows(args: tuple, read: list, batch: int) -> bool:
    """Whether ``source[index]`` keeps rows apart by an index whose first item is proved
    the identity on the batch (``logp[torch.arange(B), t]``, ``logp[range(B), t]``,
    ``logp[torch.arange(B)[:, None], t2d]``: :func:`identity_index`): row b reads row b of
    the source and of each followed index, which spans the indices' broadcast axes from
    axis 0 (``t`` of shape (B,) beside ``arange(B)[:, None]`` would be read whole)."""
    source, index = args
    items = identity_index(index, source, batch)
    if items is None:
        return False
    axes = max(i.dim() for i in items if i is not None)
    tensors = {id(i): i for i in items if i is not None}
    return all(t is source or (id(t) in tensors and t.dim() == axes) for t in read)


def identity_index(index, source, batch: int) -> tuple | None:
    """The items of ``source[index]`` (tensors; None for a whole slice) where the first is
    proved the identity on a batch of ``batch`` rows (:func:`.axisrules.indexing.
    batch_identity`, on the values: a range or list of ints as the tensor torch makes of
    it), and every other is a tensor, a range or list of ints, or a whole slice; else None."""
    if not (isinstance(source, torch.Tensor) and source.dim() and source.shape[0] == batch):
        return None
    items = []
    for item in index if isinstance(index, tuple) else (index,):
        if isinstance(item, slice) and item == slice(None):
            items.append(None)
        elif isinstance(item, torch.Tensor):
            items.append(item)
        elif isinstance(item, (range, list)) and all(type(i) is int for i in item):
            items.append(torch.tensor(list(item), dtype=torch.long))
        else:
            return None
    return tuple(items) if len(items) <= source.dim() and batch_identity(items, batch) \
        else None


def _gather_keeps_rows(names: tuple, args: tuple, kwargs: dict, batch: int) -> bool:
    """Whether ``gather`` / ``take_along_dim`` (parameters ``names``: source, then index and
    dim in its order) reads along an axis other than the batch's: source and index
    batch-first of size B with as many axes, ``dim`` an axis >= 1."""
    bound = dict(zip(names, args), **kwargs)
    source = bound.get("input", bound.get("self"))
    index, dim = bound.get("index", bound.get("indices")), bound.get("dim")
    if not (isinstance(source, torch.Tensor) and isinstance(index, torch.Tensor)
            and isinstance(dim, int) and source.dim() == index.dim() >= 1):
        return False
    return dim % source.dim() >= 1 and source.shape[0] == index.shape[0] == batch
