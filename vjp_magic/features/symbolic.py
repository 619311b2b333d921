"""``--symbolic``: SymPy's formulas for the derivatives (first or second), crosschecked
against autograd, above the numbers.

Replays the torch calls recorded while the cell (or the expression) ran; SymPy is imported
only then. Stores ``r.symbolic`` (each input's formula) and ``r.crosscheck`` (whether it
agrees with autograd at every point).
"""
from __future__ import annotations

from ..run.choose import Subject
from . import Added, Asked

flags = ("symbolic",)
orders = (1, 2)
replays_record = True


def add(result, request: Asked, subject: Subject) -> Added:
    from ..symbolic import derive  # SymPy only when asked for

    report = derive(result, record=subject.record, namespace=subject.namespace,
                    output_source=subject.output_source, jacobian=request.jacobian,
                    options=request.options)
    return Added(before=report.sections(),
                 stored={"symbolic": report.formulas, "crosscheck": report.crosscheck})
