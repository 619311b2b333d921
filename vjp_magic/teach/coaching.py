"""Coaching on the cell's own classic ``backward`` mistakes: what went wrong, why, what to write.

``run/mistakes.py`` recognises the mistakes (:class:`~vjp_magic.run.mistakes.MistakeKind`),
``run/accumulation.py`` a summed ``.grad``; here they are taught. :func:`mistake_sections`
gives the document sections shown above the derivatives: the mistake that stopped the cell
(the failing line, PyTorch's error, why, the corrected code), then a note per input whose
``.grad`` holds a sum, then the notes on what successful calls computed
(``teach/backward_notes.py``: v = ones summing components, a general v).
:func:`usage_message` is the same coaching as plain text, for a cell that gave no derivatives.

A new mistake: a :class:`MistakeKind` (with its PyTorch text in ``core/torch_api.py``) and
its advice in :data:`_ADVICE` below.
"""
from __future__ import annotations

import ast

import math
import re
from dataclasses import dataclass

import torch

from ..core import analysis
from ..core.errors import VJPUsageError
from ..core.tagging import depends_on
from ..render import notation, plain
from ..render.codegen import (CELL_NAMES, backward_inputs, expression, identifiers,
                              one_hot_loop, source_names)
from ..render.document import (Code, CodeBlock, Document, Math, Paragraph, Section, Span, Text,
                               paragraph)
from ..run.accumulation import Accumulation, accumulations
from ..run.backward_log import CallKind
from ..run.cell_source import (assigned_in, grads_not_zeroed, retained_call,
                               set_gradient)
from ..run.mistakes import CellMistake, MistakeKind
from .backward_notes import ones_sections, upstream_sections

VJP = Math(r"v^\top J", "vᵀJ")  # the vector-Jacobian product


@dataclass
class Advice:
    """Why the call failed (sentences, each a tuple of spans) and the corrected code lines."""

    why: list[tuple[Span, ...]]
    fixed: list[str]


def _say(*parts: Span | str) -> tuple[Span, ...]:
    return tuple(Text(p) if isinstance(p, str) else p for p in parts)


# -- what structure the failing tensor has -----------------------------------------------------
@dataclass
class _InputStructure:
    name: str
    count: int  # components (one gradient argument each)
    points: int
    item: object
    result: object  # the analysis it was read off (its graph says which .grad a backward fills)


def _analysed(tensor: torch.Tensor, result):
    """``result`` when ``tensor`` is its output, else a fresh analysis of ``tensor`` (keeping
    its graph: which ``.grad`` a backward from it fills is read off that graph)."""
    if result is None or tensor is result.output:
        return result
    inputs = {n: i.tensor for n, i in result.inputs.items() if depends_on(tensor, i.tensor)}
    try:
        return analysis.differentiate(tensor, inputs, keep_graph=True) if inputs else None
    except (VJPUsageError, RuntimeError):
        return None


def _structures(tensor: torch.Tensor | None, result) -> list[_InputStructure] | None:
    """The structure of ``tensor`` with respect to each input it depends on, or None."""
    analysed = _analysed(tensor, result) if tensor is not None else None
    if analysed is None:
        return None
    found = [_InputStructure(name, math.prod(analysed.component_shape(name)),
                             item.point_count, item, analysed)
             for name, item in analysed.inputs.items() if not item.unused]
    return found or None


def _describe(s: _InputStructure) -> str:
    if s.count == 1:
        return f"f applied at {s.points:,} points, one value each"
    where = f" at each of {s.points:,} points" if s.points > 1 else ""
    return f"{s.count:,} components{where}"


def _common_point_axes(tensor, structures) -> set:
    """Output axes that are point axes for every input (ones along them is right for all)."""
    axes = set(range(tensor.dim()))
    for s in structures:
        axes &= set(s.item.pairing.out_axes)
    return axes


# -- advice for a call that needs a gradient argument ------------------------------------------
def _pointwise_advice(y: str, shape, structures, fixed_line: str | None) -> Advice:
    points = structures[0].points
    jac = ("diagonal" if all(s.item.per_point_numel() == 1 for s in structures)
           else "block-diagonal")
    why = [_say(Code(y), f" has shape {shape}: f applied at {points:,} points, one value each."),
           _say("Each entry depends only on its own point, so the Jacobian ", Math("J", "J"),
                f" is {jac}: ", VJP, f" with v = ones gives the derivatives at all {points:,} "
                "points at once.")]
    listed = _listed_inputs(structures)
    ones = f"{expression(y)}.backward(gradient=torch.ones_like({y}){listed})"
    return Advice(why, [fixed_line or ones])


def _listed_inputs(structures) -> str:
    """``, inputs=[…]`` where a backward from the failing tensor would also fill the
    ``.grad`` of a tensor the corrected code does not read (:func:`.codegen.backward_inputs`,
    the rule of every snippet shown), else nothing."""
    return backward_inputs(structures[0].result, [s.name for s in structures],
                           [expression(s.name) for s in structures])


def _component_advice(y: str, tensor, structures, source: str = "") -> Advice:
    """The loop of backward calls, one per component; its helpers (``v``, ``k``) are fresh
    against every name of the cell (``source``) and the notebook's: pasted after the cell,
    it overwrites none of them (an input named ``v`` makes the vector ``v2``)."""
    shape = tuple(tensor.shape)
    point_axes = _common_point_axes(tensor, structures)
    taken = ({y, *(s.name for s in structures)} | identifiers(s.name for s in structures)
             | source_names(source) | set(CELL_NAMES.get()))
    v, loop = one_hot_loop(shape, point_axes, taken)
    kinds = {_describe(s) for s in structures}
    if len(kinds) == 1:
        head = _say(Code(y), f" has shape {shape}: {kinds.pop()}.")
    else:
        per_input = "; ".join(f"for {s.name}, {_describe(s)}" for s in structures)
        summed = " and ".join(s.name for s in structures if s.count > 1)
        head = _say(Code(y), f" has shape {shape}: {per_input}. {v} = ones would add up the "
                    f"derivatives of the components of {summed}, so {v} must be one-hot on "
                    "each entry that is not a point for every input.")
    ones = " (ones along the point axes)" if point_axes else ""
    how = _say(f"One backward per component, {v} one-hot on it", ones, ", ",
               Code("retain_graph=True"), ", ", Code(".grad"), " read then zeroed each time:")
    xs = [expression(s.name) for s in structures]
    which = ", ".join(loop.letters)
    reads = [line for x in xs for line in (
        f"print({x}.grad)  # the derivatives of component {which}", f"{x}.grad.zero_()")]
    imports = list(loop.imports)
    listed = xs if _listed_inputs(structures) else ()
    return Advice([head, how], imports + loop.lines(expression(y), reads, v, listed))


def _only_gradient(line: str, y: str) -> bool:
    """Whether ``line`` is ``y.backward(v)`` (or ``gradient=v``) and nothing more."""
    try:
        node = ast.parse(line.strip(), mode="eval").body
    except SyntaxError:
        return False
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr == "backward" and ast.unparse(node.func.value) == y
            and len(node.args) + len(node.keywords) == 1
            and all(k.arg == "gradient" for k in node.keywords))


def _gradient_advice(mistake: CellMistake, result) -> Advice:
    """Why a gradient argument is needed and which one fits; the corrected code lines."""
    tensor = mistake.failing_tensor()
    site = mistake.call_site()
    y = site.y if site is not None and site.y else (
        result.output_name if result is not None else "y")
    shape = tuple(tensor.shape) if tensor is not None else None
    if shape == ():  # a scalar: no points, no components
        line = mistake.source_line(mistake.line)
        fixed = (set_gradient(line, mistake.call.kind, site, f"torch.ones_like({y})")
                 if site is not None else None)
        why = [_say(Code(y), " is a scalar (shape ()): its gradient argument is a scalar too, "
                    "or none at all (1, the default), and backward gives the whole gradient.")]
        plain_call = line is not None and _only_gradient(line, y)
        return Advice(why, [fixed.strip() if fixed and not plain_call
                            else f"{expression(y)}.backward()"])
    structures = _structures(tensor, result)
    if structures is not None and all(s.count == 1 for s in structures):
        line = mistake.source_line(mistake.line)
        fixed = (set_gradient(line, mistake.call.kind, site, f"torch.ones_like({y})")
                 if site is not None else None)
        return _pointwise_advice(y, shape, structures, fixed and fixed.strip())
    if structures is not None:
        return _component_advice(y, tensor, structures, mistake.source)
    why = [_say(Code(y), f" has shape {shape}, not a scalar: backward needs ",
                Code("gradient=v"), " shaped like ", Code(y), "."),
           _say("v = ones gives the derivatives at many points when each entry depends only "
                "on its own point; v one-hot on one entry gives that entry's gradient.")]
    return Advice(why, [f"{expression(y)}.backward(gradient=torch.ones_like({y}))"])


def _shape_advice(mistake: CellMistake, result) -> Advice:
    advice = _gradient_advice(mistake, result)
    given, tensor = mistake.given_gradient(), mistake.failing_tensor()
    if given is not None and tensor is not None:
        advice.why.insert(0, _say(
            Code("gradient"), " must have the same shape as the tensor backward is called on: "
            "that is "
            f"{tuple(tensor.shape)}, the gradient given has shape {tuple(given.shape)}."))
    return advice


def _type_advice(mistake: CellMistake, result) -> Advice:
    """``gradient=1`` or ``[1., 1.]``: a tensor shaped like the output is wanted."""
    advice = _gradient_advice(mistake, result)
    grads = mistake.call.gradients or []
    given = next((g for g in grads if g is not None and not isinstance(g, torch.Tensor)), None)
    if len(grads) > len(mistake.call.tensors or ()):  # one list of numbers for one tensor
        given = list(grads)
    what = type(given).__name__ if given is not None else "not a tensor"
    site = mistake.call_site()
    y = site.y if site is not None and site.y else (
        result.output_name if result is not None else "y")
    advice.why.insert(0, _say(
        Code("gradient"), f" is a tensor shaped like the tensor backward is called on, not a "
        f"{what} ({given!r}): make it one, e.g. ", Code(f"torch.ones_like({y})"), "."))
    return advice


# -- advice for a second pass through a freed graph --------------------------------------------
def _freed_before_cell(mistake: CellMistake) -> Advice:
    """No backward of this cell freed the graph: an earlier cell's did, and the tensor was
    not recomputed since."""
    line = mistake.source_line(mistake.line)
    site = mistake.call_site()
    y = site.y if site is not None else "y"
    base = re.match(r"[A-Za-z_]\w*", y)
    name = base.group(0) if base else "y"
    if name in {"torch", "autograd"} or assigned_in(mistake.source, name):
        what = "the tensors it is computed from, which an earlier cell made"
        recompute = (f"# recompute, in this cell, what {name} is computed from "
                     "(the earlier cell's lines)")
    else:
        what = name
        recompute = f"{name} = ...  # recompute {name} here: the line that defined it earlier"
    why = [_say("The graph behind ", Code(y), " was already freed before this cell ran: a "
                "backward in an earlier cell went through it without ",
                Code("retain_graph=True"), f", and {what} was not computed again since."),
           _say(f"Recompute {what} in this cell before calling backward, or pass ",
                Code("retain_graph=True"), " to the earlier cell's backward call.")]
    return Advice(why, [recompute] + ([line.strip()] if line is not None else []))


def _zero_grad_lines(mistake: CellMistake) -> list[str]:
    """After a retained backward, ``.grad`` adds the next backward's result to this one's:
    the lines that empty it, for each ``NAME.grad`` the cell reads and does not zero."""
    if mistake.call.kind is not CallKind.BACKWARD:
        return []
    return [f"{n}.grad.zero_()  # between the two: .grad adds up over backward calls"
            for n in grads_not_zeroed(mistake.source)]


def _second_pass_advice(mistake: CellMistake, result) -> Advice:
    if mistake.freed_before_cell:
        return _freed_before_cell(mistake)
    first = mistake.freeing_line
    if first is not None and first == mistake.line:
        where = f"on line {first}, in the previous iteration (this same line),"
    else:
        where = f"on line {first}" if first is not None else "earlier"
    why = [_say(f"The backward {where} freed the graph's saved tensors (backward does that "
                "unless ", Code("retain_graph=True"), "), so this second backward could not "
                "pass through it again."),
           _say("Pass ", Code("retain_graph=True"), " to every backward through it but the "
                "last.")]
    fixed = None
    if first is not None:
        kind = mistake.log.kinds.get(mistake.call.freed_by, CallKind.BACKWARD)
        fixed = retained_call(mistake.source, first, kind)
    if fixed is None:  # the call is not to be read: say what to do, invent no argument
        y = result.output_name if result is not None else "y"
        lines = [f"# pass retain_graph=True to the first backward through {y}'s graph"]
    else:
        lines = [f"{fixed[0]}  # line {fixed[1]}"]
    return Advice(why, lines + _zero_grad_lines(mistake))


_ADVICE = {
    MistakeKind.IMPLICIT_SCALAR: _gradient_advice,
    MistakeKind.GRADIENT_SHAPE: _shape_advice,
    MistakeKind.GRADIENT_TYPE: _type_advice,
    MistakeKind.SECOND_PASS: _second_pass_advice,
}


# -- the sections --------------------------------------------------------------------------
def mistake_section(mistake: CellMistake, result=None) -> Section:
    """What went wrong (the failing line and PyTorch's error), why, and the corrected code."""
    line = mistake.source_line(mistake.line)
    where = f"line {mistake.line}" if mistake.line is not None else "a backward call"
    advice = _ADVICE[mistake.kind](mistake, result)
    head = (paragraph(f"The cell stopped at {where}: ", Code(line.strip()), strong=True)
            if line else paragraph(f"The cell stopped at {where}.", strong=True))
    error = mistake.message()
    if mistake.later_lines_skipped():
        error = error.rstrip(".") + ". The lines after it did not run."
    sentences = [(Text("Why: "),) + advice.why[0], *advice.why[1:]]
    sentences[-1] = _then_corrected(sentences[-1])  # (one line less: the screen is short)
    blocks = [head, paragraph(error), *(Paragraph(sentence) for sentence in sentences),
              CodeBlock("\n".join(advice.fixed))]
    if result is not None:
        blocks.append(paragraph("The derivatives below are computed correctly by vjp_magic."))
    return Section(tuple(blocks))


def _then_corrected(sentence: tuple) -> tuple:
    """The last sentence of the why, ending in "Corrected:" (the code follows)."""
    last = sentence[-1]
    if isinstance(last, Text) and last.text.endswith(":"):
        sentence = sentence[:-1] + (Text(last.text[:-1] + "."),)
    return sentence + (Text(" Corrected:"),)


def loop_corrected(log, result) -> bool:
    """Whether the coaching above shows the corrected loop of backward calls, one per
    component, v in it (the display beneath then does not show its own again)."""
    mistake = getattr(log, "mistake", None)
    if mistake is None or result is None:
        return False
    fixed = _ADVICE[mistake.kind](mistake, result).fixed
    return any(line.startswith("for ") for line in fixed)


def _own_derivatives(result, name: str) -> tuple[str, str]:
    """How to zero ``.grad`` here, and what the derivatives shown below are, in the words of
    the result's structure."""
    item = result.inputs[name]
    count = math.prod(result.component_shape(name))
    y = result.output_name
    if count > 1:
        return (", as the tutorial does between components",
                f"The derivatives below are each of {y}'s {count:,} components' own, once.")
    if item.has_points:
        return "", (f"The derivatives below are {notation.letters()[0]}' at each of the "
                    f"{item.point_count:,} points, once.")
    return "", f"The derivatives below are the gradient of {y} alone, once."


def accumulation_section(found: Accumulation, result) -> Section:
    """The note on an input whose ``.grad`` holds several backward calls' results added up."""
    name = found.name
    where = (f" (lines {', '.join(map(str, found.lines))})" if len(found.lines) > 1 else "")
    parts = [f"the {found.summed} backward calls of this cell{where}" if found.summed > 1
             else "this cell's backward"]
    if found.with_before:
        parts.append("what it held before (an earlier cell's backward)")
    how, shown = _own_derivatives(result, name)
    grad = Code(f"{expression(name)}.grad")
    note = paragraph("Note: ", grad, f" holds the sum of {' and '.join(parts)}: "
                     "backward adds to ", Code(".grad"), f". {shown} Empty ", grad,
                     f" before each backward{how}:")
    return Section((note, CodeBlock(f"{expression(name)}.grad = None")))


def accumulation_sections(result, log) -> tuple[Section, ...]:
    """A note per input of ``result`` whose ``.grad`` the cell's backward calls summed."""
    inputs = {name: item.tensor for name, item in result.inputs.items()}
    return tuple(accumulation_section(found, result) for found in accumulations(inputs, log))


def mistake_sections(log, result, *, notes: bool = True, options=None,
                     explained: bool = False) -> tuple[Section, ...]:
    """The coaching shown above the derivatives: the mistake that stopped the cell, if any
    (``log.mistake``), then the notes on summed ``.grad``, on v = ones where it sums
    components, and on a general v (an upstream gradient, with this cell's numbers unless
    ``explained``: ``--explain`` shows them). ``notes=False``: the mistake only (``--check``
    grades the answer and says it instead). ``options``: the maths' ``index_base``."""
    if log is None:
        return ()
    mistake = getattr(log, "mistake", None)
    first = (mistake_section(mistake, result),) if mistake is not None else ()
    if result is None or not notes:
        return first
    return (first + accumulation_sections(result, log) + ones_sections(result, log, options)
            + upstream_sections(result, log, options, numbers=not explained))


def usage_message(mistake: CellMistake, error: BaseException) -> str:
    """The usage error shown when the cell stopped on ``mistake`` and no analysis was possible
    (``error``): the coaching as plain text, then why there are no derivatives.

    When an earlier cell freed the graph, the analysis fails for that same reason (or finds
    no output, the cell having stopped first): ``error`` is replaced by one sentence.
    """
    text = plain.render(Document((mistake_section(mistake),))).rstrip()
    if mistake.freed_before_cell:
        return (text + "\n\nNo derivatives either: vjp_magic reads the same graph. Recompute "
                "the output in the cell and run it again.")
    return f"{text}\n\n{error}"

