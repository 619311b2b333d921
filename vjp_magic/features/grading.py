"""``%%vjp --check NAME [--against EXPR] [--reveal]``: the student's answer graded, the
derivatives hidden.

Stores ``r.check`` (a :class:`~vjp_magic.teach.grading.Verdict`); the verdict goes above the
derivatives, which are shown only with ``--reveal``. Graded against float64 derivatives of
the replayed record where autograd's float32 ones are imprecise (when there is a record).
With ``--against``, graded against the exercise's f instead of the cell's own graph
(:mod:`vjp_magic.teach.grading_against`); ``--reveal`` then shows f's derivatives.
"""
from __future__ import annotations

from ..run.choose import Subject, lookup
from . import Added, Asked

flags = ("check", "reveal", "against")
orders = (1,)
replays_record = False  # used where there is one
in_exam = True  # exam mode shows the verdict, never what --reveal would


def add(result, request: Asked, subject: Subject) -> Added:
    from ..teach.grading import grade, verdict_sections

    name = request.flag("check")
    answer = lookup(subject.scope, name, "--check")
    source = request.flag("against")
    if source:
        return _against(answer, name, source, result, request, subject)
    graded = grade(answer, result, log=subject.log, answer_name=name, record=subject.record,
                   exam=bool(request.flag("exam")), ordered=bool(request.wrt))
    shown = verdict_sections(graded, result, reveal=False)  # --reveal: the view's
    return Added(before=shown, stored={"check": graded},
                 view={"hidden": not _revealed(request)})


def _revealed(request: Asked) -> bool:
    """``--reveal``, except in exam mode."""
    return bool(request.flag("reveal")) and not request.flag("exam")


def _against(answer, name: str, source, result, request: Asked, subject: Subject) -> Added:
    """Graded against f's derivatives, which ``--reveal`` shows (the cell's own stay hidden:
    a cut graph's are not f's)."""
    from ..teach.grading import verdict_sections
    from ..teach.grading_against import against, from_source, reference

    exercise = from_source(source, subject.scope)
    inputs = {n: item.tensor for n, item in result.inputs.items()}
    graded = against(answer, exercise, inputs, result=result, log=subject.log,
                     answer_name=name, ordered=bool(request.wrt), record=subject.record)
    shown = result
    if _revealed(request):
        shown, _ = reference(exercise, inputs, result.output_name)
    sections = verdict_sections(graded, shown, reveal=_revealed(request),
                                options=request.options)
    return Added(before=sections, stored={"check": graded}, view={"hidden": True})
