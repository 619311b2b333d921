"""Coaching on the cell's own classic ``backward`` mistakes.

:func:`classify` recognises, among the exceptions a cell raised, the ones its own
``backward``/``autograd.grad`` call raised for a classic reason (the guard's log records
them); :func:`mistake_section` says what went wrong, why, and the corrected line.
:func:`accumulation_notes` notices ``x.grad`` summed over several ``backward`` calls.
"""
from __future__ import annotations

import ast
import math
import re
import textwrap
from dataclasses import dataclass, field

import torch

from ..render import latex
from ..core.errors import VJPUsageError
from ..run.guard import BackwardCall, BackwardLog
from ..core.tagging import depends_on

_autograd_grad = torch.autograd.grad  # the real one, even while a cell patches torch.autograd

KINDS = {
    "implicit-scalar": "grad can be implicitly created only for scalar outputs",
    "second-pass": "backward through the graph a second time",
    "gradient-shape": "Mismatch in shape",
}


_MATH_TOKEN = re.compile(r"(v(?:_k)?\^T(?: J)?)")


def tex_rows(sentence: str, width: int = 88) -> list[str]:
    """A sentence as LaTeX rows of at most ``width`` characters (displays do not wrap),
    with ``v^T J`` set as mathematics."""
    rows = []
    for line in textwrap.wrap(sentence, width) or [""]:
        pieces = _MATH_TOKEN.split(line)
        rows.append("".join(
            piece.replace("^T", r"^\top ").strip() if i % 2 else latex.text(piece)
            for i, piece in enumerate(pieces) if piece
        ))
    return rows


@dataclass
class Section:
    """A block of the display: LaTeX displays (``$$...$$``) and the same in plain text."""

    displays: list[str]
    lines: list[str]
    position: str = "top"
    kind: str = "note"

    def latex(self) -> str:
        return "\n".join(self.displays)

    def text(self) -> str:
        return "\n".join(self.lines)


@dataclass
class CellMistake:
    """A classic mistake that stopped the cell: the error, the call, the cell's source."""

    kind: str
    error: BaseException
    call: BackwardCall
    source: str
    log: BackwardLog = field(repr=False, default=None)

    @property
    def line(self) -> int | None:
        return self.call.line

    def source_line(self, number: int | None) -> str | None:
        lines = self.source.splitlines()
        if number is None or not 1 <= number <= len(lines):
            return None
        return lines[number - 1]

    def later_lines_skipped(self) -> bool:
        if self.line is None:
            return False
        rest = self.source.splitlines()[self.line:]
        return any(s.strip() and not s.strip().startswith("#") for s in rest)

    def message(self) -> str:
        return f"{type(self.error).__name__}: {self.error}"


def classify(error: BaseException, log: BackwardLog, source: str) -> CellMistake | None:
    """The mistake ``error`` stands for, if the cell's own backward raised it for a classic reason."""
    if not isinstance(error, RuntimeError):
        return None
    if not any(e is error for e in log.errors):
        return None
    call = next((c for c in reversed(log.records) if c.error is error), None)
    if call is None:
        return None
    text = str(error)
    for kind, marker in KINDS.items():
        if marker in text:
            return CellMistake(kind=kind, error=error, call=call, source=source, log=log)
    return None


# -- the corrected line -----------------------------------------------------------------------
# How each kind of call takes its gradient argument: (keyword, position).
_GRADIENT_ARGUMENT = {"method": ("gradient", 0), "autograd.backward": ("grad_tensors", 1),
                      "grad": ("grad_outputs", 2)}
# How each function form takes the tensors differentiated: (keyword, position).
_OUTPUTS_ARGUMENT = {"autograd.backward": ("tensors", 0), "grad": ("outputs", 0)}


@dataclass
class CallSite:
    """The ``backward``/``grad`` call on a cell line, as the user wrote it."""

    node: ast.Call
    style: str  # "method", "autograd.backward" or "grad"
    y: str  # source of the tensor the advice is about (an element of a list if listed)
    listed: bool = False  # the outputs were given as a list/tuple literal
    elements: list = field(default_factory=list)  # the sources of that list's elements
    index: int = 0  # which element y is


def _argument(node: ast.Call, keyword: str, position: int):
    for kw in node.keywords:
        if kw.arg == keyword:
            return kw.value
    return node.args[position] if len(node.args) > position else None


def _find_call(stripped: str, kind: str, index: int = 0) -> CallSite | None:
    """The ``backward``/``grad`` call in a one-line statement (``index``: which output the
    advice is about when the outputs are a list)."""
    try:
        tree = ast.parse(stripped)
    except SyntaxError:
        return None
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or node.lineno != 1 or node.end_lineno != 1:
            continue
        func = node.func
        if isinstance(func, ast.Attribute):
            name = func.attr
            owner = ast.get_source_segment(stripped, func.value) or ""
            function_form = owner.endswith("autograd")
        elif isinstance(func, ast.Name):  # from torch.autograd import grad / backward
            name, owner, function_form = func.id, "", True
        else:
            continue
        if name != kind:
            continue
        if not function_form:
            if kind == "backward":
                return CallSite(node=node, style="method", y=owner)
            continue
        style = "grad" if kind == "grad" else "autograd.backward"
        outputs = _argument(node, *_OUTPUTS_ARGUMENT[style])
        if outputs is None:
            continue
        if isinstance(outputs, (ast.List, ast.Tuple)) and outputs.elts:
            elements = [ast.get_source_segment(stripped, e) for e in outputs.elts]
            at = index if 0 <= index < len(elements) else 0
            return CallSite(node=node, style=style, y=elements[at], listed=True,
                            elements=elements, index=at)
        return CallSite(node=node, style=style, y=ast.get_source_segment(stripped, outputs))
    return None


def _set_argument(line: str, kind: str, keyword: str, value: str, position: int | None,
                  index: int = 0) -> str | None:
    """``line`` with the call's argument ``keyword`` (or positional ``position``) set to ``value``."""
    indent = line[: len(line) - len(line.lstrip())]
    stripped = line.strip()
    site = _find_call(stripped, kind, index)
    if site is None:
        return None
    node = site.node
    for kw in node.keywords:
        if kw.arg == keyword:
            start, end = kw.value.col_offset, kw.value.end_col_offset
            return indent + stripped[:start] + value + stripped[end:]
    if position is not None and len(node.args) > position:
        arg = node.args[position]
        return indent + stripped[: arg.col_offset] + value + stripped[arg.end_col_offset:]
    end = node.end_col_offset - 1  # the closing parenthesis
    inside = stripped[node.func.end_col_offset: end].strip("( \t")
    sep = ", " if inside else ""
    return indent + stripped[:end].rstrip() + sep + f"{keyword}={value}" + stripped[end:]


def _set_gradient(line: str, call: BackwardCall, site: CallSite, value: str) -> str | None:
    """The user's own line with the gradient argument of the output ``site.y`` set to ``value``
    (inside a list where the outputs are a list)."""
    keyword, position = _GRADIENT_ARGUMENT[site.style]
    if site.listed:
        given = _argument(site.node, keyword, position)
        stripped = line.strip()
        if isinstance(given, (ast.List, ast.Tuple)) and len(given.elts) == len(site.elements):
            items = [ast.get_source_segment(stripped, e) for e in given.elts]
            items[site.index] = value
        else:
            items = [value if i == site.index else f"torch.ones_like({_simple(e)})"
                     for i, e in enumerate(site.elements)]
        value = "[" + ", ".join(items) + "]"
    return _set_argument(line, call.kind, keyword, value, position, site.index)


@dataclass
class _InputStructure:
    name: str
    count: int  # components (one gradient argument each)
    points: int
    comp: tuple
    item: object


def _structures(tensor: torch.Tensor, result) -> list[_InputStructure] | None:
    """The structure of ``tensor`` with respect to each input it depends on, or None."""
    analysed = None
    if result is not None and tensor is result.output:
        analysed = result
    elif result is not None:
        from ..core.analysis import differentiate

        inputs = {n: i.tensor for n, i in result.inputs.items() if depends_on(tensor, i.tensor)}
        try:
            analysed = differentiate(tensor, inputs) if inputs else None
        except (VJPUsageError, RuntimeError):
            analysed = None
    if analysed is None:
        return None
    found = []
    for name, item in analysed.inputs.items():
        if item.unused:
            continue
        comp = analysed.component_shape(name)
        found.append(_InputStructure(name, math.prod(comp), item.point_count, comp, item))
    return found or None


def _simple(source: str) -> str:
    return source if source.replace(".", "").replace("_", "").isalnum() else f"({source})"


def _failing_index(mistake: CellMistake) -> int:
    """Which of the call's outputs the error is about (``grad_output[i]``, or the first
    non-scalar for an implicit gradient)."""
    match = re.search(r"grad_output\[(\d+)\]", str(mistake.error))
    if match:
        return int(match.group(1))
    if mistake.kind == "implicit-scalar":
        for i, t in enumerate(mistake.call.tensors):
            if isinstance(t, torch.Tensor) and t.numel() != 1:
                return i
    return 0


def _gradient_advice(mistake: CellMistake, result) -> tuple[list[str], list[str]]:
    """Why a gradient argument is needed and which one fits; the corrected code lines."""
    call = mistake.call
    index = _failing_index(mistake)
    tensor = call.tensors[index] if len(call.tensors) > index else None
    line = mistake.source_line(mistake.line)
    site = _find_call(line.strip(), call.kind, index) if line else None
    y = site.y if site is not None else None
    if not y:
        y = result.output_name if result is not None else "y"
    y_expr = _simple(y)
    shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else None
    structures = _structures(tensor, result) if isinstance(tensor, torch.Tensor) else None
    ones = f"torch.ones_like({y})"
    if structures is not None and all(s.count == 1 for s in structures):
        points = structures[0].points
        jac = ("diagonal" if all(s.item.per_point_numel() == 1 for s in structures)
               else "block-diagonal")
        why = [f"{y} has shape {shape}: f applied at {points} points, one value each.",
               f"Each entry depends only on its own point, so the Jacobian J is {jac}: the "
               f"vector-Jacobian product with v = ones gives the derivatives at all {points} "
               "points at once (the sum of each column of J is its one nonzero entry)."]
        fixed = _set_gradient(line, call, site, ones) if site is not None else None
        return why, [(fixed or f"{y_expr}.backward(gradient={ones})").strip()]
    if structures is not None:
        why = _component_why(y, tensor, structures)
        return why, _component_loop(y_expr, tensor, structures)
    why = [f"{y} has shape {shape}, not a scalar: backward needs gradient=v shaped like {y}.",
           "v = ones gives the derivatives at many points when each entry depends only on its "
           "own point; v one-hot on one entry gives that entry's gradient."]
    return why, [f"{y_expr}.backward(gradient={ones})"]


def _describe(s: _InputStructure) -> str:
    if s.count == 1:
        return f"f applied at {s.points} points, one value each"
    where = f" at each of {s.points} points" if s.points > 1 else ""
    return f"{s.count} components{where}"


def _common_point_axes(tensor, structures) -> set:
    """Output axes that are point axes for every input (ones along them is right for all)."""
    axes = set(range(tensor.dim()))
    for s in structures:
        axes &= {a for a, _ in s.item.pairing}
    return axes


def _component_why(y: str, tensor, structures) -> list[str]:
    shape = tuple(tensor.shape)
    kinds = {_describe(s) for s in structures}
    if len(kinds) == 1:
        head = f"{y} has shape {shape}: {kinds.pop()}."
    else:
        per_input = "; ".join(f"for {s.name}, {_describe(s)}" for s in structures)
        summed = [s.name for s in structures if s.count > 1]
        head = (f"{y} has shape {shape}: {per_input}. v = ones would add up the "
                f"derivatives of the components of {' and '.join(summed)}, so v must be "
                "one-hot on each entry that is not a point for every input.")
    return [head, "backward computes one vector-Jacobian product per call: make one call per "
            "component, with v one-hot on that component"
            + (" (ones along the point axes)" if _common_point_axes(tensor, structures) else "")
            + ", retain_graph=True between calls, and read then zero .grad each time."]


def _component_loop(y: str, tensor, structures) -> list[str]:
    point_out = _common_point_axes(tensor, structures)
    comp = [n for a, n in enumerate(tensor.shape) if a not in point_out]
    letters = ["k"] if len(comp) == 1 else ["i", "j", "l", "m"][: len(comp)]
    if len(letters) < len(comp):
        letters = [f"k{a}" for a in range(len(comp))]
    letter_iter = iter(letters)
    index = [":" if a in point_out else next(letter_iter) for a in range(tensor.dim())]
    while index and index[-1] == ":":
        index.pop()
    xs = [_simple(s.name) for s in structures]
    if len(comp) == 1:
        loop = f"for k in range({comp[0]}):"
    else:
        loop = f"for {', '.join(letters)} in itertools.product(" + ", ".join(
            f"range({n})" for n in comp) + "):"
    which = ", ".join(letters)
    lines = [
        loop,
        f"    v = torch.zeros_like({y}); v[{', '.join(index)}] = 1",
        f"    {y}.backward(gradient=v, retain_graph=True)",
    ]
    for x in xs:
        lines.append(f"    print({x}.grad)  # the derivatives of component {which}")
        lines.append(f"    {x}.grad.zero_()")
    return lines


def _assigned_in(source: str, name: str) -> bool:
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return False
    return any(isinstance(n, ast.Name) and n.id == name and isinstance(n.ctx, ast.Store)
               for n in ast.walk(tree))


def _freed_before_cell(mistake: CellMistake) -> tuple[list[str], list[str]]:
    """A second pass through a graph that no backward of this cell freed: an earlier cell's
    backward did, and the tensor was not recomputed since."""
    line = mistake.source_line(mistake.line)
    site = _find_call(line.strip(), mistake.call.kind) if line else None
    y = site.y if site is not None else "y"
    base = re.match(r"[A-Za-z_]\w*", y)
    name = base.group(0) if base else "y"
    if name in {"torch", "autograd"} or _assigned_in(mistake.source, name):
        what = "the tensors it is computed from, which an earlier cell made"
        recompute = f"# recompute, in this cell, what {name} is computed from (the earlier cell's lines)"
    else:
        what = name
        recompute = f"{name} = ...  # recompute {name} here: the line that defined it earlier"
    why = [
        f"The graph behind {y} was already freed before this cell ran: a backward (or "
        f"autograd.grad) in an earlier cell went through it without retain_graph=True, and "
        f"{what} was not computed again since.",
        f"Recompute {what} in this cell before calling backward (a fresh graph), or pass "
        "retain_graph=True to the earlier cell's backward call.",
    ]
    fixed = [recompute]
    if line is not None:
        fixed.append(line.strip())
    return why, fixed


def _explanation(mistake: CellMistake, result) -> tuple[list[str], list[str]]:
    call = mistake.call
    if mistake.kind == "second-pass":
        if call.freed_by is None:
            return _freed_before_cell(mistake)
        first = mistake.log.lines.get(call.freed_by) if call.freed_by is not None else None
        first_line = mistake.source_line(first)
        if first is not None and first == mistake.line:
            where = f"on line {first}, in the previous iteration (this same line),"
        else:
            where = f"on line {first}" if first is not None else "earlier"
        why = [
            f"The backward {where} freed the graph's saved tensors (backward does that unless "
            "retain_graph=True), so this second backward could not pass through it again.",
            "Pass retain_graph=True to every backward through the same graph except the last, "
            "as the tutorial does between components.",
        ]
        fixed = None
        if first_line is not None:
            kind = mistake.log.kinds.get(call.freed_by, "backward")
            fixed = _set_argument(first_line, kind, "retain_graph", "True", None)
        if fixed is None:
            y = result.output_name if result is not None else "y"
            fixed = f"{y}.backward(gradient=v, retain_graph=True)"
        label = f"line {first}: " if first is not None else ""
        return why, [label + fixed.strip()] + _zero_grad_lines(mistake)
    why, fixed = _gradient_advice(mistake, result)
    if mistake.kind == "gradient-shape":
        index = _failing_index(mistake)
        given = call.gradients[index] if call.gradients and len(call.gradients) > index else None
        tensor = call.tensors[index] if len(call.tensors) > index else None
        if isinstance(given, torch.Tensor) and isinstance(tensor, torch.Tensor):
            why.insert(0, f"gradient must have the same shape as the tensor backward is called "
                          f"on: that is {tuple(tensor.shape)}, the gradient given has shape "
                          f"{tuple(given.shape)}.")
    return why, fixed


def _zero_grad_lines(mistake: CellMistake) -> list[str]:
    """After a retained backward, ``.grad`` adds the next backward's result to this one's:
    the lines that empty it, for each ``NAME.grad`` the cell reads and does not zero itself."""
    if mistake.call.kind != "backward":
        return []
    source = mistake.source
    names = dict.fromkeys(re.findall(r"\b([A-Za-z_]\w*)\.grad\b(?!_)", source))
    return [f"{n}.grad.zero_()  # between the two: .grad adds up over backward calls"
            for n in names if not re.search(rf"\b{n}\.grad(\.zero_\(\)|\s*=\s*None)", source)]


def mistake_section(mistake: CellMistake, result=None) -> Section:
    """What went wrong (the failing line and PyTorch's error), why, and the corrected code."""
    line = mistake.source_line(mistake.line)
    where = f"line {mistake.line}" if mistake.line is not None else "a backward call"
    why, fixed = _explanation(mistake, result)
    skipped = "The lines after it did not run." if mistake.later_lines_skipped() else ""
    what = [latex.text(f"The cell stopped at {where}:" if line else f"The cell stopped at {where}.")]
    if line:
        what.append(latex.code(line.strip()))
    for sentence in _sentences(mistake.message()):
        what.extend(tex_rows(sentence))
    if skipped:
        what.append(latex.text(skipped))
    how = tex_rows("Why: " + why[0])
    for sentence in why[1:]:
        how.extend(tex_rows(sentence))
    how.append(latex.text("Corrected:"))
    how.extend(latex.code(c) for c in fixed)
    if result is not None:
        how.append(latex.text("The derivatives below are computed correctly by vjp_magic."))
    lines = [f"The cell stopped at {where}:" + (f" {line.strip()}" if line else ""),
             mistake.message()]
    if skipped:
        lines.append(skipped)
    lines.extend(["Why: " + why[0], *why[1:], "Corrected:", *("    " + c for c in fixed)])
    return Section(displays=[latex.display(*what), latex.display(*how)], lines=lines,
                   position="top", kind="mistake")


def mistake_text(mistake: CellMistake, result=None) -> str:
    """The same as :func:`mistake_section`, as plain text (for a usage error)."""
    return mistake_section(mistake, result).text()


def freed_before_cell(mistake: CellMistake) -> bool:
    """The cell stopped on a graph that an earlier cell's backward freed (not one of its own)."""
    return mistake.kind == "second-pass" and mistake.call.freed_by is None


def usage_message(mistake: CellMistake, error: BaseException) -> str:
    """The usage error shown when the cell stopped on ``mistake`` and no analysis was possible
    (``error``): the coaching, then why there are no derivatives.

    When an earlier cell freed the graph, the analysis fails for that same reason (or finds
    no output, the cell having stopped first): the coaching already says what to do, so
    ``error`` is replaced by one sentence saying so.
    """
    text = mistake_text(mistake)
    if freed_before_cell(mistake):
        return (text + "\nNo derivatives either: vjp_magic reads the same graph. Recompute the "
                "output in the cell and run it again.")
    return f"{text}\n{error}"


def _sentences(message: str) -> list[str]:
    parts = [p.strip() for p in message.replace(". ", ".\n").splitlines()]
    return [p for p in parts if p]


# -- x.grad summed over several backward calls ------------------------------------------------
def _tolerance(dtype: torch.dtype) -> float:
    return {torch.float64: 1e-9, torch.float32: 1e-5, torch.float16: 2e-3,
            torch.bfloat16: 2e-2}.get(dtype, 1e-5)


def _close(a: torch.Tensor, b: torch.Tensor, dtype) -> bool:
    a, b = a.detach().double(), b.detach().double()
    rtol = _tolerance(dtype)
    scale = float(b.abs().max()) if b.numel() else 0.0
    return bool(torch.allclose(a, b, rtol=rtol, atol=rtol * max(1.0, scale), equal_nan=True))


def _vjp(call: BackwardCall, x: torch.Tensor) -> torch.Tensor:
    grads = call.gradients
    if grads is not None and len(grads) != len(call.tensors):
        grads = None
    (g,) = _autograd_grad(call.tensors, [x], grads, retain_graph=True, allow_unused=True)
    return torch.zeros_like(x) if g is None else g


def _reaches(call: BackwardCall, x: torch.Tensor) -> bool:
    if call.kind != "backward" or call.error is not None:
        return False
    if call.inputs is not None and not any(t is x for t in call.inputs):
        return False
    return any(isinstance(t, torch.Tensor) and t.requires_grad and depends_on(t, x)
               for t in call.tensors)


def _own_derivatives(result, name: str) -> str:
    """What the derivatives shown below are, in the words of the result's structure."""
    item = result.inputs[name]
    count = math.prod(result.component_shape(name))
    y = result.output_name
    if count > 1:
        return (f", as the tutorial does between components; the derivatives below are each "
                f"of {y}'s {count} components' own, once.")
    if item.has_points:
        return (f"; the derivatives below are f' at each of the {item.point_count} points, "
                "once.")
    return f"; the derivatives below are the gradient of {y} alone, once."


def accumulation_notes(result, log: BackwardLog) -> list[Section]:
    """A note per input whose ``.grad`` holds several backward calls' results added up.

    ``x.grad`` equal to the last call's vector-Jacobian product (or zeroed afterwards) is
    fine; equal to the sum of the last few calls' products (plus what it held before the
    cell) is the classic mistake. Anything else (grad edited by hand) is left alone.
    """
    notes = []
    for name, item in result.inputs.items():
        x = item.tensor
        grad = x.grad if x.is_leaf else None
        if grad is None or not bool((grad != 0).any()):
            continue
        calls = [c for c in log.records if _reaches(c, x)]
        if not calls:
            continue
        before = log.grad_before.get(id(x), (None, None))[1]
        complete = log.calls == len(log.records)
        try:
            total = torch.zeros_like(grad)
            found = None
            for j in range(len(calls) - 1, -1, -1):
                total = total + _vjp(calls[j], x)
                if _close(grad, total, x.dtype):
                    found = (len(calls) - j, False)
                    break
                if j == 0 and complete and before is not None and _close(grad, total + before,
                                                                         x.dtype):
                    found = (len(calls), True)
        except RuntimeError:  # the graph changed since (in-place update): nothing to compare
            continue
        if found is None or found == (1, False):
            continue
        summed, with_before = found
        used = calls[len(calls) - summed:]
        lines = sorted({c.line for c in used if c.line is not None})
        where = f" (lines {', '.join(map(str, lines))})" if len(lines) > 1 else ""
        parts = []
        if summed > 1:
            parts.append(f"the {summed} backward calls of this cell{where}")
        else:
            parts.append("this cell's backward")
        if with_before:
            parts.append("what it held before (an earlier cell's backward)")
        sentence = (f"{name}.grad holds the sum of {' and '.join(parts)}: backward adds to "
                    f".grad. Zero it before each backward with {name}.grad.zero_()"
                    f"{_own_derivatives(result, name)}")
        fix = f"{name}.grad.zero_()"
        notes.append(Section(
            displays=[latex.display(*tex_rows("Note: " + sentence), latex.code(fix))],
            lines=["Note: " + sentence, "    " + fix], position="top", kind="accumulation",
        ))
    return notes
