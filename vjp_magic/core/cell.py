"""Cell parsing: which targets a cell binds and whether it ends in an expression.

Pure ``ast`` work on Python source (IPython syntax is translated by ``run/execute.py``
before it gets here).
"""
from __future__ import annotations

import ast
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


def parse_cell(source: str, filename: str = "<cell>") -> ParsedCell:
    """Parse ``source``; a trailing expression statement is split off so its value can be kept.

    Raises ``SyntaxError`` exactly as Python would for invalid source.
    """
    tree = ast.parse(source, filename=filename, mode="exec")
    statements = list(tree.body)
    final_expr = final_source = None
    if statements and isinstance(statements[-1], ast.Expr):
        last = statements.pop()
        final_expr = ast.Expression(body=last.value)
        ast.copy_location(final_expr, last)
        final_source = ast.get_source_segment(source, last.value)
    body = ast.Module(body=statements, type_ignores=[])
    visitor = _Targets()
    visitor.visit(tree)
    return ParsedCell(
        body=body,
        final_expr=final_expr,
        final_source=final_source,
        targets=visitor.targets,
        loaded_names=_loaded_names(tree),
    )
