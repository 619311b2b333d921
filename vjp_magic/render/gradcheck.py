"""``--gradcheck``'s verdict as document nodes: the replayed cell against finite differences."""
from __future__ import annotations

from . import notation
from .document import Code, Paragraph, Section, Text, paragraph

SHOWN_ENTRIES = 4  # inconclusive entries named; the rest counted


def gradcheck_sections(report, result) -> tuple[Section, ...]:
    """One short section: passed, FAILED or inconclusive (where, and why: a kink), the largest
    error per input, the custom backward functions that were checked (``report``: a
    ``run.gradcheck.GradcheckReport``)."""
    if report.note and not report.max_error:
        return (Section((paragraph("Gradient check: not run. ", report.note),)),)
    spans: list = [Text("Gradient check ")]
    if report.ok is None and report.inconclusive:
        spans += _inconclusive(report) + [Text(": elsewhere the cell's operations replayed "
                                               "in float64 agree with central finite "
                                               "differences")]
    else:
        spans.append(Text(f"{'passed' if report.ok else 'FAILED'}: the cell's operations "
                          "replayed in float64 against central finite differences"))
    if report.custom:
        spans += [Text(", custom backward "), *_listed(report.custom)]
    spans.append(Text(". Largest error: "))
    for i, (name, error) in enumerate(report.max_error.items()):
        checked = report.checked.get(name)
        entries = f" ({checked:,} {'entry' if checked == 1 else 'entries'})" if checked else ""
        spans += [Text(", " if i else ""), notation.prose_name(name),
                  Text(f" {error:.1e}{entries}")]
    spans.append(Text("."))
    blocks = [Paragraph(tuple(spans), strong=report.ok is False)]
    if report.ok is False:
        blocks.append(_failed(report))
    if report.note:
        blocks.append(paragraph(report.note))
    return (Section(tuple(blocks)),)


def _failed(report) -> Paragraph:
    """What a failure means; a custom backward is blamed only where the graph has one."""
    culprit = (" a custom autograd.Function's backward is the likely culprit."
               if report.custom else "")
    return paragraph(
        "The backward pass disagrees with the function's own values" + (":" if culprit
        else ".") + culprit + " The derivatives below are what autograd computes, not "
        "necessarily the true ones.")


def _inconclusive(report) -> list:
    """"inconclusive at x[2] (a kink: relu is not differentiable there)"."""
    where = [(name, index) for name, found in report.inconclusive.items() for index in found]
    spans: list = [Text("inconclusive at ")]
    shown = where[:SHOWN_ENTRIES]
    for i, (name, index) in enumerate(shown):
        last = i == len(shown) - 1 and len(where) <= SHOWN_ENTRIES
        spans += [Text("" if i == 0 else " and " if last else ", "), Code(_entry(name, index))]
    if len(where) > SHOWN_ENTRIES:
        spans.append(Text(f" and {len(where) - SHOWN_ENTRIES:,} more "
                          f"{'entry' if len(where) - SHOWN_ENTRIES == 1 else 'entries'}"))
    ops = "/".join(report.kinks) if report.kinks else "the function"
    verb = "is" if len(where) == 1 else "is not differentiable at any of them"
    there = " not differentiable there" if len(where) == 1 else ""
    spans.append(Text(f" (a kink: {ops} {verb}{there})"))
    return spans


def _entry(name: str, index) -> str:
    inside = ", ".join(map(str, index)) if isinstance(index, tuple) else str(index)
    return f"{name}[{inside}]"


def _listed(names) -> list:
    spans: list = []
    for i, name in enumerate(names):
        spans += [Text(", " if i else ""), Code(name)]
    return spans
