"""Features: what a request may add to the derivatives, one module each, one contract.

A feature (grading ``--check``, ``--gradcheck``, ``--symbolic``, coaching on the cell's own
``backward``, ``--explain``, ``--code``, ``--picture``) is a module of this package that says,
as module attributes (:class:`Feature`):

- ``flags``: the request flags it reads, by the name of the magic's ``@argument`` (the
  magics fill :attr:`vjp_magic.pipeline.Request.flags` with these names); it is wanted when
  the first one is set, and always (at its orders) when it has none;
- ``orders``: the derivatives it applies to (1: ``%%vjp``, ``%jacobian``; 2: ``%hessian``);
- ``replays_record``: whether it replays the cell's recorded torch calls;
- ``add(result, request, subject)``: what it adds, as :class:`Added`: sections above and
  below the derivatives, attributes stored on the result (``r.check``, ``r.symbolic``, ...),
  and how the view shows the derivatives.

:func:`gather` runs a list of them in order (the pipeline's
:data:`~vjp_magic.pipeline.FEATURES`): a feature that is not wanted is never called, and the
list's order is the order of the sections. A new flag is one module here, one line in that
list and one ``@argument`` line on the magic. In exam mode (the ``exam`` flag,
:mod:`.exam`) only the features whose module says ``in_exam = True`` run: grading, and exam.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from ..render.document import Section
from ..render.options import RenderOptions
from ..run.choose import Subject


@dataclass(frozen=True)
class Added:
    """What one feature adds: ``before`` and ``after``, sections above and below the
    derivatives; ``stored``, the result's attributes it sets (field name → value); ``view``,
    the :class:`~vjp_magic.render.view.View`'s flags it sets (``hidden``, ``explained``,
    ``pictured``)."""

    before: tuple[Section, ...] = ()
    after: tuple[Section, ...] = ()
    stored: Mapping[str, object] = field(default_factory=dict)
    view: Mapping[str, object] = field(default_factory=dict)


class Asked(Protocol):
    """What a feature reads of the request (:class:`vjp_magic.pipeline.Request`)."""

    options: RenderOptions
    order: int
    jacobian: bool
    wrt: tuple[str, ...]  # the inputs as named, in order (empty: the cell's binding order)

    def flag(self, name: str) -> object: ...


@runtime_checkable
class Feature(Protocol):
    """The contract every feature module keeps (see the package docstring)."""

    flags: Sequence[str]
    orders: Sequence[int]
    replays_record: bool

    def add(self, result, request: Asked, subject: Subject) -> Added: ...


def is_wanted(feature: Feature, request: Asked, exam: bool | None = None) -> bool:
    """At one of the feature's orders, when its first flag is set (always without flags); in
    exam mode only where the feature says ``in_exam`` (``exam``: the request's exam flag,
    where the caller read it already)."""
    if request.order not in feature.orders:
        return False
    if (request.flag("exam") if exam is None else exam) \
            and not getattr(feature, "in_exam", False):
        return False
    return not feature.flags or bool(request.flag(feature.flags[0]))


def declared_flags(features: Sequence[Feature]) -> tuple[str, ...]:
    """Every flag the features read, in their order (the names the magics fill in)."""
    return tuple(dict.fromkeys(name for feature in features for name in feature.flags))


def gather(features: Sequence[Feature], result, request: Asked, subject: Subject) -> Added:
    """The wanted features run in order on ``result`` (not yet displayed), their additions
    joined: sections in the list's order, stored attributes and view flags merged."""
    before: list = []
    after: list = []
    stored: dict = {}
    view: dict = {}
    exam = bool(request.flag("exam"))  # (read once for every feature)
    for feature in features:
        if not is_wanted(feature, request, exam):
            continue
        added = feature.add(result, request, subject)
        before.extend(added.before)
        after.extend(added.after)
        stored.update(added.stored)
        view.update(added.view)
    return Added(tuple(before), tuple(after), stored, view)


__all__ = ["Added", "Asked", "Feature", "declared_flags", "gather", "is_wanted"]
