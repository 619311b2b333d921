"""Reading the cell's own source: its ``backward``/``grad`` call on a line, rewritten.

:func:`find_call` finds the call on a cell line as the user wrote it (:class:`CallSite`);
:func:`set_argument` and :func:`set_gradient` give that very line with an argument set, so
the advice (``teach/coaching.py``) can show the user's line corrected. :func:`assigned_in`
and :func:`grads_not_zeroed` read what the cell assigns and which ``.grad`` it never empties.
Nothing here words advice.
"""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field

from ..core.textenum import TextEnum
from .backward_log import CallKind


class CallStyle(TextEnum):
    """How the call is written."""

    METHOD = "method"  # y.backward(...)
    BACKWARD = "autograd.backward"  # torch.autograd.backward([y], ...)
    GRAD = "grad"  # torch.autograd.grad([y], ...)


# How each style of call takes its gradient argument: (keyword, position).
GRADIENT_ARGUMENT = {CallStyle.METHOD: ("gradient", 0),
                     CallStyle.BACKWARD: ("grad_tensors", 1),
                     CallStyle.GRAD: ("grad_outputs", 2)}
# How each function form takes the tensors differentiated: (keyword, position).
_OUTPUTS_ARGUMENT = {CallStyle.BACKWARD: ("tensors", 0), CallStyle.GRAD: ("outputs", 0)}


@dataclass
class CallSite:
    """The ``backward``/``grad`` call on a cell line, as the user wrote it."""

    node: ast.Call
    style: CallStyle
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


def _site(node: ast.Call, source: str, kind: CallKind, index: int) -> CallSite | None:
    callee = _callee(node, source)
    if callee is None or callee[0] != kind:
        return None
    _, owner, function_form = callee
    if not function_form:
        if kind is not CallKind.BACKWARD:
            return None
        return CallSite(node=node, style=CallStyle.METHOD, y=owner)
    style = CallStyle.GRAD if kind is CallKind.GRAD else CallStyle.BACKWARD
    outputs = _argument(node, *_OUTPUTS_ARGUMENT[style])
    if outputs is None:
        return None
    if isinstance(outputs, (ast.List, ast.Tuple)) and outputs.elts:
        elements = [ast.get_source_segment(source, e) for e in outputs.elts]
        at = index if 0 <= index < len(elements) else 0
        return CallSite(node=node, style=style, y=elements[at], listed=True,
                        elements=elements, index=at)
    return CallSite(node=node, style=style, y=ast.get_source_segment(source, outputs))


def find_call(stripped: str, kind: CallKind | str, index: int = 0) -> CallSite | None:
    """The ``backward``/``grad`` call (``kind``) in a one-line statement (``index``: which
    output the advice is about when the outputs are a list)."""
    try:
        tree = ast.parse(stripped)
    except SyntaxError:
        return None
    kind = CallKind(kind)
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and node.lineno == 1 and node.end_lineno == 1:
            site = _site(node, stripped, kind, index)
            if site is not None:
                return site
    return None


def set_argument(line: str, kind: CallKind | str, keyword: str, value: str,
                 position: int | None, index: int = 0) -> str | None:
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


def set_gradient(line: str, kind: CallKind | str, site: CallSite, value: str) -> str | None:
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
