"""Views and shape ops: reshape, permute, expand, and the rearrangements (roll, flip, repeat)
that move entries along their dims."""
from __future__ import annotations

from .flow import (AxisMap, Flow, Free, base_name, broadcast, carry_size, drop_axes, proper,
                   to_axis, to_axes)


def reshape(node, inputs, shapes, x_shape):
    """view/reshape/squeeze/unsqueeze: blocks of axes with equal products map onto each other."""
    (flow,) = [f for f in inputs if f is not None][:1]
    out = shapes[0]
    carries, exact = _reshape_carries(flow, out, x_shape)
    carries.update(_unit_carries(node, flow, out))
    return [Flow(out, carries, flow.exact and exact)]


def _unit_carries(node, flow: Flow, out) -> AxisMap:
    """The carries of the size-1 axes (a batch of one): those a squeeze or unsqueeze names
    drop out or come in, the others keep their order. Any pairing of size-1 axes holds (a
    1 × 1 block), so where a view does not say which size-1 axis went where, the order is the
    guess; it decides the shape of the derivatives only, as at a larger size."""
    ones_in = [a for a, n in enumerate(flow.shape) if n == 1]
    ones_out = [a for a, n in enumerate(out) if n == 1]
    dims = getattr(node, "_saved_dim", None)
    if dims is not None:
        dims = {dims} if isinstance(dims, int) else set(dims)
        if base_name(node) == "Squeeze":
            ones_in = [a for a in ones_in if a not in {to_axis(d, len(flow.shape))
                                                       for d in dims}]
        elif base_name(node) == "Unsqueeze":
            ones_out = [a for a in ones_out if a not in {to_axis(d, len(out)) for d in dims}]
    return {b: flow.carries[a] for a, b in zip(ones_in, ones_out) if a in flow.carries}


def _blocks(a_shape, b_shape):
    """Groups of the axes of size > 1 of two shapes of equal numel whose sizes multiply to the
    same number (size-1 axes carry nothing and are left out)."""
    a = [k for k, n in enumerate(a_shape) if n > 1]
    b = [k for k, n in enumerate(b_shape) if n > 1]
    blocks, i, j = [], 0, 0
    while i < len(a) and j < len(b):
        group_a, group_b = [a[i]], [b[j]]
        prod_a, prod_b = a_shape[a[i]], b_shape[b[j]]
        i, j = i + 1, j + 1
        while prod_a != prod_b:
            if prod_a < prod_b:
                group_a.append(a[i])
                prod_a *= a_shape[a[i]]
                i += 1
            else:
                group_b.append(b[j])
                prod_b *= b_shape[b[j]]
                j += 1
        blocks.append((group_a, group_b))
    return blocks


def _reshape_carries(flow: Flow, out, x_shape) -> tuple[AxisMap, bool]:
    """The carries of each block of axes (:func:`_blocks`) after a view. An uncarried axis
    merged with carried ones joins as a :class:`Free` factor of its size: merging the batch
    with the channels of ``(B, C, L)`` into ``(1, B*C, L)`` (InstanceNorm) or with the heads
    into ``(B*heads, L, d)`` (attention) keeps the batch as the outer factor of the merged
    axis, and splitting it back gives the batch axis again."""
    carries: AxisMap = {}
    exact = True
    for big_in, big_out in _blocks(flow.shape, out):
        carried = [a for a in big_in if a in flow.carries]
        if not carried:
            continue
        if any(carry_size(flow.carries[a], x_shape) != flow.shape[a] for a in carried):
            exact = False  # (a prefix slice: the carry spans more than the axis)
            continue
        joined = [b for a in big_in for b in flow.carries.get(a, (Free(flow.shape[a]),))]
        split = _split(joined, [out[a] for a in big_out], x_shape)
        exact = exact and split is not None and len(carried) == len(big_in) \
            and not any(isinstance(b, Free) for b in joined)
        if split is not None:
            carries.update((a, run) for a, run in zip(big_out, split) if proper(run))
    return carries, exact


def _split(joined, sizes, x_shape):
    """Partition the carried factors so each output axis gets a run of matching size (a
    :class:`Free` factor may be cut where the size needs it: it reads anything anyway);
    None where the sizes do not fall on the factors' boundaries."""
    factors = _merged_free(joined)
    runs = []
    for size in sizes:
        run, product = [], 1
        while factors and product < size:
            factor = factors.pop(0)
            n = carry_size((factor,), x_shape)
            if isinstance(factor, Free) and product * n > size and size % product == 0 \
                    and n % (size // product) == 0:
                factors.insert(0, Free(n * product // size))
                factor, n = Free(size // product), size // product
            run.append(factor)
            product *= n
        if product != size:
            return None
        runs.append(_merged_free(run))
    return None if factors else [tuple(run) for run in runs]


def _merged_free(factors) -> list:
    """``factors`` with neighbouring :class:`Free` factors joined into one."""
    merged: list = []
    for factor in factors:
        if isinstance(factor, Free) and merged and isinstance(merged[-1], Free):
            merged[-1] = Free(merged[-1].size * factor.size)
        else:
            merged.append(factor)
    return merged


def permute(node, inputs, shapes):
    (flow,) = [f for f in inputs if f is not None][:1]
    ndim = len(flow.shape)
    name = base_name(node)
    if name == "Permute":
        order = [to_axis(d, ndim) for d in node._saved_dims]
    else:
        order = list(range(ndim))
        if name == "Transpose":
            d0, d1 = to_axis(node._saved_dim0, ndim), to_axis(node._saved_dim1, ndim)
        else:  # T: 2-D transpose (1-D: nothing to do)
            d0, d1 = (0, 1) if ndim == 2 else (0, 0)
        order[d0], order[d1] = order[d1], order[d0]
    carries = {new: flow.carries[old] for new, old in enumerate(order) if old in flow.carries}
    return [Flow(shapes[0], carries, flow.exact)]


def expand(node, inputs, shapes):
    (flow,) = [f for f in inputs if f is not None][:1]
    return [Flow(shapes[0], broadcast(flow, shapes[0]), flow.exact)]


def rearrange(node, inputs, shapes):
    """roll / flip / repeat: entries move along these dims, so their carries are lost."""
    (flow,) = [f for f in inputs if f is not None][:1]
    ndim = len(flow.shape)
    if base_name(node) == "Repeat":
        repeats = list(node._saved_repeats)
        lead = len(repeats) - ndim
        moved = {a for a in range(ndim) if repeats[a + lead] != 1}
        carries = {a + lead: c for a, c in flow.carries.items() if a not in moved}
        return [Flow(shapes[0], carries, flow.exact and not moved & set(flow.carries))]
    dims = getattr(node, "_saved_dims", None)
    moved = set(to_axes(dims, ndim)) if dims else set(range(ndim))
    # a later roll or flip can move the entries back: what is lost here may not stay lost
    return [Flow(shapes[0], drop_axes(flow, moved, True),
                 flow.exact and not moved & set(flow.carries))]


