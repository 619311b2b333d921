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


# Owners whose ``.grad`` is a function, not a tensor's gradient (``torch.autograd.grad``).
_FUNCTION_OWNERS = {"autograd", "func", "functorch", "torch"}


def grads_not_zeroed(source: str) -> list[str]:
    """The tensors (as the cell writes them: ``x``, ``net.weight``) whose ``.grad`` the cell
    reads and never empties (``.grad.zero_()``, ``.grad = …``, ``del …grad``), in the order
    read; a ``.grad`` that is called or owned by a module (``torch.autograd.grad``) is none."""
    tree = _parsed(source)
    if tree is None:
        return []
    called = {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    read, emptied = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr == "zero_":
            owner = node.func.value
            owner = owner.value if isinstance(owner, ast.Attribute) and owner.attr == "data" \
                else owner
            if _is_grad(owner):
                emptied.add(ast.unparse(owner.value))
        targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else []
        emptied.update(ast.unparse(t.value) for t in targets if _is_grad(t))
        if _is_grad(node) and isinstance(node.ctx, ast.Load) and id(node) not in called:
            owner = ast.unparse(node.value)
            if owner.rsplit(".", 1)[-1] not in _FUNCTION_OWNERS:
                read.append((node.lineno, node.col_offset, owner))
    names = dict.fromkeys(owner for *_, owner in sorted(read))
    return [n for n in names if n not in emptied]


def _is_grad(node) -> bool:
    return isinstance(node, ast.Attribute) and node.attr == "grad"


def _parsed(source: str) -> ast.Module | None:
    """The cell parsed, its IPython lines (``%magic``, ``!shell``) read as ``pass``."""
    try:
        return ast.parse(source)
    except SyntaxError:
        pass
    lines = [re.sub(r"^(\s*)[%!].*$", r"\1pass", line) for line in source.splitlines()]
    try:
        return ast.parse("\n".join(lines))
    except SyntaxError:
        return None


# Where each style of call takes ``retain_graph`` positionally.
_RETAIN_GRAPH_POSITION = {CallStyle.METHOD: 1, CallStyle.BACKWARD: 2, CallStyle.GRAD: 3}


def retained_call(source: str, line: int, kind: CallKind | str) -> tuple[str, int] | None:
    """The cell's statement holding the ``backward``/``grad`` call (``kind``) that runs on
    ``line``, as the user wrote it (every line of it) but with ``retain_graph=True``: the
    argument replaced where given, by keyword or by position (named where it is the last
    positional one), else added after the last one; and the statement's first line. None
    where the cell does not parse, no such call runs there, or its arguments are unpacked
    (``*args``, ``**kwargs``: where it goes is unknown)."""
    tree = _parsed(source)
    if tree is None:
        return None
    kind = CallKind(kind)
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)
             and n.lineno <= line <= n.end_lineno and _site(n, source, kind, 0) is not None]
    statements = [n for n in ast.walk(tree) if isinstance(n, ast.stmt)
                  and not isinstance(n, _COMPOUND) and calls
                  and n.lineno <= calls[0].lineno and calls[0].end_lineno <= n.end_lineno]
    if not calls or not statements:
        return None
    node, statement = calls[0], statements[-1]  # (ast.walk: the innermost statement last)
    if any(isinstance(a, ast.Starred) for a in node.args) \
            or any(k.arg is None for k in node.keywords):
        return None
    given = next((k.value for k in node.keywords if k.arg == "retain_graph"), None)
    value = "True"
    position = _RETAIN_GRAPH_POSITION[_site(node, source, kind, 0).style]
    if given is None and len(node.args) > position:
        given = node.args[position]  # named where no positional argument follows it
        value = "retain_graph=True" if len(node.args) == position + 1 else "True"
    lines = source.splitlines(keepends=True)
    offset = _offsets(lines)
    if given is not None:
        start, end = offset(given.lineno, given.col_offset), offset(given.end_lineno,
                                                                    given.end_col_offset)
        edit = (start, end, value)
    else:
        last = max(node.args + node.keywords, key=lambda a: (a.end_lineno, a.end_col_offset),
                   default=None)
        at = (offset(last.end_lineno, last.end_col_offset) if last is not None
              else offset(node.end_lineno, node.end_col_offset) - 1)
        edit = (at, at, (", " if last is not None else "") + "retain_graph=True")
    text = "".join(lines)
    start = offset(statement.lineno, statement.col_offset)
    end = offset(statement.end_lineno, statement.end_col_offset)
    changed = text[start:edit[0]] + edit[2] + text[edit[1]:end]
    indent = lines[statement.lineno - 1][:len(lines[statement.lineno - 1])
                                          - len(lines[statement.lineno - 1].lstrip())]
    changed = "\n".join(part[len(indent):] if part.startswith(indent) else part
                        for part in changed.split("\n"))
    return changed, statement.lineno


_COMPOUND = (ast.If, ast.For, ast.AsyncFor, ast.While, ast.With, ast.AsyncWith, ast.Try,
             ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Match)


def _offsets(lines: list[str]):
    """(line, UTF-8 column) as ast gives them → an index into ``"".join(lines)``."""
    starts = [0]
    for text in lines:
        starts.append(starts[-1] + len(text))

    def offset(lineno: int, col: int) -> int:
        return starts[lineno - 1] + len(lines[lineno - 1].encode()[:col].decode())
    return offset
