"""The names the user's namespace binds, so that nothing shown takes one of them (no flag:
always, at both orders, in exam mode too).

An expression output (``%jacobian x**2``, a cell ending in ``x**2``, ``--of y.sum()``) is
named ``y`` in the formulas and in the code beneath it, ``out`` where ``y`` is bound, and so
on: pasted into the next cell, that code never overwrites one of the user's values
(:func:`vjp_magic.render.codegen.output_symbol`). This feature hands the names to the view
(``View.names``, under which the view builds its text); the pipeline runs every feature under
:func:`naming`, so the text they build takes the names too. It hands over, too, what the
view learns from the output's graph while the result keeps it (:mod:`.render.graph_facts`).
"""
from __future__ import annotations

from contextlib import nullcontext

from ..core.tagging import is_visible_name
from ..render import graph_facts
from ..render.codegen import identifiers
from ..render.codegen import naming as _naming
from ..run.choose import Subject
from . import Added, Asked

flags = ()
orders = (1, 2)
replays_record = False
in_exam = True  # r.code is there in exam mode too


def cell_names(subject: Subject) -> frozenset:
    """The visible names of the subject's namespace (none from plain Python)."""
    namespace = getattr(subject, "namespace", None)
    if not namespace:
        return frozenset()
    return frozenset(name for name in namespace if is_visible_name(name))


def naming(subject: Subject, result=None):
    """A context in which text for ``subject``'s ``result`` is built with its names taken,
    the namespace's and the result's own (the pipeline's, around every feature)."""
    names = cell_names(subject)
    if result is not None:
        names |= identifiers([result.output_name, *result.inputs])
    return _naming(names) if names else nullcontext()


def add(result, request: Asked, subject: Subject) -> Added:
    names = cell_names(subject)
    view = {"names": names} if names else {}
    return Added(view={**view, **graph_facts.facts(result)})  # (read while the graph is kept)
