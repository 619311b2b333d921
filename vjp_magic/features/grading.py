"""``%%vjp --check NAME [--reveal]``: the student's answer graded, the derivatives hidden.

Stores ``r.check`` (a :class:`~vjp_magic.teach.grading.Verdict`); the verdict goes above the
derivatives, which are shown only with ``--reveal``. Graded against float64 derivatives of
the replayed record where autograd's float32 ones are imprecise (when there is a record).
"""
from __future__ import annotations

from ..run.choose import Subject, lookup
from . import Added, Asked

flags = ("check", "reveal")
orders = (1,)
needs_record = False  # used where there is one


def add(result, request: Asked, subject: Subject) -> Added:
    from ..teach.grading import grade, verdict_sections

    name = request.flag("check")
    graded = grade(lookup(subject.scope, name, "--check"), result, log=subject.log,
                   answer_name=name, record=subject.record)
    return Added(before=verdict_sections(graded, result, reveal=False),  # --reveal: the view's
                 stored={"check": graded}, view={"hidden": not request.flag("reveal")})
