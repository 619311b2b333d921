"""The one code generator: the one-hot component loop, names as expressions, ``r.code``.

Everything that writes PyTorch source for a reader goes through here: the short loop shown
beneath a result (as short as the tutorial's own), ``r.code`` (the careful version, below;
an input computed by compressed passes gets its coloured passes from :mod:`.sparse_code`),
and the coaching's corrected code. ``component_loop`` picks the loop letters, v's index and
the loop header once, so the three never disagree.

``r.code`` is written in the tutorial's style — ``y.backward(gradient=v, retain_graph=True)``
with one-hot ``v`` per component, ``x.grad`` zeroed between components — and, run in a
namespace holding the cell's variables, defines ``d_<name>`` equal to ``r.derivatives[name]``.
It saves every input's ``.grad`` first and restores it at the end, passes ``inputs=[...]``
so no other tensor's ``.grad`` changes, and keeps the graph (``retain_graph=True``). Like
the tutorial's code it also binds its loop helpers (``v``, ``k`` or ``i, j``, ``saved_grad``).
"""
from __future__ import annotations

import ast
import functools
import keyword
import math
import re
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from ..core.errors import unreached
from ..core.validation import parameter_expression
from .codelines import CODE_WIDTH
from .graph_facts import names_inputs, sparse_grad

_ONE_AXIS = "k"
_AXES = ("i", "j", "l", "m", "n", "p", "q")


# -- names ----------------------------------------------------------------------------------
def identifiers(sources: Iterable[str]) -> set[str]:
    """The Python names these sources use (a source that does not parse: its words)."""
    found: set[str] = set()
    for source in sources:
        if source.isidentifier():  # (most names: no parse)
            found.add(source)
        else:
            found.update(_expression_names(source))
    return found


@functools.lru_cache(maxsize=256)
def _expression_names(source: str) -> frozenset[str]:
    """The names one source uses (parameter names, ``model.0.weight``: parsed once, not
    every cell)."""
    try:
        tree = ast.parse(source, mode="eval")
    except SyntaxError:
        return frozenset(re.findall(r"[^\W\d]\w*", source))
    return frozenset(node.id for node in ast.walk(tree) if isinstance(node, ast.Name))


def source_names(source: str) -> set[str]:
    """The names a cell's source binds or reads in the notebook's namespace (every word of it
    where it does not parse): code pasted after the cell must not bind one of them. A name
    local to a comprehension, a lambda or a function (``i`` of ``[x**i for i in ...]``) is
    none: the notebook never sees it."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return set(re.findall(r"[^\W\d]\w*", source))
    visitor = _ModuleNames()
    visitor.visit(tree)
    return visitor.found


class _ModuleNames(ast.NodeVisitor):
    """The names of a module's own scope (:func:`source_names`)."""

    def __init__(self):
        self.found: set[str] = set()
        self.local: list[set[str]] = []  # the names of the scopes entered

    def visit_Name(self, node):
        if not any(node.id in scope for scope in self.local):
            self.found.add(node.id)

    def visit_alias(self, node):
        if not self.local:
            self.found.add((node.asname or node.name).split(".")[0])

    def _scoped(self, names: set[str], nodes):
        self.local.append(names)
        for node in nodes:
            self.visit(node)
        self.local.pop()

    def _visit_comprehension(self, node):
        targets = {n.id for g in node.generators for n in ast.walk(g.target)
                   if isinstance(n, ast.Name)}
        self._scoped(targets, [*node.generators, node.elt] if hasattr(node, "elt")
                     else [*node.generators, node.key, node.value])

    visit_ListComp = visit_SetComp = visit_GeneratorExp = visit_DictComp = \
        _visit_comprehension

    def visit_Lambda(self, node):
        self._scoped({a.arg for a in ast.walk(node.args) if isinstance(a, ast.arg)},
                     [node.body])

    def _visit_def(self, node):
        if not self.local:
            self.found.add(node.name)
        args = getattr(node, "args", None)
        outer = [*node.decorator_list, *getattr(node, "bases", []),
                 *(args.defaults if args else []), *(d for d in (args.kw_defaults if args
                                                                  else []) if d is not None)]
        for child in outer:
            self.visit(child)
        local = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)
                 and isinstance(n.ctx, ast.Store)}
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            local |= {a.arg for a in ast.walk(node.args) if isinstance(a, ast.arg)}
        self._scoped(local, node.body)

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _visit_def


def fresh(base: str, taken: set[str]) -> str:
    """``base``, else ``base2``, ``base3``, …: the first not in ``taken`` (then taken)."""
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}{n}"
    taken.add(name)
    return name


def expression(source: str, result_name: str | None = None) -> str:
    """A name or expression that ``.grad`` / ``.backward(...)`` can follow as written:
    ``x`` and ``layer.weight`` stay, ``x.T @ w`` becomes ``(x.T @ w)``, and a module's
    parameter as ``named_parameters()`` spells it, ``mlp.0.weight``, is ``mlp[0].weight``;
    in code (``result_name``: the name it reads the result by, ``_``), a name that is no Python
    (``0.weight``: a module given from Python has no name of its own) is read off the
    result, ``_.inputs['0.weight'].tensor``; in maths and prose it is ``(0.weight)``."""
    if _attribute_path(source):  # λ needs no parentheses either: any Python identifier
        return source
    spelled = parameter_expression(source)
    spelled = spelled if spelled != source else f"({source})"
    if result_name is None:
        return spelled
    try:
        compile(spelled, "<expression>", "eval")
    except SyntaxError:
        return f"{result_name}.inputs[{source!r}].tensor"
    return spelled


def reads_result(code: str, result_name: str = "_") -> bool:
    """Whether ``code`` reads the result named ``result_name`` (``_.inputs[...]``, ...)."""
    return re.search(rf"(?<![\w.]){re.escape(result_name)}\.(inputs|gradients|tangents|jacobian)\b",
                     code) is not None


def _attribute_path(source: str) -> bool:
    """``x``, ``λ``, ``layer.weight``: identifiers joined by dots (``blocks.class`` is
    none: a keyword after a dot is a SyntaxError)."""
    return all(part.isidentifier() and not keyword.iskeyword(part)
               for part in source.split("."))


def derivative_name(input_name: str, taken: set[str] | None = None) -> str:
    """``d_<name>`` as a Python identifier: ``layer.weight`` → ``d_layer_weight``."""
    stem = re.sub(r"\W+", "_", input_name).strip("_") or "input"
    name = f"d_{stem}"
    return fresh(name, taken) if taken is not None else name


def _shape_args(shape) -> str:
    return ", ".join(str(n) for n in shape)


# -- the one-hot component loop -------------------------------------------------------------
@dataclass(frozen=True)
class ComponentLoop:
    """One backward per component of ``y``: v one-hot on the component, ones along points."""

    shape: tuple[int, ...]  # the component shape (non-point output axes)
    count: int  # one backward per component
    letters: tuple[str, ...]  # ("k",) / ("i", "j")
    index: str  # v's subscript: "k", ":, k", "i, j"
    header: str  # "for k in range(3):"
    imports: tuple[str, ...] = ()  # ("import itertools",), or "as itertools2" beside a name

    def one_hot(self, y: str, v: str = "v") -> str:
        return f"{v} = torch.zeros_like({y}); {v}[{self.index}] = 1"

    def backward(self, y: str, v: str = "v", inputs: Sequence[str] = ()) -> str:
        tail = f", inputs=[{', '.join(inputs)}]" if inputs else ""
        return f"{y}.backward(gradient={v}, retain_graph=True{tail})"

    def lines(self, y: str, reads: Sequence[str], v: str = "v",
              inputs: Sequence[str] = ()) -> list[str]:
        """The loop: header, then v, the backward and each of ``reads``, indented."""
        body = [self.one_hot(y, v), self.backward(y, v, inputs), *reads]
        return [self.header] + ["    " + line for line in body]


def component_loop(out_shape: Sequence[int], point_axes: Iterable[int],
                   taken: set[str] | None = None) -> ComponentLoop:
    """The loop over the non-point entries of a tensor shaped ``out_shape``.

    One component axis is counted by ``k``, several by ``i, j, l, …``; a letter that is one
    of the cell's names (in ``taken``) gets a fresh spelling (``k2``) and is added to it.
    """
    points = set(point_axes)
    shape = tuple(n for a, n in enumerate(out_shape) if a not in points)
    taken = set() if taken is None else taken
    wanted = [_ONE_AXIS] if len(shape) == 1 else list(_AXES[: len(shape)])
    if len(wanted) < len(shape):
        wanted = [f"k{a}" for a in range(len(shape))]
    letters = tuple(fresh(letter, taken) for letter in wanted)
    spelled = iter(letters)
    index = [":" if a in points else next(spelled) for a in range(len(out_shape))]
    while index and index[-1] == ":":
        index.pop()
    imports: tuple[str, ...] = ()
    if len(shape) == 1:
        header = f"for {letters[0]} in range({shape[0]}):"
    else:
        ranges = ", ".join(f"range({n})" for n in shape)
        module = fresh("itertools", set(taken))  # (not kept: every loop imports it alike)
        imports = ("import itertools" + (f" as {module}" if module != "itertools" else ""),)
        header = f"for {', '.join(letters)} in {module}.product({ranges}):"
    return ComponentLoop(shape, math.prod(shape), letters, ", ".join(index), header, imports)


# -- the short loop shown beneath a result --------------------------------------------------
# The names the user's namespace binds while a result's display is built (View.names, set by
# the features that build text): an expression output is never named after one of them.
CELL_NAMES: ContextVar[frozenset] = ContextVar("vjp_magic_cell_names", default=frozenset())
# The notebook's own one-letter function the output applies (y = f(x)): the maths' letter.
APPLIED: ContextVar[str | None] = ContextVar("vjp_magic_applied", default=None)


@contextmanager
def naming(names: Iterable[str], applied: str | None = None):
    """Build text with ``names`` taken (the namespace's): :func:`output_symbol` avoids them;
    ``applied``: the notebook's function the output applies, the maths' letter for it."""
    token, applied_token = CELL_NAMES.set(frozenset(names)), APPLIED.set(applied)
    try:
        yield
    finally:
        CELL_NAMES.reset(token)
        APPLIED.reset(applied_token)


def taken_names(result) -> set[str]:
    """The names code written for ``result`` must not bind: the output's and the inputs'
    identifiers and the namespace's (:func:`naming`); pasted, a helper named like one of
    them (``v``, ``k``, ``d_x``, ``saved_grad``, ``itertools``) would overwrite it. Nor the
    maths' letters for the function (``g``, ``G`` where the prose says ``lap = G(u)``): one
    letter, one meaning in a display."""
    from .notation import letters  # (notation reads this module's names)

    return identifiers([result.output_name, *result.inputs]) | CELL_NAMES.get() | set(letters())


def output_symbol(result) -> str:
    """The output's name in code and formulas: the cell's name, or ``y`` (``out``, ``out2``
    where the cell or the notebook binds ``y``: pasted code would overwrite it) for an
    expression output such as ``torch.softmax(x, 0)``."""
    if result.output_name.isidentifier():
        return result.output_name
    taken = taken_names(result)
    return "y" if "y" not in taken else fresh("out", set(taken))


def _output_variable(result, taken: set[str]) -> tuple[str, list[str]]:
    """The output as a name ``.backward`` follows; an expression output is named first."""
    y = output_symbol(result)
    taken.add(y)
    return y, ([] if y == result.output_name else [f"{y} = {result.output_name}"])


def loop_names(result, point_out: Iterable[int],
               taken: set[str] | None = None) -> tuple[str, str, ComponentLoop]:
    """The output's name, the one-hot vector's (``v``) and the component loop, as the short
    loop beneath a result spells them and the prose beside it says them: none of them one of
    the cell's names (an input named ``v`` makes the vector ``v2``). ``taken``: the names
    already spoken for (default: the output's, the inputs' and the namespace's), to which
    these are added."""
    taken = taken_names(result) if taken is None else taken
    y = output_symbol(result)
    taken.add(y)
    return (y, *one_hot_loop(result.output.shape, point_out, taken))


def one_hot_loop(out_shape: Sequence[int], point_axes: Iterable[int],
                 taken: set[str]) -> tuple[str, ComponentLoop]:
    """The one-hot vector's name (``v``, or ``v2`` where ``taken`` holds ``v``) and the
    component loop, both fresh against ``taken`` (and added to it): the one place a loop
    over components names its helpers, whoever writes it (the display, the coaching)."""
    v = fresh("v", taken)
    return v, component_loop(out_shape, point_axes, taken)


def display_loop(result, names: Sequence[str] | None = None,
                 first: Sequence[str] = (), retain: bool = False) -> str:
    """The tutorial's own few lines for the derivatives with respect to ``names`` (default:
    every input), which must share their point axes; nothing saved or restored.

    Pasted into the next cell they give the numbers shown whatever ``.grad`` the cell left
    (its own ``backward`` adds to it): each ``.grad`` is cleared before the first backward,
    and the loop clears it after reading each component, so none is left behind. ``first``:
    lines before them (the output computed again where the cell's backward freed its graph);
    ``retain``: another code block shown beside this one calls backward on the same graph, so
    this one's backward keeps it (``retain_graph=True``; the loop's always does). Where a
    backward from the output would also fill another tensor's ``.grad`` (a parameter, an
    input of another loop), each names its ``inputs=[...]`` (:func:`backward_inputs`)."""
    names = list(result.inputs if names is None else names)
    taken = taken_names(result)
    y, named = _output_variable(result, taken)
    xs = [expression(name, "_") for name in names]
    checked = [result_check("_", result.seed)] if any(map(reads_result, xs)) else []
    first = [*checked, *first, cleared_grads(xs, taken), *named]
    keep = ", retain_graph=True" if retain else ""
    first += [f"{x}.retain_grad()" for x, name in zip(xs, names)
              if not result.inputs[name].is_leaf]
    reads = [f"{x}.grad" for x in xs]
    listed = backward_inputs(result, names, xs)
    if result.output.numel() == 1 and not result.full:
        return "\n".join(first + [f"{y}.backward({(keep + listed)[2:]})", *reads]) + "\n"
    _, v, loop = loop_names(result, result.inputs[names[0]].pairing.out_axes, taken)
    if loop.count == 1:
        return "\n".join(first + [f"{y}.backward(gradient=torch.ones_like({y}){keep}{listed})",
                                   *reads]) + "\n"
    ds = [derivative_name(name, taken) for name in names]
    head = list(loop.imports)
    head += first + [f"{d} = {x}.new_zeros({_shape_args(loop.shape)}, *{x}.shape)"
                     for x, d in zip(xs, ds)]
    stores = [f"{d}[{', '.join(loop.letters)}] = {grad_read(result, n, x)}; {x}.grad = None"
              for x, d, n in zip(xs, ds, names)]
    return "\n".join(head + loop.lines(y, stores, v, xs if listed else ())) + "\n"


def backward_inputs(result, names: Sequence[str], xs: Sequence[str]) -> str:
    """``, inputs=[x, …]`` (``names`` spelled ``xs``) where a backward from the output would
    also fill another tensor's ``.grad`` (:func:`.graph_facts.names_inputs`), so that code
    pasted from the display changes no ``.grad`` it does not read; else nothing (the
    tutorial's own call)."""
    return f", inputs=[{', '.join(xs)}]" if names_inputs(result, names) else ""


def cleared_grads(xs: Sequence[str], taken: set[str] | None = None) -> str:
    """``x.grad = None`` for each of ``xs`` (spelled as code), with why where it fits the
    code width: backward adds to ``.grad``, so code that reads it starts from none. Past
    the code width, a loop over them (its tuple breaks after a comma, :mod:`.codelines`;
    a chained assignment cannot break), its name not one of ``taken``."""
    line = " = ".join(f"{x}.grad" for x in xs) + " = None"
    said = f"{line}  # backward adds to .grad: start from none"
    if len(said) <= CODE_WIDTH:
        return said
    if len(line) <= CODE_WIDTH or len(xs) == 1:
        return line
    p = fresh("p", set() if taken is None else taken)
    return f"for {p} in ({', '.join(xs)}):\n    {p}.grad = None  # backward adds to .grad"


def grad_read(result, name: str, x: str) -> str:
    """How code reads input ``name``'s ``.grad`` (spelled ``x``) into a dense tensor:
    ``x.grad``, or ``x.grad.to_dense()`` where autograd hands it sparse (COO:
    :func:`.graph_facts.sparse_grad`); copying a sparse ``.grad`` into a dense tensor raises."""
    return f"{x}.grad.to_dense()" if sparse_grad(result, name) else f"{x}.grad"


# -- r.code: the careful version ------------------------------------------------------------
def reproducing_code(result, result_name: str | None = None,
                     first: Sequence[str] = ()) -> str:
    """The source; it binds ``code_derivative_names(result)[name]`` (``d_<name>``, fresh)
    for every input of ``result``. An input computed by compressed passes gets its coloured
    passes (:mod:`.sparse_code`), never the one-hot loop; where they read the colours or the
    pattern off the result, they read it as ``result_name`` (default ``r``; ``result`` where a
    cell tensor is ``r``), checked first (:func:`result_check`). ``first``: lines before the
    passes (the output computed again where the cell's backward freed its graph)."""
    from .sparse_code import coloured_lines  # (it imports this module)
    names = list(result.inputs)
    taken, source, said, y, body, d_names = _code_names(result, result_name)
    if body:
        body[0] += "  # the output, computed again"
    body = [*first, *body]
    xs = {name: expression(name, source) for name in names}
    saved = fresh("saved_grad" if len(names) == 1 else "saved_grads", taken)
    body += _save_grads(result, xs, saved)
    groups: dict[tuple[int, ...], list[str]] = {}
    for name in names:
        item = result.inputs[name]
        if item.unused:
            body.append(_zeros(result, name, xs[name], d_names[name])
                        + (f"  # {unreached(result.output_name, name)} (cut)"
                           if any(name in c.inputs for c in getattr(result, "cuts", ()))
                           else f"  # {result.output_name} does not depend on {name}"))
        elif getattr(item, "sparse", None) is not None:
            body += coloured_lines(result, name, xs[name], d_names[name], y, taken, source)
        else:
            groups.setdefault(tuple(sorted(item.pairing.out_axes)), []).append(name)
    imports: dict[str, None] = {}
    for point_out, group in groups.items():
        loop = component_loop(result.output.shape, point_out, taken)
        imports.update(dict.fromkeys(loop.imports))
        body += _group_code(result, y, loop, [(xs[n], d_names[n]) for n in group], taken,
                            group)
    grads = ", ".join(f"{xs[n]}.grad" for n in names)
    body.append(f"{grads} = {saved}  # restore the notebook's .grad")
    head = ["import torch", *imports]
    if any(reads_result(line, source) for line in body):
        head += ["", *said, result_check(source, result.seed)]  # before .grad is touched
    return "\n".join(head + [""] + body) + "\n"


def _code_names(result, result_name: str | None = None):
    """The names ``r.code`` takes, chosen once: the set taken so far, the result's name (and
    the comment saying so), the output's, the lines naming it, and ``d_<name>`` per input
    (``d_x2`` where the cell binds ``d_x``)."""
    names = list(result.inputs)
    taken = identifiers([result.output_name, *names])  # (r is read, never bound: a
    source, said = _result_source(result, taken, result_name)  # notebook's r is the result)
    taken |= CELL_NAMES.get()
    y, body = _output_variable(result, taken)
    d_names = {name: derivative_name(name, taken) for name in names}
    return taken, source, said, y, body, d_names


def code_derivative_names(result) -> dict[str, str]:
    """The name ``r.code`` binds for each input's derivatives, as it binds it (``d_x``, or
    ``d_x2`` where the cell binds ``d_x``): what a sentence about ``r.code`` names."""
    return _code_names(result)[-1]


def _result_source(result, taken: set[str], given: str | None) -> tuple[str, list[str]]:
    """The name r.code reads the result as, and the comment saying so where the docs' ``r``
    is a tensor of the cell."""
    if given:
        taken.add(given)
        return given, []
    if "r" not in taken:
        taken.add("r")
        return "r", []
    source = fresh("result", taken)
    taken.add(source)
    return source, [f"# r is a tensor of the cell: the result is read as {source} "
                    f"({source} = the result this code came from)"]


def result_check(source: str, seed) -> str:
    """The line that checks ``source`` is the result whose ``seed`` it names (drawn per run),
    so code run with a stale or another result fails loudly instead of silently mixing them.
    IPython's ``_`` (the code shown beneath the cell) gets a message short enough for the
    display's code width (56 characters with a 63-bit seed)."""
    if source == "_":
        return f'assert _.seed == {seed}, "_ is stale"'
    return (f"assert {source}.seed == {seed}, \"{source} is not the result this code was "
            f"written for: bind {source} to it first ({source} = _ after its cell)\"")


def _save_grads(result, xs: dict[str, str], saved: str) -> list[str]:
    lines = [f"{xs[name]}.retain_grad()  # {name} is not a leaf: let backward fill {name}.grad"
             for name in xs if not result.inputs[name].is_leaf]
    grads = ", ".join(f"{x}.grad" for x in xs.values())
    lines.append(f"{saved} = {grads}  # backward adds to .grad: keep what it holds, restored "
                 "below")
    lines.append(" = ".join(f"{x}.grad" for x in xs.values()) + " = None")
    return lines


def _zeros(result, name: str, x: str, d: str) -> str:
    comp = result.component_shape(name)
    shape = f"{_shape_args(comp)}, *{x}.shape" if comp else f"{x}.shape"
    return f"{d} = {x}.new_zeros({shape})"


def _group_code(result, y: str, loop: ComponentLoop, group: list[tuple[str, str]],
                taken: set[str], names: Sequence[str]) -> list[str]:
    """The backward call(s) for inputs ``names`` sharing their point axes (spelled and
    their derivatives named as ``group`` says), and ``d_<name>`` from them."""
    inputs = [x for x, _ in group]
    listed = f"inputs=[{', '.join(inputs)}]"
    if loop.count == 1 and result.output.dim() == 0:
        lines = [f"# {result.output_name} is a scalar: gradient=1, the default",
                 f"{y}.backward(retain_graph=True, {listed})"]
    elif loop.count == 1:
        points = result.output.numel()
        lines = [f"# one component at {points:,} point(s): J is (block-)diagonal, so v = ones "
                 "gives the derivatives at every point",
                 f"{y}.backward(gradient=torch.ones_like({y}), retain_graph=True, {listed})"]
    else:
        v = fresh("v", taken)
        lines = [f"# {loop.count:,} components: one backward each, v one-hot on the component"
                 + (" (ones along the point axes)" if loop.count < result.output.numel() else "")]
        lines += [f"{d} = {x}.new_zeros({_shape_args(loop.shape)}, *{x}.shape)"
                  for x, d in group]
        zero = [f"if {x}.grad is not None: {x}.grad.zero_()" for x in inputs]
        store = [f"{d}[{', '.join(loop.letters)}] = {grad_read(result, n, x)}"
                 for (x, d), n in zip(group, names)]
        body = [loop.one_hot(y, v), *zero, loop.backward(y, v, inputs), *store]
        return lines + [loop.header] + ["    " + line for line in body]
    for (x, d), n in zip(group, names):
        shape = loop.shape
        grad = (grad_read(result, n, x) + f".reshape({_shape_args(shape)}, *{x}.shape)"
                if shape else f"{x}.grad")  # (a scalar's: as autograd gives it)
        lines.append(f"{d} = {grad}")
    return lines
