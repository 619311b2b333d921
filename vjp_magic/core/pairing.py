"""Which output axes are "points" for which input axes: the :class:`Pairing` value type, and
the :class:`Evidence` for it.

A pairing ``((a, b), ...)`` says output axis ``a`` and input axis ``b`` index the same points,
i.e. the Jacobian is zero unless ``y_index[a] == x_index[b]``. It is a tuple of
:class:`AxisPair` s, so it still compares, hashes and unpacks as plain ``(a, b)`` pairs
(``r.point_axes["x"] == ((0, 0),)``, ``for a, b in pairing``, ``dict(pairing)``).
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import torch

from .textenum import TextEnum


class Evidence(TextEnum):
    """How a pairing (or a dependency pattern) is known.

    PROVED: from the autograd graph, for every value of the input, except that a sparsity
    pattern read off saved index, mask or condition tensors (gather / index / take /
    index_select / scatter indices, ``torch.where``'s condition, ``masked_fill``'s mask, the
    argmax of max pooling / max / kthvalue / median) holds for THIS graph's selections: for
    every x that gives the same ones (those may be computed from x, as ``x.argsort()`` or
    ``x > 0`` are; the pattern's ``conditional_on`` names their ops)."""

    PROVED = "proved"  # from the autograd graph (for every x, or given its saved selections)
    OBSERVED = "observed"  # checked at this input (random probes, or read off a result)
    PROBED = "probed"  # a dependency pattern found by random set probes at this input


class AxisPair(NamedTuple):
    """Output axis ``out`` and input axis ``in_`` index the same points."""

    out: int
    in_: int


class Pairing(tuple):
    """The (output axis, input axis) pairs of one input, as :class:`AxisPair` s."""

    __slots__ = ()

    def __new__(cls, pairs: Iterable[tuple[int, int]] = ()) -> Pairing:
        return super().__new__(cls, (AxisPair(*pair) for pair in pairs))

    @property
    def out_axes(self) -> tuple[int, ...]:
        """The output axes that are points, in the pairs' order."""
        return tuple(pair.out for pair in self)

    @property
    def in_axes(self) -> tuple[int, ...]:
        """The input axes that are points, in the pairs' order."""
        return tuple(pair.in_ for pair in self)

    def out_to_in(self) -> dict[int, int]:
        """Output axis → the input axis it is paired with."""
        return dict(self)

    def sorted(self) -> Pairing:
        """The same pairs, by output axis."""
        return Pairing(sorted(self))

    def component_shape(self, out_shape: Sequence[int]) -> tuple[int, ...]:
        """Shape of the non-point output axes: one gradient argument per entry."""
        points = set(self.out_axes)
        return tuple(n for a, n in enumerate(out_shape) if a not in points)

    def point_count(self, in_shape: Sequence[int]) -> int:
        """Number of points: the product of the paired input axes' sizes."""
        return math.prod(in_shape[b] for b in self.in_axes)

    def __add__(self, other) -> Pairing:
        return Pairing(tuple(self) + tuple(other))

    def __repr__(self) -> str:
        return repr(tuple(tuple(pair) for pair in self))


# -- rounding read as a dependence between points ----------------------------------------------
# A structure check reads entries of J off its points (a coupling) or a probe's disagreement
# with vᵀD. Where terms cancel in mathematics (a softmax shifted by the batch-wide max: every
# row of its Jacobian sums to 0, and that sum is what reaches the max's entry), autograd leaves
# their rounding there, ε of the terms, which is no dependence. As in
# :mod:`.grouptest` (R1's rule, :func:`.grouptest.firm`), such a reading is taken again with
# the probe rescaled by a factor in 1.25..1.75: a derivative scales with it to √ε, rounding
# does not; a reading under √(smallest normal) is always kept. Half types are too coarse to
# tell (their sums cancel exactly by chance): there every reading counts, as before.


def firm_outside(first: torch.Tensor, again: torch.Tensor, scale: torch.Tensor,
                 outside: torch.Tensor) -> tuple[bool, torch.Tensor]:
    """(coupled, rounded) for answers ``first`` (k × n) of k probes and ``again`` of the same
    probes times ``scale`` (k,), read only where ``outside`` (k × n bool) holds: whether a
    finite non-zero there scales as a derivative does, and where every other non-zero there
    did not (rounding, k × n bool). NaN and ±inf are not read (the probes' business)."""
    from .grouptest import firm  # (grouptest imports the probes, which import this module)

    mask = outside.to(first.device)
    g = first.detach().reshape(first.shape[0], -1).masked_fill(~mask, 0)
    h = again.detach().reshape(g.shape).to(g.device).masked_fill(~mask, 0)
    hit, _, rounded = firm(g, h, scale, 1)
    return bool(hit.any()), rounded


def resolves(dtype: torch.dtype) -> bool:
    """Whether rounding is told from a dependence in ``dtype`` (float32, float64)."""
    from .grouptest import resolves_rounding

    return resolves_rounding(dtype)


def rescaling(count: int, seed: int, draw: int) -> torch.Tensor:
    """(count,) float64 factors in 1.25..1.75 for the second reading (R1's, drawn apart from
    the dependency's own by ``draw``)."""
    from .grouptest import rescaling as drawn

    return drawn(count, seed, 2**30 + draw)


def probe_rounding(derivatives: torch.Tensor, pairing, probe: torch.Tensor,
                   probe_vjp: torch.Tensor, again, seed: int, draw: int = 0):
    """Whether a probe that disagrees with vᵀD (the probe rule, :func:`.probes.probe_mismatch`)
    disagrees by rounding only: ``again(w)`` gives wᵀJ for the probe rescaled (one backward);
    at every entry the rule rejects, (s·v)ᵀJ − (s·v)ᵀD must fail to be s times vᵀJ − vᵀD to
    √ε (or it is a dependence the structure lacks). (True, the input entries read as
    rounding: flat indices) or (False, None); never True in the half types, nor where an
    answer is not finite."""
    from .probes import _compute_dtype, predicted_probe
    from .tolerances import tolerances

    dtype = derivatives.dtype
    if not resolves(dtype) or not resolves(probe_vjp.dtype):
        return False, None
    compute = _compute_dtype(dtype)
    d, v, got = (t.to(compute) for t in (derivatives, probe, probe_vjp))
    expected = predicted_probe(d, v, pairing)
    scale = predicted_probe(d.abs(), v.abs(), pairing)
    allowed = scale * tolerances(dtype).probe + torch.finfo(compute).tiny
    miss = got - expected
    if not bool(torch.isfinite(miss).all()):
        return False, None
    failing = miss.abs() > allowed
    if not bool(failing.any()):
        return True, torch.zeros(0, dtype=torch.int64)
    s = rescaling(1, seed, draw)
    second = again((v * float(s)).to(probe.dtype))
    miss2 = second.to(compute) - predicted_probe(d, v * float(s), pairing)
    coupled, rounded = firm_outside(miss.reshape(1, -1), miss2.reshape(1, -1), s,
                                    failing.reshape(1, -1))
    if coupled:
        return False, None
    return True, rounded.reshape(-1).nonzero().flatten()
