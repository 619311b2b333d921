"""Recognising the cell's own classic ``backward`` mistakes, and reading its call sites.

:func:`classify` says which mistake an exception the cell's own ``backward``/``autograd.grad``
raised stands for (:class:`MistakeKind`); :func:`accumulations` finds inputs whose ``.grad``
holds several calls' results added up (:func:`summed_calls`: any value read that way, such
as a graded answer); :func:`seeds` says which v each successful backward sent (ones, 0/1,
general; into the output, through ``output.sum()``, or elsewhere). :func:`find_call`,
:func:`set_argument` and :func:`set_gradient` read and rewrite the user's own call line, so the
advice (``teach/coaching.py``) can show that very line corrected. Nothing here words advice.
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
    """What ``call`` added to ``x.grad``: as the guard saw it, else one pass through the
    graph where the guard kept it (a RuntimeError where it was freed)."""
    if id(x) in call.added:
        return call.added[id(x)]
    grads = call.gradients
    if grads is not None and len(grads) != len(call.tensors):
        grads = None
    (g,) = autograd_grad(call.tensors, [x], grads, retain_graph=True, allow_unused=True)
    return torch.zeros_like(x) if g is None else g


def reaches(call: BackwardCall, x: torch.Tensor) -> bool:
    """Whether the successful ``backward`` ``call`` went through to the leaf ``x``."""
    if call.kind != "backward" or call.error is not None:
        return False
    if call.inputs is not None and not any(t is x for t in call.inputs):
        return False
    return any(isinstance(t, torch.Tensor) and t.requires_grad and depends_on(t, x)
               for t in call.tensors)


def _summed(value, x, calls, before, complete: bool) -> tuple[int, bool] | None:
    """How many of the last ``calls`` add up to ``value`` (``x.grad``, or an answer read off
    it), and whether ``before``, what ``x.grad`` held before the cell, is in it."""
    dtype = x.dtype
    total = torch.zeros_like(x)
    for j in range(len(calls) - 1, -1, -1):
        total = total + _vjp(calls[j], x)
        if _close(value, total, dtype):
            return len(calls) - j, False
        if j == 0 and complete and before is not None and _close(value, total + before, dtype):
            return len(calls), True
    return None


def summed_calls(value: torch.Tensor, name: str, x: torch.Tensor,
                 log: BackwardLog) -> Accumulation | None:
    """``value`` (shaped like ``x``) as the sum of the log's last backward calls reaching
    ``x`` (plus what ``x.grad`` held before the cell): how many, on which lines; None when it
    is no such sum."""
    if log is None or value.shape != x.shape:
        return None
    calls = [c for c in log.records if reaches(c, x)]
    if not calls:
        return None
    before = log.grad_before.get(id(x), (None, None))[1]
    try:
        summed = _summed(value.to(x.dtype), x, calls, before, log.calls == len(log.records))
    except RuntimeError:  # the graph changed since (in-place update): nothing to compare
        return None
    if summed is None:
        return None
    used = calls[len(calls) - summed[0]:]
    lines = tuple(sorted({c.line for c in used if c.line is not None}))
    return Accumulation(name, summed[0], summed[1], lines)


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
        summed = summed_calls(grad, name, x, log)
        if summed is not None and (summed.summed, summed.with_before) != (1, False):
            found.append(summed)
    return found


# -- the v each of the cell's own backward calls sent -------------------------------------------
@dataclass(frozen=True)
class Seed:
    """One tensor a successful ``backward`` of the cell started from, and the v it sent."""

    call: BackwardCall
    tensor: torch.Tensor  # what backward was called on
    gradient: torch.Tensor | None  # v as given (None: the implicit 1 of a scalar)
    kind: str  # "ones", "zero-one" (one-hot vectors, masks) or "general"
    target: str  # "output" (the tensor is ``output``), "sum" (``output.sum()``), or "other"


def gradient_kind(v) -> str:
    """"ones" (v = ones, or implicit), "zero-one" (0/1 entries: one-hot, masks), "general"."""
    if not isinstance(v, torch.Tensor):
        return "ones" if v is None or v == 1 else "general"
    v = v.detach()
    if bool((v == 1).all()):
        return "ones"
    return "zero-one" if bool(((v == 0) | (v == 1)).all()) else "general"


def _node_key(node):
    return None if node is None else (type(node).__name__, node._sequence_nr())


def _is_sum_of(t: torch.Tensor, output: torch.Tensor) -> bool:
    """``t`` is ``output.sum()`` (over every entry)."""
    node, of = t.grad_fn, output.grad_fn
    if node is None or of is None or type(node).__name__ != "SumBackward0":
        return False
    following = node.next_functions
    return len(following) == 1 and _node_key(following[0][0]) == _node_key(of)


def seeds(log: BackwardLog | None, output: torch.Tensor | None = None) -> list[Seed]:
    """Every tensor the cell's successful ``backward`` calls started from, with its v, and
    whether it is ``output`` or ``output.sum()`` (which sends v = ones into ``output``)."""
    found = []
    for call in log.records if log is not None else ():
        if call.kind != "backward" or call.error is not None:
            continue
        grads = call.gradients if call.gradients and len(call.gradients) == len(
            call.tensors) else [None] * len(call.tensors)
        for t, g in zip(call.tensors, grads):
            if not isinstance(t, torch.Tensor) or not t.requires_grad:
                continue
            target = "other"
            if output is not None and t is output:
                target = "output"
            elif output is not None and t.numel() == 1 and _is_sum_of(t, output):
                target = "sum"
            found.append(Seed(call, t, g if isinstance(g, torch.Tensor) else None,
                              gradient_kind(g), target))
    return found
