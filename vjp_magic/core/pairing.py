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

from .textenum import TextEnum


class Evidence(TextEnum):
    """How a pairing (or a dependency pattern) is known.

    PROVED: from the autograd graph (what its derivatives read: a value computed from the
    input that reaches the output outside the graph, ``x.detach()``, ``.item()``, is not
    in it), for every value of the input, except that a sparsity
    pattern read off saved index, mask or condition tensors (gather / index / take /
    index_select / scatter indices, ``torch.where``'s condition, ``masked_fill``'s mask, the
    argmax of max pooling / max / kthvalue / median) holds for THIS graph's selections: for
    every x that gives the same ones (those may be computed from x, as ``x.argsort()`` or
    ``x > 0`` are; the pattern's ``conditional_on`` names their ops)."""

    PROVED = "proved"  # from the autograd graph (for every x, or given its saved selections)
    OBSERVED = "observed"  # checked at this input (random probes, or read off a result)
    PROBED = "probed"  # a dependency pattern found by random set probes at this input


def steered(result, name: str) -> bool:
    """Whether the cell read a value computed from input ``name`` into Python (``r.steers``,
    :func:`vjp_magic.run.cuts.find_reads`), where it may have chosen the path the graph
    records: a proof from the graph then holds at this ``name`` only."""
    return any(name in read.inputs for read in getattr(result, "steers", ()))


def proved_for_every(result, name: str, evidence=None) -> bool:
    """Whether ``evidence`` (input ``name``'s own by default, or a pattern's) is a proof from
    the graph that holds for every ``name``: PROVED, and not :func:`steered` (another value
    may take another graph). The one owner of that fact: every sentence and verdict that
    words a proof (headlines, sparse patterns, Hessians, --explain, ``r.dependency``) asks."""
    evidence = result.inputs[name].evidence if evidence is None else evidence
    return str(evidence) == Evidence.PROVED and not steered(result, name)


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
