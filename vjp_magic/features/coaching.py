"""Coaching on the cell's own ``backward`` calls (no flag: always, for first derivatives).

Above the derivatives: the mistake that stopped the cell, if any, then notes on summed
``.grad``, on v = ones where it sums components, and on a general v. Under ``--check`` the
mistake only: the graded verdict already says what the notes would. Where the cell's own
backward freed the output's graph, the code beneath starts by making it again (or says how:
:mod:`vjp_magic.teach.freed_graph`).
"""
from __future__ import annotations

from ..run.choose import Subject
from ..teach.coaching import loop_corrected, mistake_sections
from ..teach.freed_graph import freed_lines
from . import Added, Asked

flags = ()
orders = (1,)
replays_record = False


def add(result, request: Asked, subject: Subject) -> Added:
    notes = request.flag("check") is None
    before = mistake_sections(subject.log, result, notes=notes, options=request.options,
                              explained=bool(request.flag("explain")))
    freed = freed_lines(result, subject.log, subject.record, subject.namespace)
    view = {"freed": freed} if freed else {}
    if before and loop_corrected(subject.log, result):
        view["coached"] = True  # the loop shown once, corrected, above
    return Added(before=before, view=view)
