"""Advice that makes a cell's input require grad (or keep the graph of a gradient for a second
derivative: :func:`second_derivative_advice`), written in the cell's own lines.

The advice is code the student copies, so it must be Python that, followed, gives a result:
a factory's ``requires_grad=False`` is set to ``True`` (never a second keyword), a
``.requires_grad_(False)`` becomes ``.requires_grad_()`` (never a second call), and where the
line that makes the input already asks for grad, the later line that turned it off
(``x.requires_grad = False``, ``x.requires_grad_(False)``, ``x.detach_()``) is the one named.
Each amended line is compiled before it is advised. It also owns the cell-reading helpers
this advice needs (:func:`statements`, :func:`assigned_name`, :func:`names_read`) and the
hints for an output without history (:func:`late_grad_hint`, :func:`copied_hint`).
"""
from __future__ import annotations

import ast

import torch

from ..core.errors import operand
from ..core.validation import GRAD_WITHOUT_GRAPH
from .mistakes import numpy_in_torch

# torch's factories that take requires_grad=: the cell's own line, so amended, is the advice
FACTORIES = {"tensor", "zeros", "ones", "full", "empty", "eye", "rand", "randn", "linspace",
             "logspace", "arange", "zeros_like", "ones_like", "full_like", "empty_like",
             "rand_like", "randn_like"}
GENERIC = ("Create the input with requires_grad=True (e.g. x = torch.tensor([1., 2.], "
           "requires_grad=True)), or call x.requires_grad_() on it before computing.")


def requires_grad_advice(source: str, namespace) -> str:
    """Make the cell's input with ``requires_grad=True``, in its own names where it can."""
    return own_requires_grad_advice(source, namespace) or GENERIC


def own_requires_grad_advice(source: str, namespace, output: str | None = None,
                             reads=()) -> str | None:
    """Make the cell's input with ``requires_grad=True``: the line that turned it off, named,
    or its own line, so amended, where a float tensor the cell makes without it (not
    ``output``) is assigned on one line (its last assignment); else a tensor it reads
    (``reads``: from an earlier cell) made to require grad; else None."""
    body = statements(source)
    for k, node in enumerate(body):
        name = assigned_name(node)
        if name is None or name == output or not _float_leaf(namespace.get(name)) \
                or any(assigned_name(later) == name for later in body[k + 1:]):
            continue
        written = (ast.get_source_segment(source, node) or "").strip()
        off = next((stmt for stmt in reversed(body[k + 1:]) if _turns_off(stmt, name)), None)
        amended = _amended(source, node, name, written) if "\n" not in written else None
        if off is not None:
            line = (ast.get_source_segment(source, off) or ast.unparse(off)).strip()
            if amended is None:  # the line that makes it asks for grad already
                return (f"Delete the line {line}: it turns requires_grad off for {name}, "
                        f"which {written} asks for.")
            return f"{amended}, and delete {line}, which turns it off."
        if amended is not None:
            return amended
    read = [n for n in reads if n != output and _float_leaf(namespace.get(n))]
    if read:
        return f"Make {read[0]} require grad: {read[0]}.requires_grad_() before computing."
    return None


def statements(source: str) -> list:
    """The cell's top-level statements (none where it does not parse)."""
    try:
        return ast.parse(source).body
    except SyntaxError:
        return []


def assigned_name(node) -> str | None:
    """``x`` of a statement ``x = …`` (one plain name as the target), else None."""
    if isinstance(node, ast.Assign) and len(node.targets) == 1 \
            and isinstance(node.targets[0], ast.Name):
        return node.targets[0].id
    return None


def names_read(node) -> set[str]:
    """The plain names an expression (or statement) reads."""
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


def turns_on(stmt, name: str) -> bool:
    """``name.requires_grad_()`` (or ``(True)``) or ``name.requires_grad = True``."""
    for node in ast.walk(stmt):
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Attribute) and t.attr == "requires_grad"
                and isinstance(t.value, ast.Name) and t.value.id == name for t in node.targets):
            return isinstance(node.value, ast.Constant) and node.value.value is True
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr == "requires_grad_" and isinstance(node.func.value, ast.Name) \
                and node.func.value.id == name:
            args = [*node.args, *(k.value for k in node.keywords)]
            return not args or (isinstance(args[0], ast.Constant) and args[0].value is True)
    return False


def late_grad_hint(source: str, namespace) -> str | None:
    """No output with history, because a tensor the output was computed from was made to
    require grad only after it: the two lines, in the order to put them."""
    body, ns = statements(source), namespace
    for k, stmt in enumerate(body):
        y = assigned_name(stmt)
        if y is None:
            continue
        value = ns.get(y)
        if not isinstance(value, torch.Tensor) or value.requires_grad:
            continue
        reads = names_read(stmt.value)
        for later in body[k + 1:]:
            late = next((x for x in reads if isinstance(ns.get(x), torch.Tensor)
                         and ns[x].requires_grad and turns_on(later, x)), None)
            if late is not None:
                text = (ast.get_source_segment(source, later) or "").strip()
                return (f"{y} was computed (line {stmt.lineno}) before {late} required grad "
                        f"(line {later.lineno}: {text}): autograd records only what is done "
                        f"to a tensor that already requires grad. Move line {later.lineno} "
                        f"before line {stmt.lineno}.")
    return None


def rebound_hint(source: str, output_name: str) -> str | None:
    """The output was computed from a tensor that requires grad whose name the cell bound
    again afterwards (``y = x**2``, then ``x = torch.tensor(...)``): the graph's leaf has no
    name now. The lines, and what to do; None where the cell shows no such rebinding."""
    body = statements(source)
    made = [k for k, stmt in enumerate(body) if assigned_name(stmt) == output_name]
    if not made:
        return None
    at = made[-1]
    for name in sorted(names_read(body[at].value)):
        later = [stmt for stmt in body[at + 1:] if assigned_name(stmt) == name]
        earlier = [stmt for stmt in body[:at] if assigned_name(stmt) == name]
        if later:
            which = f"of line {earlier[-1].lineno}" if earlier else "it read"
            return (f"{name} was bound again on line {later[0].lineno}, after {output_name} "
                    f"was computed from it on line {body[at].lineno}: {output_name} depends "
                    f"on the {name} {which}, which no name holds now. "
                    f"Compute {output_name} after the last {name} = ..., or give the new "
                    f"tensor another name.")
    return None


def copied_hint(source: str, namespace) -> str | None:
    """No output with history, because the cell's output was rebuilt by ``torch.tensor(…)``
    (a copy of the values, without the graph): the line, and the computation that keeps it."""
    ns = namespace
    for stmt in reversed(statements(source)):
        y = assigned_name(stmt)
        if y is None:
            continue
        call = stmt.value
        if not (isinstance(ns.get(y), torch.Tensor) and isinstance(call, ast.Call)
                and ast.unparse(call.func) in ("torch.tensor", "torch.Tensor", "torch.FloatTensor")
                and call.args):
            continue
        if not any(isinstance(ns.get(x), torch.Tensor) and ns[x].requires_grad
                   for x in names_read(call)):
            continue
        arg, func = call.args[0], ast.unparse(call.func)
        written = ast.get_source_segment(source, arg) or ast.unparse(arg)
        keep = (f"torch.stack({written})" if isinstance(arg, (ast.List, ast.ListComp, ast.Tuple))
                else written)
        if ".numpy()" in keep:  # np.exp(x.detach().numpy()): kept, it holds no graph either
            x = next(x for x in names_read(call) if isinstance(ns.get(x), torch.Tensor)
                     and ns[x].requires_grad)
            keep = numpy_in_torch(keep.replace(f"{x}.detach()", x), x)
            if keep.startswith("compute it with torch functions"):  # no torch twin: words
                return (f"{y} = {func}(...) (line {stmt.lineno}) copies the values into a new "
                        f"tensor without the graph, and NumPy is outside autograd: {keep}.")
        return (f"{y} = {func}(...) (line {stmt.lineno}) copies the values into a new tensor "
                f"without the graph, so {y} has no derivatives. Keep the computation: "
                f"{y} = {keep}.")
    return None


def _amended(source: str, node: ast.Assign, name: str, written: str) -> str | None:
    """The assignment with requires_grad asked for: the factory's keyword set to True (or
    added), a trailing ``.requires_grad_(…)`` made ``.requires_grad_()``, else that call
    appended; None where the line already asks for it or the amended line would not
    compile."""
    call = node.value
    if isinstance(call, ast.Call) and _is_factory(call.func) and written.endswith(")"):
        given = next((kw for kw in call.keywords if kw.arg == "requires_grad"), None)
        if given is not None:
            if isinstance(given.value, ast.Constant) and given.value.value is True:
                return None  # asked for, and turned off elsewhere
            fixed = _replaced(source, node, given, "requires_grad=True")
        else:
            sep = ", " if call.args or call.keywords else ""
            fixed = f"{written[:-1]}{sep}requires_grad=True)"
        return _checked(fixed, "Create the input with requires_grad=True: ")
    if isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) \
            and call.func.attr == "requires_grad_":
        if not call.args and not call.keywords or _is_true(call):
            return None  # asked for, and turned off elsewhere
        fixed = _replaced(source, node, call, f"{ast.get_source_segment(source, call.func)}()")
        return _checked(fixed, f"Make {name} require grad: ")
    rhs = ast.get_source_segment(source, call) or ast.unparse(call)
    return _checked(f"{name} = {operand(rhs)}.requires_grad_()", f"Make {name} require grad: ")


def _is_factory(func) -> bool:
    spelled = ast.unparse(func)
    return spelled.startswith("torch.") and spelled.rsplit(".", 1)[-1] in FACTORIES


def _is_true(call: ast.Call) -> bool:
    values = [*call.args, *(kw.value for kw in call.keywords)]
    return len(values) == 1 and isinstance(values[0], ast.Constant) and values[0].value is True


def _replaced(source: str, node: ast.stmt, part: ast.AST, text: str) -> str:
    """The one-line statement ``node`` with ``part`` of it replaced by ``text``."""
    written = ast.get_source_segment(source, node) or ""
    start, end = part.col_offset - node.col_offset, part.end_col_offset - node.col_offset
    return written[:start] + text + written[end:]


def _checked(fixed: str, lead: str) -> str | None:
    """``lead`` + the amended line, where it compiles (advice is never a SyntaxError)."""
    fixed = fixed.strip()
    try:
        compile(fixed, "<advice>", "exec")
    except SyntaxError:
        return None
    return lead + fixed


def _turns_off(stmt: ast.stmt, name: str) -> bool:
    """Whether ``stmt`` turns requires_grad off for ``name``: ``name.requires_grad = …``,
    ``name.requires_grad_(False)`` (any argument but True), ``name.detach_()``."""
    for node in ast.walk(stmt):
        targets = node.targets if isinstance(node, ast.Assign) else \
            [node.target] if isinstance(node, (ast.AugAssign, ast.AnnAssign)) else []
        if any(_on(t, name, "requires_grad") for t in targets):
            return True
        if isinstance(node, ast.Call) and _on(node.func, name, "detach_"):
            return True
        if isinstance(node, ast.Call) and _on(node.func, name, "requires_grad_") \
                and (node.args or node.keywords) and not _is_true(node):
            return True
    return False


def _on(node, name: str, attr: str) -> bool:
    return isinstance(node, ast.Attribute) and node.attr == attr \
        and isinstance(node.value, ast.Name) and node.value.id == name


def _float_leaf(value) -> bool:
    """A floating tensor made, not computed, that does not require grad."""
    return isinstance(value, torch.Tensor) and value.is_floating_point() \
        and value.grad_fn is None and not value.requires_grad


def _creates_graph(call: ast.Call) -> bool:
    """Whether ``call`` passes ``create_graph=True`` (a constant: False or a name does not)."""
    return any(k.arg == "create_graph" and isinstance(k.value, ast.Constant)
               and k.value.value is True for k in call.keywords)


def second_derivative_advice(source: str, line: int | None) -> str | None:
    """The cell's backward on ``line`` found no graph because it differentiates a gradient
    made without ``create_graph=True`` (``x.grad``, or a result of ``torch.autograd.grad``):
    what to pass where, or ``%hessian``; None where the line reads no such gradient."""
    lines = source.splitlines()
    if not line or line > len(lines):
        return None
    try:
        body = ast.parse(source).body
        failing = ast.parse(lines[line - 1].strip())
    except SyntaxError:
        return None
    grads = {}  # name → the statement that made it with autograd.grad (no create_graph)
    for stmt in body:
        if stmt.lineno >= line or not isinstance(stmt, ast.Assign):
            continue
        call = stmt.value
        if isinstance(call, ast.Call) and ast.unparse(call.func).endswith("autograd.grad") \
                and not _creates_graph(call):
            for target in stmt.targets:
                for node in ast.walk(target):
                    if isinstance(node, ast.Name):
                        grads[node.id] = stmt
    read = [n for n in ast.walk(failing) if isinstance(n, (ast.Name, ast.Attribute))]
    made = next((grads[n.id] for n in read if isinstance(n, ast.Name) and n.id in grads), None)
    if made is not None:
        given = next((k for k in made.value.keywords if k.arg == "create_graph"), None)
        first = (ast.get_source_segment(source, made) or "").strip()  # the whole line
        if given is not None and made.lineno == made.end_lineno:  # create_graph=False: True
            fixed = _replaced(source, made, given.value, "True").strip()
        else:
            fixed = f"{first[:-1]}, create_graph=True)" if first.endswith(")") else first
        return (f"It differentiates a gradient made by torch.autograd.grad without "
                f"create_graph=True: no graph was kept for a second derivative. Make it with "
                f"{fixed}, or take second derivatives with %hessian.")
    if any(isinstance(n, ast.Attribute) and n.attr == "grad" for n in read):
        return f"It differentiates .grad: {GRAD_WITHOUT_GRAPH}"
    return None


__all__ = ["FACTORIES", "GENERIC", "own_requires_grad_advice", "requires_grad_advice",
           "second_derivative_advice"]
