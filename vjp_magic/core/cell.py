"""Cell parsing: which targets a cell binds and whether it ends in an expression; and the
cell rewritten so that its subscript and attribute targets record their values as it assigns
them (:func:`capture_targets`).

Pure ``ast`` work on Python source (IPython syntax is translated by ``run/execute.py``
before it gets here).
"""
from __future__ import annotations

import ast
import copy
from dataclasses import dataclass, field


@dataclass
class ParsedCell:
    """A cell split into the statements to execute and an optional final expression."""

    body: ast.Module
    final_expr: ast.Expression | None
    final_source: str | None
    # Every bound target in binding order: names, and the source of subscript and attribute
    # targets (``d['y']``, ``net.out``), as ``ast.unparse`` spells them.
    targets: list[str] = field(default_factory=list)
    # Names the cell reads, in order of first use (to name its inputs in messages).
    loaded_names: list[str] = field(default_factory=list)


class _Targets(ast.NodeVisitor):
    """Collects the top-level bound targets (not those inside defs/classes), names and
    subscripts and attributes alike, ordered by their last binding."""

    def __init__(self) -> None:
        self.targets: list[str] = []

    def _add(self, source: str) -> None:
        if source in self.targets:
            self.targets.remove(source)
        self.targets.append(source)

    def _targets(self, target: ast.AST) -> None:
        if isinstance(target, ast.Name):
            self._add(target.id)
        elif isinstance(target, (ast.Subscript, ast.Attribute)):
            self._add(ast.unparse(target))
        elif isinstance(target, (ast.Tuple, ast.List)):
            for elt in target.elts:
                self._targets(elt)
        elif isinstance(target, ast.Starred):
            self._targets(target.value)

    def visit_Assign(self, node: ast.Assign) -> None:
        self.generic_visit(node)
        for target in node.targets:
            self._targets(target)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        self.generic_visit(node)
        if node.value is not None:
            self._targets(node.target)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        self.generic_visit(node)
        self._targets(node.target)

    def visit_NamedExpr(self, node: ast.NamedExpr) -> None:
        self.generic_visit(node)
        self._targets(node.target)

    def visit_For(self, node: ast.For) -> None:
        self._targets(node.target)
        self.generic_visit(node)

    visit_AsyncFor = visit_For

    def visit_With(self, node: ast.With) -> None:
        for item in node.items:
            if item.optional_vars is not None:
                self._targets(item.optional_vars)
        self.generic_visit(node)

    visit_AsyncWith = visit_With

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._add(node.name)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self._add(node.name)

    def visit_Lambda(self, node: ast.Lambda) -> None:
        return

    def visit_ListComp(self, node: ast.AST) -> None:
        return

    visit_SetComp = visit_DictComp = visit_GeneratorExp = visit_ListComp


def _loaded_names(tree: ast.AST) -> list[str]:
    """Names read anywhere in ``tree``, in source order, each once."""
    loads = [n for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)]
    loads.sort(key=lambda n: (n.lineno, n.col_offset))
    return list(dict.fromkeys(n.id for n in loads))


# What parse_cell reads off a source text besides its tree (targets, names read, the final
# expression's source), by the text: a cell run again is parsed again (a fresh tree, which
# IPython's AST transformers may change) but not read again. Bounded, oldest dropped first.
_READ: dict[str, tuple] = {}
_READ_MAX = 64


def parse_cell(source: str, filename: str = "<cell>") -> ParsedCell:
    """Parse ``source``; a trailing expression statement is split off so its value can be kept.

    Raises ``SyntaxError`` exactly as Python would for invalid source.
    """
    tree = ast.parse(source, filename=filename, mode="exec")
    statements = list(tree.body)
    final_expr = None
    if statements and isinstance(statements[-1], ast.Expr):
        last = statements.pop()
        final_expr = ast.Expression(body=last.value)
        ast.copy_location(final_expr, last)
    read = _READ.get(source)
    if read is None:
        read = _read(source, tree, final_expr)
        while len(_READ) >= _READ_MAX:
            del _READ[next(iter(_READ))]
        _READ[source] = read
    targets, loaded, final_source = read
    return ParsedCell(
        body=ast.Module(body=statements, type_ignores=[]),
        final_expr=final_expr,
        final_source=final_source,
        targets=list(targets),
        loaded_names=list(loaded),
    )


def _read(source: str, tree: ast.Module, final_expr: ast.Expression | None) -> tuple:
    """(targets, names read, the final expression's source) of a freshly parsed cell."""
    visitor = _Targets()
    visitor.visit(tree)
    final_source = None if final_expr is None else \
        ast.get_source_segment(source, final_expr.body)
    return tuple(visitor.targets), tuple(_loaded_names(tree)), final_source


# -- the targets' values, recorded as the cell assigns them -------------------------------------
# While a cell runs, its statements that assign to subscripts and attributes (``d[k] = v``,
# ``net.out = v``, ``d[k] += v``, ``a, d[k] = pair``) are rewritten so that each part of a target
# is evaluated once, in Python's own order, into a slot of one hidden dict (``CAPTURE_NAME``); the
# store itself is the cell's own, and afterwards the dict holds, for each target's source,
# the values along the target (``d``, ``d['y']``, ..., then the value stored). Nothing of the
# user's code is evaluated again to learn what a target holds.
CAPTURE_NAME = "__vjp_cell__"


def capture_targets(module: ast.Module) -> ast.Module:
    """A copy of ``module`` whose subscript and attribute targets record their values into
    ``CAPTURE_NAME`` (a dict the caller binds while the code runs): ``{source: ((values along
    the target..., value stored), {level: key})}``, the keys being those that call something
    (``d[next(it)]``). Line numbers are the cell's own. A module that stores into no
    subscript or attribute is returned as it is (nothing to rewrite, nothing copied)."""
    if not _stores_into_parts(module):
        return module
    return ast.fix_missing_locations(_Capture().visit(copy.deepcopy(module)))


def _stores_into_parts(module: ast.AST) -> bool:
    """Whether any subscript or attribute is a target anywhere in ``module`` (its stores are
    the only statements :class:`_Capture` rewrites)."""
    return any(isinstance(n, (ast.Subscript, ast.Attribute)) and isinstance(n.ctx, ast.Store)
               for n in ast.walk(module))


def _calls(node: ast.AST) -> bool:
    """Whether evaluating ``node`` calls something (or binds a name)."""
    return any(isinstance(n, (ast.Call, ast.Await, ast.NamedExpr)) for n in ast.walk(node))


def _complex(target: ast.AST) -> bool:
    """Whether a target is, or holds, a subscript or an attribute."""
    return any(isinstance(n, (ast.Subscript, ast.Attribute)) for n in ast.walk(target))


class _Capture(ast.NodeTransformer):
    """Rewrites the top-level statements that bind subscripts or attributes (not inside
    function or class bodies, whose statements do not run as the cell's)."""

    def __init__(self) -> None:
        self.slots = 0

    def slot(self, at: ast.AST, ctx=ast.Load) -> ast.Subscript:
        """A fresh slot of the hidden dict: ``__vjp_cell__[n]``."""
        self.slots += 1
        node = ast.Subscript(value=ast.Name(id=CAPTURE_NAME, ctx=ast.Load()),
                             slice=ast.Constant(self.slots), ctx=ctx())
        return _at(node, at)

    def visit_FunctionDef(self, node):
        return node

    visit_AsyncFunctionDef = visit_ClassDef = visit_FunctionDef

    def visit_Assign(self, node: ast.Assign):
        if not any(_complex(t) for t in node.targets):
            return node
        value = self.slot(node.value)
        statements = [_at(ast.Assign(targets=[_store(value)], value=node.value), node)]
        for target in node.targets:
            statements += self.store(target, value, node)
        return statements

    def visit_AnnAssign(self, node: ast.AnnAssign):
        if node.value is None or not _complex(node.target):
            return node
        value = self.slot(node.value)
        first = _at(ast.Assign(targets=[_store(value)], value=node.value), node)
        return [first] + self.store(node.target, value, node, annotation=node.annotation)

    def visit_AugAssign(self, node: ast.AugAssign):
        if not isinstance(node.target, (ast.Subscript, ast.Attribute)):
            return node
        keys: dict = {}
        base, chain, statements = self.chain(node.target.value, keys)
        key = None
        if isinstance(node.target, ast.Subscript):
            key, hoisted = self.hoist(node.target.slice)
            statements += hoisted
            if isinstance(key, ast.Subscript) and _calls(node.target.slice):  # one slot
                keys[len(chain)] = key
        target = _part(node.target, base, key)
        current = self.slot(node.target)
        statements.append(_at(ast.Assign(targets=[_store(current)], value=target), node.target))
        statements.append(_at(ast.AugAssign(target=_store(current), op=node.op,
                                            value=node.value), node))
        statements.append(_at(ast.Assign(targets=[_part(node.target, base, key, ast.Store)],
                                         value=current), node))
        return statements + [self.record(node.target, chain + [current], keys, node)]

    def visit_For(self, node):
        node = self.generic_visit(node)
        if _complex(node.target):
            value = self.slot(node.target)
            node.body = self.store(node.target, value, node.target) + node.body
            node.target = _store(value)
        return node

    visit_AsyncFor = visit_For

    def visit_With(self, node):
        node = self.generic_visit(node)
        for at, item in reversed(list(enumerate(node.items))):
            if item.optional_vars is not None and _complex(item.optional_vars):
                # ``with a as t1, b as t2`` is ``with a as t1: with b as t2``: t1 is bound
                # before b is entered, so a complex target splits the statement there
                inner = type(node)(items=node.items[at + 1:], body=node.body) \
                    if at + 1 < len(node.items) else None
                value = self.slot(item.optional_vars)
                stores = self.store(item.optional_vars, value, item.optional_vars)
                node.body = stores + ([_at(inner, node)] if inner else node.body)
                node.items = node.items[:at] + [ast.withitem(item.context_expr, _store(value))]
        return node

    visit_AsyncWith = visit_With

    def store(self, target, value, at, annotation=None) -> list[ast.stmt]:
        """Statements that store ``value`` (a slot) into ``target`` as Python would, and
        record what a subscript or attribute target held."""
        if isinstance(target, (ast.Tuple, ast.List)) and _complex(target):
            slots = [self.slot(e.value if isinstance(e, ast.Starred) else e) for e in target.elts]
            elts = [_at(ast.Starred(value=_store(s), ctx=ast.Store()), e)
                    if isinstance(e, ast.Starred) else _store(s)
                    for s, e in zip(slots, target.elts)]
            unpack = _at(ast.Assign(targets=[_at(type(target)(elts=elts, ctx=ast.Store()),
                                                 target)], value=_load(value)), at)
            statements = [unpack]
            for slot, element in zip(slots, target.elts):
                element = element.value if isinstance(element, ast.Starred) else element
                statements += self.store(element, slot, element)
            return statements
        if not isinstance(target, (ast.Subscript, ast.Attribute)):
            return [_at(ast.Assign(targets=[target], value=_load(value)), at)]
        keys: dict = {}
        base, chain, statements = self.chain(target.value, keys)
        key = self.key(target, len(chain), keys, statements)
        stored = _part(target, base, key, ast.Store)
        statements.append(_at(ast.Assign(targets=[stored], value=_load(value))
                              if annotation is None else
                              ast.AnnAssign(target=stored, annotation=annotation,
                                            value=_load(value), simple=0), at))
        return statements + [self.record(target, chain + [value], keys, at)]

    def chain(self, node: ast.expr, keys: dict):
        """Each part along a target (``d``, then ``d['y']``, ...) evaluated once into a slot:
        (the last slot, every slot, the statements); keys that call something go to ``keys``
        (see :meth:`key`)."""
        if isinstance(node, (ast.Subscript, ast.Attribute)):
            base, slots, statements = self.chain(node.value, keys)
            key = self.key(node, len(slots), keys, statements)
            value = _part(node, base, key)
        else:
            slots, statements, value = [], [], node
        slot = self.slot(node)
        statements.append(_at(ast.Assign(targets=[_store(slot)], value=value), node))
        return slot, slots + [slot], statements

    def key(self, node: ast.expr, level: int, keys: dict, statements: list):
        """The key of ``node`` (a subscript at ``level`` along its target; None for an
        attribute). A key that calls something (``d[next(it)]``) is evaluated into a slot,
        kept in ``keys`` by its level, so that the target can be named by the key it used."""
        if not isinstance(node, ast.Subscript):
            return None
        if isinstance(node.slice, ast.Slice) or not _calls(node.slice):
            return node.slice
        slot = keys[level] = self.slot(node.slice)
        statements.append(_at(ast.Assign(targets=[_store(slot)], value=node.slice), node.slice))
        return _load(slot)

    def hoist(self, key: ast.expr):
        """A subscript's key evaluated once into slots (a slice's bounds, a tuple's items),
        for ``d[k] += v``, which reads and then writes ``d[k]``: (the key, the statements)."""
        if isinstance(key, ast.Slice):
            statements, parts = [], {}
            for name in ("lower", "upper", "step"):
                part = getattr(key, name)
                if part is not None:
                    hoisted, more = self.hoist(part)
                    statements, parts[name] = statements + more, hoisted
            return _at(ast.Slice(**parts), key), statements
        if isinstance(key, ast.Tuple) and any(isinstance(e, ast.Slice) for e in key.elts):
            elts, statements = [], []
            for element in key.elts:
                hoisted, more = self.hoist(element)
                elts, statements = elts + [hoisted], statements + more
            return _at(ast.Tuple(elts=elts, ctx=ast.Load()), key), statements
        slot = self.slot(key)
        return _load(slot), [_at(ast.Assign(targets=[_store(slot)], value=key), key)]

    def record(self, target, slots, keys: dict, at) -> ast.stmt:
        """``__vjp_cell__['d[k]'] = ((d, ..., value), {level: key})``: what the target held,
        by its source, and the keys that called something, by their level along it."""
        entry = ast.Subscript(value=ast.Name(id=CAPTURE_NAME, ctx=ast.Load()),
                              slice=ast.Constant(ast.unparse(target)), ctx=ast.Store())
        values = ast.Tuple(elts=[_load(s) for s in slots], ctx=ast.Load())
        called = ast.Dict(keys=[ast.Constant(level) for level in keys],
                          values=[_load(slot) for slot in keys.values()])
        return _at(ast.Assign(targets=[entry], value=ast.Tuple(elts=[values, called],
                                                               ctx=ast.Load())), at)


def _at(node: ast.AST, at: ast.AST) -> ast.AST:
    """``node`` placed at ``at``'s lines and columns, with all its new parts."""
    ast.copy_location(node, at)
    for child in ast.walk(node):
        if not hasattr(child, "lineno") and "lineno" in child._attributes:
            ast.copy_location(child, at)
    return node


def _store(slot: ast.Subscript) -> ast.Subscript:
    return ast.Subscript(value=copy.deepcopy(slot.value), slice=copy.deepcopy(slot.slice),
                         ctx=ast.Store(), **_position(slot))


def _load(slot: ast.Subscript) -> ast.Subscript:
    return ast.Subscript(value=copy.deepcopy(slot.value), slice=copy.deepcopy(slot.slice),
                         ctx=ast.Load(), **_position(slot))


def _position(node: ast.AST) -> dict:
    return {k: getattr(node, k) for k in ("lineno", "col_offset", "end_lineno",
                                          "end_col_offset") if hasattr(node, k)}


def _part(node, base, key, ctx=ast.Load) -> ast.expr:
    """``node`` (``c[k]`` or ``c.a``) with its container read from the slot ``base``."""
    if isinstance(node, ast.Subscript):
        return _at(ast.Subscript(value=_load(base), slice=copy.deepcopy(key), ctx=ctx()), node)
    return _at(ast.Attribute(value=_load(base), attr=node.attr, ctx=ctx()), node)
