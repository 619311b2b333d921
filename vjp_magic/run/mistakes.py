"""Recognising the cell's own classic ``backward`` mistakes, and reading its call sites.

:func:`classify` says which mistake an exception the cell's own ``backward``/``autograd.grad``
raised stands for (:class:`MistakeKind`); :func:`accumulations` finds inputs whose ``.grad``
holds several calls' results added up. :func:`find_call`, :func:`set_argument` and
:func:`set_gradient` read and rewrite the user's own call line, so the advice
(``teach/coaching.py``) can show that very line corrected. Nothing here words advice.
"""
from __future__ import annotations

import ast
import enum
import re
from dataclasses import dataclass, field

import torch

from ..core.tagging import depends_on
from ..core.tolerances import tolerances
from ..core.torch_api import TorchError, autograd_grad, gradient_position, torch_error
from .guard import BackwardCall, BackwardLog


class MistakeKind(enum.Enum):
    """A classic mistake that stops a cell's own ``backward`` (PyTorch's error names it)."""

    IMPLICIT_SCALAR = "implicit-scalar"  # y.backward() on a non-scalar y
    SECOND_PASS = "second-pass"  # a second backward through a freed graph
    GRADIENT_SHAPE = "gradient-shape"  # gradient=v not shaped like y


_KIND_OF_ERROR = {TorchError.IMPLICIT_SCALAR: MistakeKind.IMPLICIT_SCALAR,
                  TorchError.SECOND_PASS: MistakeKind.SECOND_PASS,
                  TorchError.GRADIENT_SHAPE: MistakeKind.GRADIENT_SHAPE}


@dataclass
class CellMistake:
    """A classic mistake that stopped the cell: the error, the call, the cell's source."""

    kind: MistakeKind
    error: BaseException
    call: BackwardCall
    source: str
    log: BackwardLog | None = field(repr=False, default=None)

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

    @property
    def freed_before_cell(self) -> bool:
        """A second pass through a graph an earlier cell's backward freed (not this cell's)."""
        return self.kind is MistakeKind.SECOND_PASS and self.call.freed_by is None

    @property
    def freeing_line(self) -> int | None:
        """The cell line of the call that freed the graph (second pass within the cell)."""
        if self.log is None or self.call.freed_by is None:
            return None
        return self.log.lines.get(self.call.freed_by)

    def failing_index(self) -> int:
        """Which of the call's outputs the error is about (``grad_output[i]``, or the first
        non-scalar for an implicit gradient)."""
        position = gradient_position(self.error)
        if position is not None:
            return position
        if self.kind is MistakeKind.IMPLICIT_SCALAR:
            for i, t in enumerate(self.call.tensors):
                if isinstance(t, torch.Tensor) and t.numel() != 1:
                    return i
        return 0

    def failing_tensor(self) -> torch.Tensor | None:
        index, tensors = self.failing_index(), self.call.tensors
        tensor = tensors[index] if len(tensors) > index else None
        return tensor if isinstance(tensor, torch.Tensor) else None

    def given_gradient(self) -> torch.Tensor | None:
        index, grads = self.failing_index(), self.call.gradients
        given = grads[index] if grads and len(grads) > index else None
        return given if isinstance(given, torch.Tensor) else None

    def call_site(self) -> CallSite | None:
        """The failing call as written on its line (None: not on one line, or not found)."""
        line = self.source_line(self.line)
        return find_call(line.strip(), self.call.kind, self.failing_index()) if line else None


def classify(error: BaseException, log: BackwardLog, source: str) -> CellMistake | None:
    """The mistake ``error`` stands for, if the cell's own backward raised it for a classic
    reason (an error the user's code raised elsewhere, or caught, is not coached)."""
    kind = _KIND_OF_ERROR.get(torch_error(error))
    if kind is None or not any(e is error for e in log.errors):
        return None
    call = next((c for c in reversed(log.records) if c.error is error), None)
    if call is None:
        return None
    return CellMistake(kind=kind, error=error, call=call, source=source, log=log)


# -- the user's call, as written ----------------------------------------------------------------
# How each kind of call takes its gradient argument: (keyword, position).
GRADIENT_ARGUMENT = {"method": ("gradient", 0), "autograd.backward": ("grad_tensors", 1),
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


def _callee(node: ast.Call, source: str) -> tuple[str, str, bool] | None:
    """(called name, source of its owner, whether it is a function form)."""
    func = node.func
    if isinstance(func, ast.Attribute):
        owner = ast.get_source_segment(source, func.value) or ""
        return func.attr, owner, owner.endswith("autograd")
    if isinstance(func, ast.Name):  # from torch.autograd import grad / backward
        return func.id, "", True
    return None


def _site(node: ast.Call, source: str, kind: str, index: int) -> CallSite | None:
    callee = _callee(node, source)
    if callee is None or callee[0] != kind:
        return None
    _, owner, function_form = callee
    if not function_form:
        return CallSite(node=node, style="method", y=owner) if kind == "backward" else None
    style = "grad" if kind == "grad" else "autograd.backward"
    outputs = _argument(node, *_OUTPUTS_ARGUMENT[style])
    if outputs is None:
        return None
    if isinstance(outputs, (ast.List, ast.Tuple)) and outputs.elts:
        elements = [ast.get_source_segment(source, e) for e in outputs.elts]
        at = index if 0 <= index < len(elements) else 0
        return CallSite(node=node, style=style, y=elements[at], listed=True,
                        elements=elements, index=at)
    return CallSite(node=node, style=style, y=ast.get_source_segment(source, outputs))


def find_call(stripped: str, kind: str, index: int = 0) -> CallSite | None:
    """The ``backward``/``grad`` call (``kind``) in a one-line statement (``index``: which
    output the advice is about when the outputs are a list)."""
    try:
        tree = ast.parse(stripped)
    except SyntaxError:
        return None
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and node.lineno == 1 and node.end_lineno == 1:
            site = _site(node, stripped, kind, index)
            if site is not None:
                return site
    return None


def set_argument(line: str, kind: str, keyword: str, value: str, position: int | None,
                 index: int = 0) -> str | None:
    """``line`` with the call's argument ``keyword`` (or positional ``position``) set to
    ``value``, added as a keyword where the call has neither."""
    indent = line[: len(line) - len(line.lstrip())]
    stripped = line.strip()
    site = find_call(stripped, kind, index)
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


def set_gradient(line: str, kind: str, site: CallSite, value: str) -> str | None:
    """The user's own line with the gradient argument of the output ``site.y`` set to
    ``value`` (inside a list where the outputs are a list; ones for the others)."""
    keyword, position = GRADIENT_ARGUMENT[site.style]
    if site.listed:
        given = _argument(site.node, keyword, position)
        stripped = line.strip()
        if isinstance(given, (ast.List, ast.Tuple)) and len(given.elts) == len(site.elements):
            items = [ast.get_source_segment(stripped, e) for e in given.elts]
            items[site.index] = value
        else:
            items = [value if i == site.index else f"torch.ones_like({e})"
                     for i, e in enumerate(site.elements)]
        value = "[" + ", ".join(items) + "]"
    return set_argument(line, kind, keyword, value, position, site.index)


def assigned_in(source: str, name: str) -> bool:
    """Whether the cell assigns ``name`` anywhere."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return False
    return any(isinstance(n, ast.Name) and n.id == name and isinstance(n.ctx, ast.Store)
               for n in ast.walk(tree))


def grads_not_zeroed(source: str) -> list[str]:
    """The names whose ``.grad`` the cell reads and never empties (``.zero_()``, ``= None``)."""
    names = dict.fromkeys(re.findall(r"\b([A-Za-z_]\w*)\.grad\b(?!_)", source))
    return [n for n in names
            if not re.search(rf"\b{n}\.grad(\.zero_\(\)|\s*=\s*None)", source)]


# -- x.grad summed over several backward calls --------------------------------------------------
@dataclass(frozen=True)
class Accumulation:
    """``name``'s ``.grad`` holds the sum of the last ``summed`` calls reaching it (their
    cell ``lines``), plus what it held before the cell when ``with_before``."""

    name: str
    summed: int
    with_before: bool
    lines: tuple[int, ...]


def _close(a: torch.Tensor, b: torch.Tensor, dtype) -> bool:
    a, b = a.detach().double(), b.detach().double()
    rtol = tolerances(dtype).backward
    scale = float(b.abs().max()) if b.numel() else 0.0
    return bool(torch.allclose(a, b, rtol=rtol, atol=rtol * max(1.0, scale), equal_nan=True))


def _vjp(call: BackwardCall, x: torch.Tensor) -> torch.Tensor:
    grads = call.gradients
    if grads is not None and len(grads) != len(call.tensors):
        grads = None
    (g,) = autograd_grad(call.tensors, [x], grads, retain_graph=True, allow_unused=True)
    return torch.zeros_like(x) if g is None else g


def _reaches(call: BackwardCall, x: torch.Tensor) -> bool:
    if call.kind != "backward" or call.error is not None:
        return False
    if call.inputs is not None and not any(t is x for t in call.inputs):
        return False
    return any(isinstance(t, torch.Tensor) and t.requires_grad and depends_on(t, x)
               for t in call.tensors)


def _summed(x, calls, before, complete: bool) -> tuple[int, bool] | None:
    """How many of the last ``calls`` add up to ``x.grad`` (and whether ``before``, what it
    held before the cell, is in it)."""
    grad, dtype = x.grad, x.dtype
    total = torch.zeros_like(grad)
    for j in range(len(calls) - 1, -1, -1):
        total = total + _vjp(calls[j], x)
        if _close(grad, total, dtype):
            return len(calls) - j, False
        if j == 0 and complete and before is not None and _close(grad, total + before, dtype):
            return len(calls), True
    return None


def accumulations(inputs: dict, log: BackwardLog) -> list[Accumulation]:
    """The inputs (name → tensor) whose ``.grad`` holds several backward calls' results
    added up.

    ``x.grad`` equal to the last call's vector-Jacobian product (or zeroed afterwards) is
    fine; equal to the sum of the last few calls' products (plus what it held before the
    cell) is the classic mistake. Anything else (grad edited by hand) is left alone.
    """
    found = []
    for name, x in inputs.items():
        grad = x.grad if x.is_leaf else None
        if grad is None or not bool((grad != 0).any()):
            continue
        calls = [c for c in log.records if _reaches(c, x)]
        if not calls:
            continue
        before = log.grad_before.get(id(x), (None, None))[1]
        try:
            summed = _summed(x, calls, before, log.calls == len(log.records))
        except RuntimeError:  # the graph changed since (in-place update): nothing to compare
            continue
        if summed is None or summed == (1, False):
            continue
        used = calls[len(calls) - summed[0]:]
        lines = tuple(sorted({c.line for c in used if c.line is not None}))
        found.append(Accumulation(name, summed[0], summed[1], lines))
    return found

