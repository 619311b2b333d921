"""The code beneath a cell whose own ``backward`` freed the output's graph.

That code differentiates the output again, which PyTorch refuses once the cell's backward has
freed the graph (``retain_graph`` not given). Where the cell computed the output in one line
from its inputs alone (``y = x**2``: no other tensor with a graph, no module, no function of
the user's, no random draw in the record), that line comes first, so that the pasted code
builds the graph again and gives the numbers shown, unless a later line changes what it reads
(``w += 1``, ``k = 3.0``, ``import math as k``: each name's value now is compared with what
the record's calls on that line saw); otherwise two comment lines say what to do (pass
``retain_graph=True`` to the cell's backward and run it again). A tensor the graph saved and
the cell changed in place since (``w += 1`` after ``y = x*w``) makes any backward through it
fail: two comment lines say so.
"""
from __future__ import annotations

import ast
import linecache
import math
import types

import torch

from ..core.graph_facts import unpack_hooked
from ..core.tagging import walk_graph
from ..run.grad_advice import assigned_name, names_read, statements
from ..run.passes import node_key, saves_tensors


CHECKED_NODES = 512  # graphs up to this many nodes are looked at for values changed in place


def freed_lines(result, log, record, namespace) -> tuple[str, ...]:
    """The lines to put before the code beneath ``result`` (none where the graph is whole)."""
    output = result.output
    if not isinstance(output, torch.Tensor) or output.grad_fn is None:
        return ()
    changed = _changed_in_place(output)
    if changed:
        y = result.output_name
        return (f"# a tensor {y}'s graph saved was changed in place after {y}",
                f"# was computed: compute {y} again first (from the values it had)")
    if log is None or not getattr(log, "freed_by", None):
        return ()
    call = next((log.freed_by[node_key(n)] for n in walk_graph(output)
                 if node_key(n) in log.freed_by and saves_tensors(n)), None)
    if call is None:
        return ()
    line = log.lines.get(call)
    again = _recomputed(result, log, record, namespace or {}, line)
    y = result.output_name
    if again is not None:
        return (f"# {y} again: the cell's backward freed its graph", again)
    where = f" (line {line})" if line else ""
    return (f"# the cell's backward{where} freed {y}'s graph: give it",
            "# retain_graph=True and run the cell again, then this:")


def _recomputed(result, log, record, namespace, line: int | None) -> str | None:
    """The cell's one line ``y = …`` that made the output from its inputs alone, else None."""
    y = result.output_name
    source = "".join(linecache.getlines(log.filename)) if log.filename else ""
    if not y.isidentifier() or not source or namespace.get(y) is not result.output:
        return None
    body = statements(source)
    made = [node for node in body if assigned_name(node) == y
            and (line is None or node.lineno < line)]
    if not made or made[-1].lineno != made[-1].end_lineno:
        return None
    node = made[-1]
    reads = names_read(node.value)
    if any(not _constant_or_input(name, namespace, result) for name in reads) \
            or not _unchanged_after(body, node, reads | {y}):  # y *= x after it: not y
        return None
    if not _drew_nothing(record, node.lineno) \
            or not _as_the_record_saw(record, node, reads, namespace):
        return None
    return ast.get_source_segment(source, node)


def _as_the_record_saw(record, node, reads: set[str], namespace) -> bool:
    """Whether each name ``node`` reads holds now what the record's calls on its line saw:
    the same tensor at the same version, or a number among their arguments (as often as
    the line passes it); a module only as the owner of an attribute (``torch.sin``). The
    namespace is compared, not the cell's text: an import, a ``match`` capture or ``exec``
    rebinds a name as surely as an assignment does."""
    calls = [c for c in record.calls
             if c.site is not None and c.site[3] and c.site[2] == node.lineno]
    if not calls:
        return False
    seen = {key: version for c in calls for key, (version, _) in c.seen.items()}
    given = [a for c in calls for a in _scalars((c.args, c.kwargs))]
    owners = {id(n.value) for n in ast.walk(node) if isinstance(n, ast.Attribute)}
    passed = _literals(node.value)
    for part in ast.walk(node.value):
        if not isinstance(part, ast.Name) or part.id not in reads:
            continue
        value = namespace.get(part.id)
        if isinstance(value, types.ModuleType):
            if id(part) not in owners:
                return False
        elif isinstance(value, torch.Tensor):
            if seen.get(id(value)) != value._version:
                return False
        elif _is_number(value):
            passed.append(value)
        else:
            return False
    return all(sum(_same(a, v) for a in given) >= sum(_same(p, v) for p in passed)
               for v in passed)


def _is_number(value) -> bool:
    return isinstance(value, (int, float, complex)) and not isinstance(value, torch.Tensor)


def _same(a, b) -> bool:
    return type(a) is type(b) and a == b


def _literals(expression) -> list:
    """The numbers written in ``expression`` (``-2.0`` as one number, as Python passes it)."""
    found, signed = [], set()
    for n in ast.walk(expression):
        if isinstance(n, ast.UnaryOp) and isinstance(n.op, (ast.USub, ast.UAdd)) \
                and isinstance(n.operand, ast.Constant) and _is_number(n.operand.value):
            signed.add(id(n.operand))
            found.append(-n.operand.value if isinstance(n.op, ast.USub) else n.operand.value)
        elif isinstance(n, ast.Constant) and _is_number(n.value) and id(n) not in signed:
            found.append(n.value)
    return found


def _scalars(value, depth: int = 0) -> list:
    """The numbers (and bools) among a call's arguments, nested lists and dicts included."""
    if _is_number(value):
        return [value]
    if depth < 4 and isinstance(value, (list, tuple)):
        return [s for item in value for s in _scalars(item, depth + 1)]
    if depth < 4 and isinstance(value, dict):
        return [s for item in value.values() for s in _scalars(item, depth + 1)]
    return []


def _changed_in_place(output: torch.Tensor) -> bool:
    """Whether a tensor the output's graph saved was changed in place since (a backward
    through it would raise): read off the saved tensors, no pass (small graphs only)."""
    nodes = []
    for node in walk_graph(output):
        nodes.append(node)
        if len(nodes) > CHECKED_NODES:
            return False
    for node in nodes:
        for attr in _saved_names(type(node), node):
            if unpack_hooked(getattr(node, "_raw" + attr, None)):
                continue  # unpacking would run the user's hook (a checkpoint recomputes)
            try:
                getattr(node, attr)
            except RuntimeError as error:
                if "modified by an inplace operation" in str(error):
                    return True
    return False


_SAVED: dict = {}  # node type → the names of the tensors it saves (read once per type)


def _saved_names(kind, node) -> tuple[str, ...]:
    """The saved attributes of ``kind`` that hold tensors (or lists of them): those with a
    raw ``SavedVariable`` beside them (``_raw_saved_self``), the only ones whose reading can
    find a tensor changed in place; not the sizes, strides and scalars also saved."""
    if kind not in _SAVED:
        names = dir(node)
        _SAVED[kind] = tuple(a for a in names
                             if a.startswith("_saved_") and "_raw" + a in names)
    return _SAVED[kind]


def _unchanged_after(body, node, names: set[str]) -> bool:
    """No statement after ``node`` rebinds, augments, deletes, indexes into or calls an
    in-place method (``w.add_(1)``) on one of ``names``."""
    for later in body:
        if later.lineno <= node.end_lineno:
            continue
        for part in ast.walk(later):
            if isinstance(part, ast.Name) and part.id in names \
                    and isinstance(part.ctx, (ast.Store, ast.Del)):
                return False
            if isinstance(part, (ast.Subscript, ast.Attribute)) \
                    and isinstance(part.ctx, (ast.Store, ast.Del)) \
                    and isinstance(part.value, ast.Name) and part.value.id in names:
                return False
            if isinstance(part, ast.Call) and isinstance(part.func, ast.Attribute) \
                    and part.func.attr.endswith("_") and not part.func.attr.endswith("__") \
                    and isinstance(part.func.value, ast.Name) and part.func.value.id in names \
                    and part.func.attr not in ("requires_grad_", "retain_grad"):
                return False
    return True


def _constant_or_input(name: str, namespace, result) -> bool:
    """An input bound to its tensor still, torch or math, or a value with no graph."""
    if name in result.inputs:  # (a non-leaf's own graph was freed too: not built again)
        tensor = result.inputs[name].tensor
        return namespace.get(name) is tensor and tensor.is_leaf
    value = namespace.get(name)
    if isinstance(value, types.ModuleType):
        return value in (torch, math)
    if isinstance(value, torch.Tensor):
        return not value.requires_grad
    return isinstance(value, (int, float, complex, bool))


def _drew_nothing(record, line: int) -> bool:
    """The record shows no call on ``line`` of the cell that may draw random numbers (no
    record, or an incomplete one: unknown, so not)."""
    if record is None or getattr(record, "failed", None) is not None:
        return False
    for call in record.calls:
        site = call.site
        if site is not None and site[3] and site[2] == line and call.rng is not None:
            return False
    return True


__all__ = ["freed_lines"]
