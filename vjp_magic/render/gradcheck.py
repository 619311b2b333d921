"""``--gradcheck``'s verdict as document nodes: the replayed cell against finite differences."""
from __future__ import annotations

from . import notation
from .document import Code, Paragraph, Section, Text, paragraph


def gradcheck_sections(report, result) -> tuple[Section, ...]:
    """One short section: passed or failed, the largest error per input, the custom backward
    functions that were checked (``report``: a ``run.gradcheck.GradcheckReport``)."""
    if report.note and not report.max_error:
        return (Section((paragraph("Gradient check: not run. ", report.note),)),)
    verdict = "passed" if report.ok else "FAILED"
    spans: list = [Text(f"Gradient check {verdict}: the cell's operations replayed in float64 "
                        "against central finite differences")]
    if report.custom:
        spans += [Text(", custom backward "), *_listed(report.custom)]
    spans.append(Text(". Largest error: "))
    for i, (name, error) in enumerate(report.max_error.items()):
        checked = report.checked.get(name)
        entries = f" ({checked:,} {'entry' if checked == 1 else 'entries'})" if checked else ""
        spans += [Text(", " if i else ""), notation.prose_name(name), Text(f" {error:.1e}{entries}")]
    spans.append(Text("."))
    blocks = [Paragraph(tuple(spans), strong=not report.ok)]
    if not report.ok:
        culprit = (" a custom autograd.Function's backward is the likely culprit."
                   if report.custom else "")
        blocks.append(paragraph(
            "The backward pass disagrees with the function's own values" + (":" if culprit
            else ".") + culprit + " The derivatives below are what autograd computes, not "
            "necessarily the true ones."))
    if report.note:
        blocks.append(paragraph(report.note))
    return (Section(tuple(blocks)),)


def _listed(names) -> list:
    spans: list = []
    for i, name in enumerate(names):
        spans += [Text(", " if i else ""), Code(name)]
    return spans
