"""``--gradcheck``: the cell's recorded operations replayed in float64 against finite
differences (custom backward functions included, and in float32 cells checked at float32 too).

Stores ``r.gradcheck`` (:class:`~vjp_magic.run.gradcheck.GradcheckReport`); its section goes
above the derivatives when it failed, below them otherwise. A check that ran replaces the
result's "unverified custom backward" notes.
"""
from __future__ import annotations

from ..core.validation import unverified_notes
from ..core.errors import ran_again
from ..run.choose import Subject
from . import Added, Asked

flags = ("gradcheck",)
orders = (1,)
replays_record = True


def add(result, request: Asked, subject: Subject) -> Added:
    from ..render.gradcheck import gradcheck_sections
    from ..run.gradcheck import gradcheck

    inputs = {name: item.tensor for name, item in result.inputs.items()}  # the user's own
    report = gradcheck(subject.record, inputs, result.output, list(inputs), seed=result.seed)
    shown = gradcheck_sections(report, result)
    stored = {"gradcheck": report, "notes": _notes(result, report)}
    if report.ok is False:
        return Added(before=shown, stored=stored)
    return Added(after=shown, stored=stored)


def _notes(result, report) -> list[str]:
    """The result's notes; a gradient check that ran replaces "unverified custom backward",
    and one whose replays ran a custom Function's forward again says so where a note says
    it runs only once."""
    reran = getattr(report, "reran", {})
    notes = [ran_again(n, reran) for n in result.notes]
    if not report.max_error:
        return notes
    unverified = unverified_notes(result)
    return [n for n, old in zip(notes, result.notes) if old not in unverified]
