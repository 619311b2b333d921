"""Advice that makes a cell's input require grad (or keep the graph of a gradient for a second
derivative: :func:`second_derivative_advice`), written in the cell's own lines.

The advice is code the student copies, so it must be Python that, followed, gives a result:
a factory's ``requires_grad=False`` is set to ``True`` (never a second keyword), a
``.requires_grad_(False)`` becomes ``.requires_grad_()`` (never a second call), and where the
line that makes the input already asks for grad, the later line that turned it off
(``x.requires_grad = False``, ``x.requires_grad_(False)``, ``x.detach_()``) is the one named.
Where the cell writes the input in place (``x *= 2``, ``x[0] = 5.``), which a leaf that
requires grad refuses, the advice is a line to add after the last write
(:func:`in_place_advice`). A tensor computed from a float one (``y = x**2``) is never advised
to require grad (it would become a leaf of its own: x.grad stays None); an input turned on
only after a line computed from it is made with ``requires_grad=True`` on its own line, the
late line named. Each amended line is compiled before it is advised. It also owns
the cell-reading helpers this advice needs (:func:`statements`, :func:`assigned_name`,
:func:`names_read`) and the hints for an output without history (:func:`late_grad_hint`: a
late ``requires_grad_``, a cut by ``no_grad``/``.detach()`` named with its line
(:func:`cut_hint`), a list or array output (:func:`left_autograd_hint`); :func:`copied_hint`).
"""
from __future__ import annotations

import ast
import re

import torch

from ..core.errors import operand
from ..core.tagging import trainable
from ..core.validation import GRAD_WITHOUT_GRAPH
from .cuts import _unconverted
from .mistakes import numpy_in_torch

# torch's factories that take requires_grad=: the cell's own line, so amended, is the advice
FACTORIES = {"tensor", "zeros", "ones", "full", "empty", "eye", "rand", "randn", "linspace",
             "logspace", "arange", "zeros_like", "ones_like", "full_like", "empty_like",
             "rand_like", "randn_like"}
GENERIC = ("Create the input with requires_grad=True (e.g. x = torch.tensor([1., 2.], "
           "requires_grad=True)), or call x.requires_grad_() on it before computing.")


def requires_grad_advice(source: str, namespace) -> str:
    """Make the cell's input with ``requires_grad=True``, in its own names where it can (a
    tensor an earlier cell made, which the cell reads, included)."""
    body = statements(source)
    made = {assigned_name(node) for node in body}
    reads = sorted({n for node in body for n in names_read(node)} - made)
    return own_requires_grad_advice(source, namespace, reads=reads) or GENERIC


def own_requires_grad_advice(source: str, namespace, output: str | None = None,
                             reads=()) -> str | None:
    """Make the cell's input with ``requires_grad=True``: the line that turned it off, named,
    or its own line, so amended, where a float tensor the cell makes without it (not
    ``output``) is assigned on one line (its last assignment); else a tensor it reads
    (``reads``: from an earlier cell) made to require grad; else None."""
    body = statements(source)
    for k, node in enumerate(body):
        name = assigned_name(node)
        if name is None or name == output \
                or any(assigned_name(later) == name for later in body[k + 1:]):
            continue
        late = _turned_on_late(source, body, k, name, namespace)
        if late is not None:
            return late
        if not _float_leaf(namespace.get(name)) or _computed(node.value, namespace):
            continue  # y = x**2 made to require grad would be a new leaf: no dy/dx
        written_after = in_place_advice(source, body[k + 1:], name)
        if written_after is not None:  # requires_grad=True on its line would stop the cell
            return written_after
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
        return in_place_advice(source, body, read[0]) or \
            f"Make {read[0]} require grad: {read[0]}.requires_grad_() before computing."
    return None


_COPYING = {"clone", "detach", "float", "double", "to", "contiguous", "cpu", "cuda"}


def _computed(expr, namespace) -> bool:
    """Whether ``expr`` computes a tensor from another float one (``x**2``, ``torch.sin(x)``),
    not makes one (``torch.linspace(…)``, ``torch.randn_like(x)``, ``labels.float()``, a copy
    ``xb.clone()``): made
    to require grad, such a tensor becomes a leaf of its own, and the backward never reaches
    the input it came from."""
    if isinstance(expr, ast.Call) and _is_factory(expr.func):
        return False
    copied = expr
    while isinstance(copied, ast.Call) and isinstance(copied.func, ast.Attribute) \
            and copied.func.attr in _COPYING:
        copied = copied.func.value
    if copied is not expr and isinstance(copied, ast.Name):
        return False  # xb2 = xb.clone(): a copy, whose derivatives are xb's
    return any(isinstance(value, torch.Tensor) and value.is_floating_point()
               for value in map(namespace.get, names_read(expr)))  # (x = labels.float(): made)


def _turned_on_late(source: str, body: list, k: int, name: str, namespace) -> str | None:
    """``name``, made on line ``body[k]``, turned on (``x.requires_grad = True``,
    ``x.requires_grad_()``) only after a line computed from it: autograd recorded nothing of
    that line. The advice: make it with requires_grad=True on its own line; None where the
    cell does not do that, or its line cannot be so amended."""
    value = namespace.get(name)
    if not (isinstance(value, torch.Tensor) and value.is_floating_point()
            and value.grad_fn is None and value.requires_grad):
        return None
    used = next((j for j in range(k + 1, len(body)) if name in names_read(body[j])
                 and not turns_on(body[j], name)), None)
    on = next((j for j in range(k + 1, len(body)) if turns_on(body[j], name)), None)
    if used is None or on is None or on < used \
            or in_place_advice(source, body[k + 1:], name) is not None:
        return None
    written = (ast.get_source_segment(source, body[k]) or "").strip()
    call = body[k].value
    if "\n" in written or not (isinstance(call, ast.Call) and _is_factory(call.func)):
        return None
    amended = _amended(source, body[k], name, written)
    if amended is None:
        return None
    late, first = body[on], body[used]
    return (f"{name} was made to require grad on line {late.lineno} "
            f"({_line_of(source, late)}), after line {first.lineno} ({_line_of(source, first)}) "
            f"was computed from it: autograd records only what is done to a tensor that "
            f"already requires grad. {amended} (line {body[k].lineno}); line {late.lineno} "
            f"is then not needed.")


def in_place_advice(source: str, body: list, name: str) -> str | None:
    """``name`` is written in place by the cell's statements ``body`` (``x *= 2``,
    ``x[0] = 5.``, ``x.add_(1)``): autograd refuses that on a leaf that requires grad, so
    ``requires_grad=True`` where it is made would stop the cell there. The line to add after
    its last write, where every write comes before anything is computed from it; else what
    to reorder. None where the cell writes no such thing."""
    views = _views_of(body, name)  # x = b[:3]: a write into x is a write into b
    writes = [k for k, stmt in enumerate(body)
              if any(written_in_place(stmt, n) for n in (name, *views.values()))]
    if not writes:
        return None
    used = next((k for k, stmt in enumerate(body) if k not in writes and k not in views
                 and any(n in names_read(stmt) for n in (name, *views.values()))
                 and not turns_on(stmt, name)), None)
    before = [k for k in writes if used is None or k < used]
    refused = "which autograd refuses on a tensor that requires grad (a leaf)"
    if len(before) == len(writes):
        last = body[before[-1]]
        return (f"{name} is written in place on line {last.lineno} ({_line_of(source, last)}), "
                f"{refused}: make it require grad after its last write, with the line "
                f"{name}.requires_grad_() after line {last.end_lineno}.")
    late, first = body[writes[len(before)]], body[used]
    return (f"{name} is written in place on line {late.lineno} ({_line_of(source, late)}) "
            f"after line {first.lineno} computed from it, {refused}: make every write to "
            f"{name} before line {first.lineno}, then the line {name}.requires_grad_() after "
            f"the last of them (or write into a copy, {name}2 = {name}.clone()).")


_VIEWING = {"view", "view_as", "reshape", "narrow", "select", "transpose", "t", "permute",
            "squeeze", "unsqueeze", "flatten", "unflatten", "expand", "diagonal", "unfold",
            "as_strided", "movedim", "swapaxes", "split", "chunk", "unbind"}


def _views_of(body: list, name: str) -> dict:
    """Statement index → the name it binds to a view of ``name``'s tensor (``x = b[:3]``,
    ``x = b.view(2, 2)``, ``x = b.T``): an in-place write through it writes ``name``."""
    views: dict = {}
    for k, stmt in enumerate(body):
        if not (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1
                and isinstance(stmt.targets[0], ast.Name)):
            continue
        value = stmt.value
        while isinstance(value, ast.Call) and isinstance(value.func, ast.Attribute) \
                and value.func.attr in _VIEWING:
            value = value.func.value
        if _base(value) in (name, *views.values()) and stmt.targets[0].id != name:
            views[k] = stmt.targets[0].id
    return views


def written_in_place(stmt, name: str) -> bool:
    """Whether ``stmt`` writes into ``name``'s tensor in place: an augmented assignment to
    it or an entry of it, an assignment to an entry, a method (or ``torch.nn.init``-style
    function) whose name ends in ``_`` (not ``requires_grad_``) called on it."""
    for node in ast.walk(stmt):
        if isinstance(node, ast.AugAssign) and _base(node.target) == name:
            return True
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Subscript) and _base(t) == name for t in node.targets):
            return True
        if isinstance(node, ast.Call):
            func = node.func
            attr = func.attr if isinstance(func, ast.Attribute) else \
                func.id if isinstance(func, ast.Name) else ""
            if not attr.endswith("_") or attr.startswith("_") or attr in _NOT_WRITES:
                continue
            on = func.value if isinstance(func, ast.Attribute) else None
            if on is not None and not _is_module(on) and _base(on) == name:
                return True  # x.add_(1), x[0].fill_(0)
            if (on is None or _is_module(on)) and node.args and _base(node.args[0]) == name:
                return True  # torch.nn.init.normal_(x), normal_(x)
    return False


_NOT_WRITES = {"requires_grad_", "detach_", "retain_grad_", "share_memory_"}


def _base(node) -> str | None:
    """``x`` of ``x``, ``x[0]``, ``x[0][1]``, ``x.T[0]`` (what an in-place write reaches)."""
    while isinstance(node, (ast.Subscript, ast.Attribute)) and not (
            isinstance(node, ast.Attribute) and node.attr not in ("T", "mT", "real", "imag")):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def _is_module(node) -> bool:
    """``torch.nn.init``, ``nn.init``, ``torch``: a module whose ``f_(x)`` writes into x."""
    return ast.unparse(node) in ("torch", "init", "nn.init", "torch.nn.init")


def _line_of(source: str, stmt) -> str:
    text = (ast.get_source_segment(source, stmt) or ast.unparse(stmt)).strip()
    return text.splitlines()[0] + (" ..." if "\n" in text else "")


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
    """Why the cell has no output with history, where its lines show it: a tensor the output
    was computed from made to require grad only after it (the two lines, in the order to put
    them); the graph cut between an input that requires grad and the output, by
    ``torch.no_grad()`` or ``.detach()`` (:func:`cut_hint`); the output turned into a list or
    a NumPy array (:func:`left_autograd_hint`)."""
    return _late_grad(source, namespace) or cut_hint(source, namespace) \
        or left_autograd_hint(source, namespace)


def _late_grad(source: str, namespace) -> str | None:
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


_NO_RECORDING = ("no_grad", "inference_mode")
_LEAVES = (".numpy()", ".tolist()", ".item()", "np.", "numpy.")
_COPIES = ("torch.tensor(", "torch.Tensor(", "torch.FloatTensor(")
_SAID = {"np.": "NumPy", "numpy.": "NumPy"}


def cut_hint(source: str, namespace) -> str | None:
    """The cell's output (its last assignment of a float tensor without history) was
    computed from a tensor that requires grad (the cell's, or an earlier cell's), and the
    cell cut the graph between them: the line inside ``with torch.no_grad()`` (or
    ``inference_mode``, ``set_grad_enabled(False)``, after ``torch.set_grad_enabled(False)``),
    or the ``.detach()`` / ``.data`` on a computed value, named with its line and the fix.
    None where the cell shows no such cut (``x.detach()`` of an input: :mod:`.execute`'s
    ``detached_advice`` says it)."""
    flat = _flattened(statements(source))
    ns = namespace
    at = next((k for k in range(len(flat) - 1, -1, -1) if _without_history(
        ns.get(assigned_name(flat[k][0]) or ""))), None)
    if at is None:
        return None
    y = assigned_name(flat[at][0])
    path, source_name = _path_to_grad(flat, at, ns)
    if source_name is None:
        return None
    lead = f"{y} has no autograd history although " + (
        f"the parameters of {source_name} require grad: "
        if isinstance(ns.get(source_name), torch.nn.Module) else f"{source_name} requires grad: ")
    for k in path:  # the output's line first, then back towards the input
        stmt, guard = flat[k]
        text = _line_of(source, stmt)
        if guard is not None:
            outer = _line_of(source, guard)
            return lead + (f"line {stmt.lineno} ({text}) runs under {_guard_name(guard)} "
                           f"(line {guard.lineno}: {outer}), which records no operations. "
                           f"Compute {assigned_name(stmt)} outside it.")
        cut = _detached(stmt.value, ns)
        if cut is not None:
            whole, kept = (ast.get_source_segment(source, cut) or ast.unparse(cut)), \
                _without_cut(source, cut)
            fixed = _unwrapped(text.replace(whole, kept, 1))
            left = next((left for left in _LEAVES if left in fixed), None)
            if left is not None and any(copy in text for copy in _COPIES):
                return None  # copied_hint's: torch.tensor(...) of the values
            if left is not None:
                return lead + (f"line {stmt.lineno} ({text}) takes {whole}, its values "
                               f"without the graph, and {_SAID.get(left, left)} leaves autograd "
                               f"too. Compute {assigned_name(stmt)} with torch operations on "
                               f"{source_name} itself.")
            return lead + (f"line {stmt.lineno} ({text}) takes {whole}, its values without "
                           f"the graph, so what follows is a constant to autograd. Leave out "
                           f"{whole[len(kept):]}: {fixed}")
    for stmt, _ in flat[at + 1:]:  # y.detach_() / y.requires_grad_(False) after it
        if _turns_off(stmt, y):
            return lead + (f"line {stmt.lineno} ({_line_of(source, stmt)}) detaches {y} from "
                           f"its graph. Delete that line.")
    return None


def _flattened(body: list, guard=None) -> list:
    """(statement, the with-statement or ``set_grad_enabled(False)`` call that turns
    recording off around it, or None) for every simple statement, inner blocks opened."""
    out = []
    for stmt in body:
        if isinstance(stmt, (ast.With, ast.AsyncWith)):
            off = next((stmt for item in stmt.items if _stops_recording(item.context_expr)),
                       None)
            out += _flattened(stmt.body, guard if off is None else off)
        elif isinstance(stmt, (ast.For, ast.While, ast.If, ast.Try)):
            for block in (stmt.body, getattr(stmt, "orelse", []), getattr(stmt, "finalbody", [])):
                out += _flattened(block, guard)
        else:
            out.append((stmt, guard))
            if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call) \
                    and ast.unparse(stmt.value.func).endswith("set_grad_enabled"):
                guard = stmt if _stops_recording(stmt.value) else None
    return out


def _stops_recording(expr) -> bool:
    if not isinstance(expr, ast.Call):
        return False
    spelled = ast.unparse(expr.func).rsplit(".", 1)[-1]
    if spelled in _NO_RECORDING:
        return not expr.args or not (isinstance(expr.args[0], ast.Constant)
                                     and expr.args[0].value is False)  # inference_mode(False)
    return spelled == "set_grad_enabled" and bool(expr.args) \
        and isinstance(expr.args[0], ast.Constant) and expr.args[0].value is False


def _guard_name(guard) -> str:
    call = guard.value if isinstance(guard, ast.Expr) else \
        next(i.context_expr for i in guard.items if _stops_recording(i.context_expr))
    return ast.unparse(call)


def _without_history(value) -> bool:
    return isinstance(value, torch.Tensor) and value.is_floating_point() \
        and value.grad_fn is None and not value.requires_grad


def _path_to_grad(flat: list, at: int, ns) -> tuple[list, str | None]:
    """The statements (indices into ``flat``, latest first) through which the assignment at
    ``at`` reads, back to a name bound to a tensor that requires grad or a module with a
    parameter that does (from before the cell, or made in it), and that name; ([], None)
    where none is reached."""
    seen, stack = set(), [(at, [at])]
    while stack:
        k, path = stack.pop(0)
        stmt = flat[k][0]
        if k in seen or not isinstance(stmt, ast.Assign):
            continue
        seen.add(k)
        for name in sorted(names_read(stmt.value)):
            earlier = next((j for j in range(k - 1, -1, -1)
                            if assigned_name(flat[j][0]) == name), None)
            last = earlier is None or not any(assigned_name(flat[j][0]) == name
                                              for j in range(earlier + 1, len(flat)))
            if last and trainable(ns.get(name)):
                return path, name  # the value it read is the one the namespace holds
            if earlier is not None:
                stack.append((earlier, [*path, earlier]))
    return [], None


def _detached(expr, ns):
    """The first ``E.detach()`` or ``E.data`` in ``expr`` whose E is computed (not a name:
    ``x.detach()`` of an input is :mod:`.execute`'s), else None."""
    for node in ast.walk(expr):
        base = node.func.value if isinstance(node, ast.Call) and isinstance(
            node.func, ast.Attribute) and node.func.attr == "detach" and not node.args \
            else node.value if isinstance(node, ast.Attribute) and node.attr == "data" \
            and isinstance(node.ctx, ast.Load) else None
        if base is not None and not isinstance(base, ast.Name):
            return node
    return None


def _without_cut(source: str, node) -> str:
    """``(x**2).detach()`` → ``(x**2)``: the text before the cutting attribute."""
    whole = ast.get_source_segment(source, node) or ast.unparse(node)
    for tail in (".detach()", ".data"):
        if whole.replace(" ", "").endswith(tail):
            return whole[:whole.rindex("." + tail[1:].split("(")[0])].rstrip()
    return whole


def _unwrapped(line: str) -> str:
    """``z = (x**2)`` → ``z = x**2``: a right-hand side's outer parentheses, where the
    statement means the same without them."""
    target, sep, value = line.partition(" = ")
    if sep and value.startswith("(") and value.endswith(")"):
        try:
            if ast.dump(ast.parse(f"{target} = {value[1:-1]}")) == ast.dump(ast.parse(line)):
                return f"{target} = {value[1:-1]}"
        except SyntaxError:
            pass
    return line


def left_autograd_hint(source: str, namespace) -> str | None:
    """The cell's last assignment is a list of numbers or a NumPy array (``.tolist()``,
    ``.numpy()``): it left autograd; keep it a tensor."""
    for stmt in reversed(statements(source)):
        y = assigned_name(stmt)
        if y is None:
            continue
        value = namespace.get(y)
        kind = "NumPy array" if type(value).__name__ == "ndarray" and \
            type(value).__module__ == "numpy" else "list" if isinstance(value, list) \
            and not _holds_tensor(value) else None
        if kind is None:
            return None
        text = _line_of(source, stmt)
        left = [m for m in (".tolist()", ".numpy()", ".detach()", ".cpu()") if m in text]
        kept = stmt.value
        while isinstance(kept, ast.Call) and isinstance(kept.func, ast.Attribute) and \
                f".{kept.func.attr}()" in left:
            kept = kept.func.value
        how = " and ".join(m for m in left if m in (".tolist()", ".numpy()")) or "it"
        if kept is stmt.value:
            fix = f"compute {y} with torch operations"
        elif isinstance(kept, ast.Name) and kept.id == y:
            fix = f"delete line {stmt.lineno}"
        else:
            fix = f"{y} = {ast.get_source_segment(source, kept) or ast.unparse(kept)}"
        return (f"{y} is a {kind} (line {stmt.lineno}: {text}), not a tensor: {how} "
                f"leave{'s' if how != 'it' and ' and ' not in how else ''} autograd, as "
                f".item() and float() do. Keep it a tensor ({fix}) and vjp_magic shows its "
                f"derivatives.")
    return None


def _holds_tensor(value) -> bool:
    return any(isinstance(v, torch.Tensor) or isinstance(v, (list, tuple)) and _holds_tensor(v)
               for v in value)


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
    or another copying constructor (:data:`_CONSTRUCTORS`: the values, without the graph): the
    line, and the computation that keeps it (:func:`_kept`)."""
    ns = namespace
    for stmt in reversed(statements(source)):
        y = assigned_name(stmt)
        if y is None:
            continue
        call = stmt.value
        if not (isinstance(ns.get(y), torch.Tensor) and isinstance(call, ast.Call)
                and ast.unparse(call.func) in _CONSTRUCTORS and call.args):
            continue
        if not any(isinstance(ns.get(x), torch.Tensor) and ns[x].requires_grad
                   for x in names_read(call)):
            continue
        arg, func = call.args[0], ast.unparse(call.func)
        written = ast.get_source_segment(source, arg) or ast.unparse(arg)
        plain = _unconverted(written)  # a.tolist(), a.detach().numpy(), [v.item() for v in
        if not re.search(r"\b(np|numpy)\.", plain):  # a]: the tensors, not a list or a copy
            written = plain
        keep = _kept(source, call, written)
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


# constructors that copy the values they are given into a new tensor, without the graph
_CONSTRUCTORS = ("torch.tensor", "torch.Tensor", "torch.FloatTensor", "torch.nested.nested_tensor")


def _kept(source: str, call: ast.Call, written: str) -> str:
    """What keeps the graph of a copying constructor's argument (``written``, as the cell
    wrote it, conversions off): the tensor itself, ``torch.stack`` of a list, or for
    ``torch.nested.nested_tensor`` its twin that keeps each one's graph
    (``torch.nested.as_nested_tensor``, the layout, dtype and device kept)."""
    if ast.unparse(call.func) == "torch.nested.nested_tensor":
        kept = "".join(f", {kw.arg}={ast.get_source_segment(source, kw.value)}"
                       for kw in call.keywords if kw.arg in ("dtype", "device", "layout"))
        return f"torch.nested.as_nested_tensor({written}{kept})"
    listed = isinstance(call.args[0], (ast.List, ast.ListComp, ast.Tuple))
    return f"torch.stack({written})" if listed else written


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
