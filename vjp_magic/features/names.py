"""The names the user's namespace binds, so that nothing shown takes one of them (no flag:
always, at both orders, in exam mode too).

An expression output (``%jacobian x**2``, a cell ending in ``x**2``, ``--of y.sum()``) is
named ``y`` in the formulas and in the code beneath it, ``out`` where ``y`` is bound, and so
on: pasted into the next cell, that code never overwrites one of the user's values
(:func:`vjp_magic.render.codegen.output_symbol`). This feature hands the names to the view
(``View.names``, under which the view builds its text); the pipeline runs every feature under
:func:`naming`, so the text they build takes the names too. It hands over, too, what the
view learns from the output's graph while the result keeps it (:mod:`.render.graph_facts`).
"""
from __future__ import annotations

import ast
import functools
from contextlib import contextmanager, nullcontext

from ..core.tagging import is_visible_name
from ..core.validation import spelled_for
from ..render import graph_facts
from ..render.codegen import identifiers
from ..render.codegen import naming as _naming
from ..run.choose import Subject
from . import Added, Asked

flags = ()
orders = (1, 2)
replays_record = False
in_exam = True  # r.code is there in exam mode too


def cell_names(subject: Subject) -> frozenset:
    """The visible names of the subject's namespace (none from plain Python)."""
    namespace = getattr(subject, "namespace", None)
    if not namespace:
        return frozenset()
    return frozenset(name for name in namespace if is_visible_name(name))


# Letters the maths may take from the notebook's own function: not i, j, l, m, n (points),
# k (components), p (a parameter), u, v, w (a colour's vector, v itself, a weight), x, y, z.
_FUNCTION_LETTERS = frozenset("abcdefghoqrst")


def applied_letter(subject: Subject, result) -> str | None:
    """The notebook's one-letter function the output applies, ``f`` for ``y = f(x)`` (or
    ``%jacobian f(x)``, or a cell ending in ``f(x)``) with ``f`` a function of the notebook:
    the maths calls the map by the student's own letter, not another one."""
    namespace = getattr(subject, "namespace", None)
    if not namespace:
        return None
    node = _output_expression(subject, result.output_name)
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
        return None
    letter = node.func.id
    value = namespace.get(letter)
    return letter if letter in _FUNCTION_LETTERS and callable(value) \
        and not isinstance(value, type) else None


def _output_expression(subject: Subject, output_name: str) -> ast.expr | None:
    """The expression the output is: ``output_name`` itself where it is one, else what the
    cell last assigned to that name (None where neither can be read)."""
    try:
        if not output_name.isidentifier():
            return _parsed(output_name.strip(), "eval").body
        source = getattr(getattr(subject, "run", None), "source", None)
        cell = _parsed(source, "exec") if isinstance(source, str) else None
    except SyntaxError:
        return None
    assigned = [node.value for node in (cell.body if cell else ())
                if isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name) and node.targets[0].id == output_name]
    return assigned[-1] if assigned else None


@functools.lru_cache(maxsize=16)
def _parsed(source: str, mode: str) -> ast.AST:
    """``source`` parsed once (the naming and the view's names read one cell's tree; a cell
    run again, its tree again); the trees are only read."""
    return ast.parse(source, mode=mode)


def naming(subject: Subject, result=None):
    """A context in which text for ``subject``'s ``result`` is built with its names taken,
    the namespace's and the result's own (the pipeline's, around every feature), and the
    notebook's function the output applies as the maths' letter (:func:`applied_letter`),
    and the result's parameters spelled as the view spells them (``spelled_for``)."""
    names = cell_names(subject)
    if result is None:
        return _naming(names, None) if names else nullcontext()
    names |= identifiers([result.output_name, *result.inputs])
    return _spelled_naming(names, applied_letter(subject, result),
                           {n: item.tensor for n, item in result.inputs.items()})


@contextmanager
def _spelled_naming(names: frozenset, applied: str | None, inputs: dict):
    with spelled_for(inputs), _naming(names, applied):
        yield


def add(result, request: Asked, subject: Subject) -> Added:
    names = cell_names(subject)
    view = {"names": names} if names else {}
    applied = applied_letter(subject, result)
    if applied:
        view["applied"] = applied
    return Added(view={**view, **graph_facts.facts(result)})  # (read while the graph is kept)
