"""Structure inference: which output axes are "points" for which input axes.

The graph analysis (:mod:`.axisflow`) proves what it can; shapes and a few rows of the
Jacobian propose larger pairings (:class:`.pairing.Pairing`) here, and random probes vᵀJ on
the autograd graph (:mod:`.probes`) decide those.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch

from .pairing import Pairing
from .probes import probe_generator

PER_SIZE = 3  # candidate pairings tried per number of point axes (probe path)


def row_major_strides(shape) -> list[int]:
    """How far one step along each axis moves in the flattened (row-major) tensor."""
    return [math.prod(shape[a + 1:]) for a in range(len(shape))]

def _size_one_pairs(out_shape: Sequence[int], in_shape: Sequence[int]) -> Pairing:
    """Size-1 output axes paired in order with size-1 input axes (always valid)."""
    out_ones = [a for a, n in enumerate(out_shape) if n == 1]
    in_ones = [b for b, n in enumerate(in_shape) if n == 1]
    return Pairing(zip(out_ones, in_ones))


def candidate_pairings(
    out_shape: Sequence[int], in_shape: Sequence[int], per_size: int | None = PER_SIZE
) -> list[Pairing]:
    """Pairings to try, most point axes first; the size-1 pairing (full Jacobian) comes last.

    Among pairings of equal size, order-preserving ones and ones that keep axes aligned
    (batch axes usually lead) come first. At most ``per_size`` of each size are kept (None:
    all), so a batch axis is still tried when many axes share a size (``x @ x`` on
    (B, n, n)).
    """
    ones = _size_one_pairs(out_shape, in_shape)
    out_axes = [a for a, n in enumerate(out_shape) if n > 1]
    in_axes = [b for b, n in enumerate(in_shape) if n > 1]
    proposals: list[Pairing] = []
    for size in range(min(len(out_axes), len(in_axes)), 0, -1):
        same_size: list[Pairing] = []
        for outs in itertools.combinations(out_axes, size):
            for ins in itertools.permutations(in_axes, size):
                if all(out_shape[a] == in_shape[b] for a, b in zip(outs, ins)):
                    same_size.append(Pairing(zip(outs, ins)))
        same_size.sort(key=_preference)
        proposals.extend(same_size if per_size is None else same_size[:per_size])
    proposals = [(p + ones).sorted() for p in proposals]
    proposals.append(ones)
    # The size-1 pairing alone is always valid, so nothing after it is needed.
    return list(dict.fromkeys(proposals))


def consistent_pairing(out_shape: Sequence[int], in_shape: Sequence[int], rows) -> Pairing:
    """The pairing that a few rows of the Jacobian suggest, whatever the axes' order.

    ``rows`` holds ``(output index, support)``: the multi-index of an output entry, and the
    multi-indices (k × input ndim) of the input entries its row of J is nonzero at. A pair
    (a, b) is kept when, in every row, every nonzero entry sits at index ``output index[a]``
    along ``b``; an axis claimed twice is ambiguous and dropped. Only a proposal: the probe
    still decides.
    """
    broken = broken_pairs(out_shape, in_shape, rows)
    pairs = Pairing((a, b) for a, m in enumerate(out_shape) for b, n in enumerate(in_shape)
                    if m == n > 1 and (a, b) not in broken)
    outs, ins = pairs.out_axes, pairs.in_axes
    unique = Pairing(p for p in pairs if outs.count(p.out) == 1 and ins.count(p.in_) == 1)
    return (unique + _size_one_pairs(out_shape, in_shape)).sorted()


def broken_pairs(out_shape: Sequence[int], in_shape: Sequence[int], rows) -> set[tuple[int, int]]:
    """The pairs (a, b) of equal size that some row of the Jacobian breaks: a non-zero entry
    at an index along ``b`` other than the row's index along ``a`` (``rows`` as for
    :func:`consistent_pairing`). A pairing holding such a pair is not the structure."""
    return {(a, b) for a, m in enumerate(out_shape) for b, n in enumerate(in_shape)
            if m == n > 1 and not all(bool((support[:, b] == index[a]).all())
                                      for index, support in rows)}


def row_indices(out_shape: Sequence[int], seed: int, count: int = 4) -> list[tuple[int, ...]]:
    """Which output entries' rows to read for :func:`consistent_pairing`: random multi-indices
    drawn from the run's ``seed``, so that axes of equal size get different indices (which
    tells them apart)."""
    if math.prod(out_shape) <= 1:
        return []
    generator = probe_generator(seed, "rows")
    picks = torch.stack([torch.randint(0, n, (count,), generator=generator) for n in out_shape], 1)
    return list(dict.fromkeys(tuple(int(i) for i in row) for row in picks))


def _preference(pairing: Pairing) -> tuple[int, int]:
    ins = pairing.in_axes
    monotone = all(x < y for x, y in zip(ins, ins[1:]))
    offset = sum(abs(a - b) for a, b in pairing)
    return (0 if monotone else 1, offset)


def component_shape(out_shape: Sequence[int], pairing: Pairing) -> tuple[int, ...]:
    """Shape of the non-point output axes: one gradient argument per entry."""
    return Pairing(pairing).component_shape(out_shape)


# -- reading derivatives off a Jacobian --------------------------------------------------------
def gather_derivatives(jacobian: torch.Tensor, out_ndim: int, pairing: Pairing) -> torch.Tensor:
    """The derivatives (component shape + input shape) read off the pairing's support."""
    if not pairing:
        return jacobian
    pairing = Pairing(pairing)
    out_shape, in_shape = jacobian.shape[:out_ndim], jacobian.shape[out_ndim:]
    comp_axes = [a for a in range(out_ndim) if a not in pairing.out_axes]
    result_ndim = len(comp_axes) + len(in_shape)

    def axis_range(size: int, position: int) -> torch.Tensor:
        shape = [1] * result_ndim
        shape[position] = size
        return torch.arange(size, device=jacobian.device).reshape(shape)

    paired = pairing.out_to_in()
    index = []
    for a in range(out_ndim):
        if a in paired:
            index.append(axis_range(out_shape[a], len(comp_axes) + paired[a]))
        else:
            index.append(axis_range(out_shape[a], comp_axes.index(a)))
    index.extend(axis_range(n, len(comp_axes) + b) for b, n in enumerate(in_shape))
    if not index:
        return jacobian
    shape = tuple(out_shape[a] for a in comp_axes) + tuple(in_shape)
    return jacobian[tuple(index)].expand(shape).clone() if shape else jacobian[tuple(index)]
