"""``--gradcheck``'s verdict as document nodes: the replayed cell against finite differences."""
from __future__ import annotations

from dataclasses import replace

from ..core.errors import reran_sentence
from . import notation
from .document import Code, Paragraph, Section, Text, paragraph

SHOWN_ENTRIES = 4  # inconclusive entries named; the rest counted
SHOWN_ERRORS = 4  # inputs whose largest error is named where they fit; past 4, the 3 largest
# are named and the rest counted (one line either way)


def gradcheck_sections(report, result) -> tuple[Section, ...]:
    """:func:`_verdict`, then, where the check's replays ran a custom Function's forward (the
    user's code) again, how many times and what that means (:func:`.errors.reran_sentence`)."""
    shown = _verdict(report, result)
    reran = reran_sentence(getattr(report, "reran", {}))
    if not reran:
        return shown
    *before, last = shown
    return (*before, replace(last, blocks=(*last.blocks, paragraph(reran))))


def _verdict(report, result) -> tuple[Section, ...]:
    """One short section: passed, FAILED or inconclusive (where, and why: a kink, or values
    too large for finite differences at the step), the largest error per input (none where
    no entry was conclusive), the custom backward functions that were checked (``report``:
    a ``run.gradcheck.GradcheckReport``)."""
    if report.note and not report.max_error:
        return (Section((paragraph("Gradient check: not run. ", report.note),)),)
    spans: list = [Text("Gradient check ")]
    unsure = _unsure(report)
    every = report.ok is None and unsure >= sum(report.checked.values())  # none conclusive
    if report.ok is None and unsure:
        spans += _inconclusive(report) + [Text("" if every else
                                               ": elsewhere the cell's operations replayed "
                                               "in float64 agree with central finite "
                                               "differences")]
    elif report.ok is None and getattr(report, "unchecked", None):  # the note: what to do
        left = sum(report.unchecked.values())
        spans.append(Text(f"inconclusive: {left:,} {'entry was' if left == 1 else 'entries were'}"
                          " not checked; the cell's operations replayed in float64 agree "
                          "with central finite differences at the others"))
    elif report.ok is None and (getattr(report, "stopped", None) is not None
                                or getattr(report, "passes", None) is not None):
        after = f"{report.stopped:g} s" if report.stopped is not None else \
            f"{report.passes:,} checks"
        spans.append(Text(f"inconclusive: sampling stopped after {after}, the "
                          "other entries not checked; the cell's operations replayed in "
                          "float64 agree with central finite differences at those checked"))
    elif report.ok is None:  # only the cell dtype's derivatives in doubt (the note: why)
        spans.append(Text(f"inconclusive in {report.cell_dtype}: the cell's operations "
                          "replayed in float64 agree with central finite differences"))
    else:
        spans.append(Text(f"{'passed' if report.ok else 'FAILED'}: the cell's operations "
                          "replayed in float64 against central finite differences"))
    if getattr(report, "cell_dtype", None) and report.ok is not None:
        spans.append(Text(f", and in {report.cell_dtype} (the cell's dtype) against the "
                          "float64 derivatives"))
    if report.custom:
        spans += [Text(", custom backward "), *_listed(report.custom)]
    errors = {} if every else report.max_error
    named = errors if len(errors) <= SHOWN_ERRORS else \
        dict(sorted(errors.items(), key=lambda kv: -kv[1])[:SHOWN_ERRORS - 1])
    spans.append(Text("." if every else ". Largest error: " if len(named) == len(errors)
                      else f". Largest errors, of {len(errors):,} tensors: "))
    for i, (name, error) in enumerate(named.items()):
        checked = report.checked.get(name)
        entries = f" ({checked:,} {'entry' if checked == 1 else 'entries'}" \
                  f"{_grouped(report, name)})" if checked else ""
        spans += [Text(", " if i else ""), notation.prose_name(name),
                  Text(f" {error:.1e}{entries}")]
    if len(named) < len(errors):  # the rest smaller, each in the report
        spans += [Text(f"; {len(errors) - len(named):,} more, smaller, in "),
                  Code("r.gradcheck.max_error")]
    spans.append(Text("" if every else "."))
    blocks = [Paragraph(tuple(spans), strong=report.ok is False)]
    if report.ok is False:
        blocks.append(_failed(report))
    if report.note:
        blocks.append(paragraph(report.note))
    return (Section(tuple(blocks)),)


def _unsure(report) -> int:
    """How many entries are inconclusive: kinks, rounding stairs and noise."""
    return sum(len(found) for by_name in (report.inconclusive, report.noisy,
                                          getattr(report, "unresolved", {}))
               for found in by_name.values())


def _grouped(report, name: str) -> str:
    """", 2,240 more in groups": the entries outside the sample, checked in groups."""
    covered = getattr(report, "covered", {}).get(name)
    return f", {covered:,} more in groups" if covered else ""


def _cell_failed(report) -> list:
    """Where the cell's own (float32) derivatives disagree with the float64 ones."""
    cell = getattr(report, "cell_failed", ())
    if not cell:
        return []
    worst = max(report.cell_error.get(name, 0.0) for name in cell)
    return [Text(f"In {report.cell_dtype}, the dtype the cell ran in, its derivatives for "),
            *_listed(cell, prose=True),
            Text(f" differ from the float64 ones by up to {worst:.1%} of the largest, beyond "
                 f"{report.cell_dtype}'s rounding: a backward wrong only in "
                 f"{report.cell_dtype}. ")]


def _failed(report) -> Paragraph:
    """What a failure means, by what the graph holds: a custom backward is blamed (by name)
    only where one lies on the way to the inputs; without one, and nothing detached, the
    finite differences met a point where the function has no derivative."""
    spans: list = _cell_failed(report)
    if report.unscaled:
        spans += [Text("The backward does not scale with its incoming gradient (for "),
                  *_listed(report.unscaled, prose=True),
                  Text(", the vᵀJ it returns for 2v, −v/2, 2⁻²⁰v or 2²⁰v is not that multiple "
                       "of the one for v, or, v split in two halves, not the sum of theirs), "
                       "as when a backward ignores "), Code("grad_output"),
                  Text(", uses its absolute value (torch.autograd.gradcheck: \"backward not "
                       "multiplied by grad_output\") or treats small, large or zero entries "
                       "otherwise. ")]
    only_cell = not (report.failed or report.unscaled) and bool(spans)
    if report.custom:
        spans += [Text("A custom autograd.Function's backward is the likely culprit: "
                       if only_cell else "The backward pass disagrees with the function's "
                       "own values: a custom autograd.Function's backward is the likely "
                       "culprit: "), *_listed(report.custom), Text(".")]
    elif only_cell:
        pass  # said above: only the cell dtype's derivatives are wrong
    elif report.detached or not report.failed:
        spans.append(Text("The backward pass disagrees with the function's own values."))
    else:
        ops = "/".join(report.kinks)
        spans += [Text("Finite differences disagree near a point where the function is not "
                       "differentiable: "), *_places(report.failed),
                  Text(f"{f' ({ops})' if ops else ''}; no custom autograd.Function is in the "
                       "graph, and PyTorch's own derivatives are right wherever one exists.")]
    spans.append(Text(" The derivatives below are what autograd computes, not necessarily "
                      "the true ones."))
    return Paragraph(tuple(spans))


def _inconclusive(report) -> list:
    """"inconclusive at x[2] (a kink: relu is not differentiable there)", with a scalar
    output's one-sided derivatives there; where f changes in rounding stairs coarser than
    the step, or the finite differences' rounding noise is over the tolerance, that."""
    spans: list = [Text("inconclusive at ")]
    custom = _custom_named(report)
    steep = getattr(report, "steep", {})
    kinks = {name: tuple(i for i in found if i not in steep.get(name, ()))
             for name, found in report.inconclusive.items()}
    kinks = {name: found for name, found in kinks.items() if found}
    if kinks:
        count = sum(len(found) for found in kinks.values())
        spans += _places(kinks)
        verb = "is" if count == 1 else "is not differentiable at any of them"
        there = " not differentiable there" if count == 1 else ""
        spans += [Text(" (a kink: "), *([Text("/".join(report.kinks))] if report.kinks else
                                         custom or [Text("the function")]),
                  Text(f" {verb}{there}{_sides(report)}; check at another x)")]
    if steep:
        spans += [Text(" and at " if kinks else ""), *_places(steep), Text(_steep_words(report))]
    stairs = getattr(report, "unresolved", {})
    if stairs:
        spans += [Text(" and at " if report.inconclusive else ""), *_places(stairs),
                  Text(" ("), *(custom or [Text("f")]),
                  Text(f" changes in rounding steps of ~{report.stair:.0e} at this x, "
                       "coarser than the finite differences' step: a large intermediate "
                       "value, as in x + 1e12, rounds it)")]
    if report.noisy:
        spans += [Text(" and at " if report.inconclusive or stairs else ""),
                  *_places(report.noisy),
                  Text(" (the values are too large for finite differences at this step: "
                       f"their rounding noise, up to {report.noise:.1g}, is over the "
                       "tolerance)")]
    return spans


def _custom_named(report) -> list:
    """"the custom autograd.Function `Clip`" (``Clip`` and ``Gate`` …): where a custom
    backward is under check, what a kink or a stair that no built-in op explains is named
    by, as :func:`_failed` blames it; else nothing."""
    names = list(dict.fromkeys(n.removesuffix("Backward") for n in report.custom))  # (nodes)
    if not names:
        return []
    many = len(names) > 1
    return [Text(f"the custom autograd.Function{'s' if many else ''} "),
            *_listed(names, joiner=" or " if many else ", ")]


def _steep_words(report) -> str:
    """Why no step was safe where f is steep: what the one-sided quotients measured."""
    change = 100 * report.steepness
    told = f"{change:.2g}" if change < 100 else f"{change:,.0f}"
    return (f" (f changes too fast for finite differences there: its slope changes by {told} "
            f"% of the derivative within the smallest step, {report.steep_step:.1e}, and the "
            "differences do not settle as the step shrinks; no kink was found)")


def _sides(report) -> str:
    """", where its one-sided derivatives are 1 and 0" (a scalar output's, at the first kink
    checked), or nothing."""
    sides = getattr(report, "sides", ())
    if not sides:
        return ""
    name, index, right, left = sides
    return f"; at {_entry(name, index)} its one-sided derivatives are {right + 0.0:.4g} " \
           f"(right) and {left + 0.0:.4g} (left)"


def _places(by_name: dict) -> list:
    """"x[2], x[4] and 3 more entries": the first few entries of ``{name: indices}``."""
    where = [(name, index) for name, found in by_name.items() for index in found]
    spans: list = []
    shown = where[:SHOWN_ENTRIES]
    for i, (name, index) in enumerate(shown):
        last = i == len(shown) - 1 and len(where) <= SHOWN_ENTRIES
        spans += [Text("" if i == 0 else " and " if last else ", "), Code(_entry(name, index))]
    if len(where) > SHOWN_ENTRIES:
        spans.append(Text(f" and {len(where) - SHOWN_ENTRIES:,} more "
                          f"{'entry' if len(where) - SHOWN_ENTRIES == 1 else 'entries'}"))
    return spans


def _entry(name: str, index) -> str:
    inside = ", ".join(map(str, index)) if isinstance(index, tuple) else str(index)
    return f"{name}[{inside}]"


def _listed(names, prose: bool = False, joiner: str = ", ") -> list:
    """Names as code, comma-separated (``prose``: input names, as the display writes them;
    ``joiner``: before the last)."""
    spans: list = []
    names = list(names)
    for i, name in enumerate(names):
        spans += [Text("" if not i else joiner if i == len(names) - 1 else ", "),
                  notation.prose_name(name) if prose else Code(name)]
    return spans
