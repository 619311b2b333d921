"""Stage 4b — symbolic derivatives with SymPy, cross-checked against autograd.

:func:`attach` re-runs the cell (or the ``%jacobian`` expression) in a scratch copy of the
namespace, each input replaced by a tensor of SymPy symbols (:mod:`.symtensor`), differentiates
the output with SymPy, evaluates the formula at every point in float64 and compares it with
autograd's numbers. The user's namespace, ``x.grad`` and the random state are left untouched.

For point structure the formula is for one generic point (``x``, or ``x_1 … x_n``); otherwise
every input entry gets its own symbol, named after the variable.
"""
from __future__ import annotations

import ast
import contextlib
import copy
import io
import math
import random
import time
import warnings
from dataclasses import dataclass

import numpy as np
import sympy
import torch
from sympy.printing.latex import LatexPrinter

from .cell import assigned_names
from .symtensor import (
    NUMPY_FUNCTIONS,
    OutOfTime,
    RuleBug,
    SymbolicMode,
    SymTensor,
    Unsupported,
    deadline,
    spend,
)
from .tagging import depends_on

RUN_SECONDS = 5.0  # for the re-run, and again for differentiating and checking
RENDER_SECONDS = 2.0  # for turning the formulas into LaTeX
MAX_ENTRIES = 4096  # input entries (all inputs together) a re-run makes symbols for
MAX_SHOWN = 6  # rows and columns of a formula shown
MAX_DISPLAY_CHARS = 3500  # one $$ display, far below MathJax's and KaTeX's limits
MAX_NODES = 1500  # SymPy expression-tree nodes of one formula typeset
_UNSAFE_TEX = (r"\newcommand", r"\boxed", r"\verb", r"\texttt", r"\def")
_RTOL = {torch.float64: 1e-7, torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}


class Unavailable(Exception):
    """Why no formula can be given (shown as one line; the numbers are shown as usual)."""


@dataclass
class Formula:
    """The symbolic derivative for one input, and how it compared with autograd."""

    name: str
    derivative: object  # SymPy expression or Matrix, laid out like one point's derivatives
    points: int
    same_function: bool = True  # f itself (not only its derivative) is the same at every point
    check: bool | None = None
    mismatches: int = 0
    worst: float = 0.0


# -- entry point -----------------------------------------------------------------------------------
def attach(result, *, source: str | None, namespace, output_source: str | None,
           rng_state: torch.Tensor | None = None) -> None:
    """Fill ``result.symbolic`` / ``result.symbolic_check`` and add a rendering section.

    ``source`` is the cell's Python source (``%%vjp``), or None with ``output_source`` the
    expression to re-run (``%jacobian``). What the re-run cannot follow becomes one line.
    ``rng_state`` (torch's CPU generator state from before the cell ran) replays the cell's
    random draws exactly.
    """
    section = SymbolicSection(result)
    result.sections.append(section)
    for name in result.inputs:
        result.symbolic[name] = None
    try:
        _derive(result, section, source, namespace, output_source, rng_state)
    except Unavailable as reason:
        section.note = f"symbolic: {reason}; numbers only"
    except RuleBug as bug:  # the cell ran numerically, so this is a bug in symtensor
        raise RuntimeError(str(bug)) from bug.error
    section.prepare()


def _derive(result, section, source, namespace, output_source, rng_state=None) -> None:
    names = list(result.inputs)
    odd = [n for n in names if not n.isidentifier()]
    if odd:
        raise Unavailable(f"the input {odd[0]} is an expression, not a variable a re-run can "
                          "replace by symbols")
    total = sum(result.inputs[n].tensor.numel() for n in names)
    if total > MAX_ENTRIES:
        raise Unavailable(f"the inputs have {total:,} entries, more than the {MAX_ENTRIES:,} a "
                          "symbolic re-run makes symbols for")
    if source is None:
        expression = output_source or result.output_name
        if expression.isidentifier():
            raise Unavailable(
                f"{expression} is a stored tensor, there is nothing to re-run; give the output "
                f"as an expression, e.g. %jacobian --symbolic (x**2).sum() wrt x")
        statements = []
    else:
        statements = ast.parse(source).body
        expression = result.output_name
    dtypes = {n: result.inputs[n].tensor.dtype for n in names}
    groups: dict[tuple, list[str]] = {}
    for name in names:  # inputs whose points run along the same output axes share a re-run
        groups.setdefault(tuple(sorted(a for a, _ in _point_axes(result, name))), []).append(name)
    try:
        for group in groups.values():
            symbols = _group_symbols(result, group)
            with deadline(RUN_SECONDS):
                output, section.random_ops = _rerun(result, statements, expression, namespace,
                                                    symbols, dtypes, rng_state)
            with deadline(RUN_SECONDS):
                if names[0] in group:
                    section.function = _function(result, names[0], output)
                for name in group:
                    formula = _formula(result, name, output, symbols)
                    section.formulas[name] = formula
                    result.symbolic[name] = formula.derivative
                    result.symbolic_check[name] = formula.check
        section.formulas = {n: section.formulas[n] for n in names}
        if any(not f.same_function for f in section.formulas.values()):
            section.function = None  # f varies by point even where its derivative does not
    except OutOfTime:
        raise Unavailable(f"gave up after {RUN_SECONDS:g} s (the expressions grow too large)") \
            from None
    except RecursionError:
        raise Unavailable("the expressions are nested too deeply for SymPy") from None


# -- the re-run ------------------------------------------------------------------------------------
def _entry_names(name: str, shape: tuple[int, ...]) -> list[str]:
    """``x`` for one entry, ``x_1 … x_n`` along one axis, ``x_{i,j}`` along several."""
    axes = [a for a, n in enumerate(shape) if n != 1]
    names = []
    for index in np.ndindex(*shape):
        if not axes:
            names.append(name)
        elif len(axes) == 1:
            names.append(f"{name}_{index[axes[0]] + 1}")
        else:
            names.append(f"{name}_{{{','.join(str(index[a] + 1) for a in axes)}}}")
    return names


def _symbol_array(name: str, shape: tuple[int, ...]) -> np.ndarray:
    array = np.empty(shape, dtype=object)
    flat = array.reshape(-1)
    for i, entry in enumerate(_entry_names(name, shape)):
        flat[i] = sympy.Symbol(entry, real=True)
    return array


def _group_symbols(result, group: list[str]) -> dict[str, np.ndarray]:
    """Each input's symbol array for one re-run: the group's inputs hold the same generic
    symbols at every point (``x`` or ``x_1 … x_n``), the others a symbol per entry."""
    arrays = {}
    for name, item in result.inputs.items():
        shape = tuple(item.tensor.shape)
        if name not in group:
            arrays[name] = _symbol_array(name, shape)
            continue
        paired = {b for _, b in _point_axes(result, name)}
        generic = _symbol_array(name, tuple(n for b, n in enumerate(shape) if b not in paired))
        array = np.empty(shape, dtype=object)
        for index in np.ndindex(*shape):
            array[index] = generic[tuple(i for b, i in enumerate(index) if b not in paired)]
        arrays[name] = array
    return arrays


def _quiet(*args, **kwargs) -> None:
    return None


def _private(value):
    """A copy the re-run may change freely (tensors detached and cloned, containers deep-copied)."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, (list, dict, set, bytearray, np.ndarray, torch.nn.Module)):
        try:
            return copy.deepcopy(value)
        except Exception:  # noqa: BLE001 - an uncopyable object is used as it is
            return value
    return value


@dataclass
class _Failure:
    line: int | None
    code: str
    error: Exception

    def describe(self) -> str:
        if isinstance(self.error, Unsupported):
            return str(self.error)
        where = f"line {self.line} ({self.code})" if self.line else self.code
        return f"{where} failed in the re-run with {type(self.error).__name__}: {self.error}"


@contextlib.contextmanager
def _sandbox(mode: SymbolicMode, rng_state: torch.Tensor | None = None):
    """Silence output and warnings; start from ``rng_state`` if given; restore torch's,
    Python's and NumPy's random state afterwards."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    sink = io.StringIO()
    try:
        with torch.random.fork_rng(devices=[]), contextlib.redirect_stdout(sink), \
                contextlib.redirect_stderr(sink), warnings.catch_warnings(), mode:
            warnings.simplefilter("ignore")
            if rng_state is not None:
                torch.random.set_rng_state(rng_state)
            yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


def _rerun(result, statements, expression, namespace, symbols, dtypes,
           rng_state=None) -> np.ndarray:
    """Run the statements one by one in a scratch namespace; return the output's expressions.

    A statement that fails (``print(x.grad.item())``, ``x.grad.zero_()`` …) is skipped and the
    names it binds are dropped, so later statements that need them fail too; the first
    failure is reported only if the output ends up missing.
    """
    try:
        tree = ast.parse(expression, mode="eval")
    except SyntaxError:
        raise Unavailable(f"could not read the output {expression!r}") from None
    cell = ast.Module(body=list(statements), type_ignores=[])
    assigned = set(assigned_names(cell))
    referenced = {node.id for part in (cell, tree) for node in ast.walk(part)
                  if isinstance(node, ast.Name)}
    for name in sorted(referenced - assigned - set(symbols)):
        value = namespace.get(name)
        if isinstance(value, torch.Tensor) and value.grad_fn is not None \
                and depends_on(result.output, value):
            raise Unavailable(f"{name} was computed from the inputs in an earlier cell; put its "
                              "computation in this cell to see the formula")
    scratch = dict(namespace)
    for name in assigned - set(symbols):
        scratch.pop(name, None)
    for name in referenced & set(scratch) - set(symbols):
        scratch[name] = _private(scratch[name])
    scratch["print"] = scratch["display"] = _quiet

    def bind_inputs(names):
        for name in names:
            scratch[name] = SymTensor(symbols[name], dtypes[name], name=name)

    bind_inputs(symbols)
    causes: dict[str, _Failure] = {}
    failures: list[tuple[set[str], _Failure]] = []
    mode = SymbolicMode()
    with _sandbox(mode, rng_state):
        for statement in statements:
            single = ast.Module(body=[statement], type_ignores=[])
            binds = assigned_names(single)
            try:
                exec(compile(single, "<vjp-symbolic>", "exec"), scratch)  # noqa: S102
            except Exception as error:  # noqa: BLE001 - the cell's own lines may fail here
                failure = _Failure(statement.lineno, _snippet(statement), error)
                if isinstance(error, NameError) and error.name in causes:
                    failure = causes[error.name]
                failures.append(({n.id for n in ast.walk(statement) if isinstance(n, ast.Name)},
                                 failure))
                for name in binds:
                    if name not in symbols:
                        scratch.pop(name, None)
                        causes[name] = failure
            bind_inputs(n for n in binds if n in symbols)
        try:
            value = eval(compile(tree, "<vjp-symbolic>", "eval"), scratch)  # noqa: S307
        except Exception as error:  # noqa: BLE001
            failure = causes.get(getattr(error, "name", None)) if isinstance(error, NameError) \
                else None
            raise Unavailable((failure or _Failure(None, expression, error)).describe()) from None
    seeded = any(isinstance(node, ast.Attribute) and node.attr == "manual_seed"
                 for node in ast.walk(cell))
    random_ops = [] if seeded else list(dict.fromkeys(mode.random_ops))
    if not isinstance(value, SymTensor):
        wanted = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        related = [f for names, f in failures if names & wanted]
        if related:  # e.g. y = torch.zeros(3); y[0] = x[0]**2
            raise Unavailable(related[0].describe())
        raise Unavailable(f"in the re-run, {expression} does not depend on "
                          f"{', '.join(symbols)}")
    if tuple(value.shape) != tuple(result.output.shape):
        raise Unavailable(f"the re-run gave {expression} the shape {tuple(value.shape)}, not "
                          f"{tuple(result.output.shape)}")
    return value.array, random_ops


def _snippet(statement) -> str:
    text = ast.unparse(statement).splitlines()[0]
    return text if len(text) <= 40 else text[:37] + "..."


# -- formulas --------------------------------------------------------------------------------------
def _point_axes(result, name) -> list[tuple[int, int]]:
    """(output axis, input axis) pairs whose shared index is the point; none for a Jacobian."""
    if result.show_jacobian or result.full:
        return []
    return list(result.inputs[name].pairing)


def _partners(result, name) -> dict[str, dict[int, int]]:
    """Inputs whose points run along the same output axes as ``name``'s: output → input axis."""
    axes = sorted(a for a, _ in _point_axes(result, name))
    return {m: dict(_point_axes(result, m)) for m in result.inputs
            if sorted(a for a, _ in _point_axes(result, m)) == axes}


def _at_points(array: np.ndarray, axis_map: dict[int, int], order: list[int]) -> np.ndarray:
    """``array`` with its point axes first, flattened: shape (points,) + one point's shape."""
    moved = np.moveaxis(array, [axis_map[a] for a in order], list(range(len(order))))
    count = math.prod(moved.shape[:len(order)])
    return moved.reshape((count,) + moved.shape[len(order):])


def _function(result, name, output):
    """f at the first of ``name``'s points, in generic symbols, laid out like the output there."""
    order = [a for a, _ in _point_axes(result, name)]
    at_points = _at_points(output, {a: a for a in order}, order)
    if not len(at_points):
        return None
    return _layout(at_points[0, ...], at_points.shape[1:], (), jacobian=False)


def _formula(result, name, output, symbols) -> Formula:
    """Differentiate at every point (once per distinct f there); one formula must fit all."""
    pairs = _point_axes(result, name)
    order = [a for a, _ in pairs]
    at_points = _at_points(output, {a: a for a in order}, order)
    variables = _at_points(symbols[name], dict(pairs), order)[0, ...] if len(at_points) else None
    cache: dict[tuple, np.ndarray] = {}
    first = None
    for point in range(len(at_points)):
        y = at_points[point, ...]
        key = tuple(y.reshape(-1))
        derivative = cache.get(key)
        if derivative is None:
            derivative = np.empty(y.shape + variables.shape, dtype=object)
            for iy in np.ndindex(*y.shape):
                for ix in np.ndindex(*variables.shape):
                    spend()
                    derivative[iy + ix] = sympy.diff(y[iy], variables[ix])
            cache[key] = derivative
        if first is None:
            first = derivative
        elif derivative is not first and not all(
                a == b for a, b in zip(first.reshape(-1), derivative.reshape(-1))):
            raise Unavailable(f"the derivative with respect to {name} differs from point to "
                              "point (per-point constants), so there is no one formula")
    if first is None:
        raise Unavailable(f"{name} has no points to differentiate at")
    component, per_point = at_points.shape[1:], variables.shape
    formula = Formula(name, _layout(first, component, per_point, jacobian=result.show_jacobian),
                      len(at_points), same_function=len(cache) == 1)
    _check(result, name, formula, first, component, per_point, symbols)
    return formula


def _layout(array: np.ndarray, component, per_point, jacobian: bool):
    """One point's derivatives as SymPy: a scalar, a row (gradient), a column (f'), a matrix."""
    if jacobian:
        rows = math.prod(component)
        return sympy.Matrix(rows, max(array.size // max(rows, 1), 0), list(array.reshape(-1)))
    if not component and not per_point:
        return array[()]
    if not per_point:
        shape = (component[0], 1) if len(component) == 1 else (math.prod(component[:-1]),
                                                                component[-1])
    elif not component:
        shape = (1, per_point[0]) if len(per_point) == 1 else (math.prod(per_point[:-1]),
                                                               per_point[-1])
    else:
        shape = (math.prod(component), math.prod(per_point))
    return sympy.Matrix(shape[0], shape[1], list(array.reshape(-1)))


def _check(result, name, formula: Formula, derivative, component, per_point, symbols) -> None:
    """Evaluate the formula at every point in float64 and compare with autograd's numbers."""
    item = result.inputs[name]
    order = [a for a, _ in _point_axes(result, name)]
    points = formula.points
    values = {}  # generic symbols: one value per point; the others: one value
    for m, axis_map in _partners(result, name).items():
        numbers = result.inputs[m].tensor.detach().to("cpu", torch.float64).numpy()
        by_point = _at_points(numbers, axis_map, order).reshape(points, -1)
        generic = _at_points(symbols[m], axis_map, order)[0, ...].reshape(-1)
        for i, s in enumerate(generic):
            values[s] = by_point[:, i]
    for m, other in result.inputs.items():
        numbers = other.tensor.detach().to("cpu", torch.float64).numpy().reshape(-1)
        for s, v in zip(symbols[m].reshape(-1), numbers):
            values.setdefault(s, v)
    entries = list(derivative.reshape(-1))
    arguments = sorted(set().union(*(sympy.sympify(e).free_symbols for e in entries)), key=str)
    missing = [s for s in arguments if s not in values]
    if missing:  # cannot happen for formulas built from the input symbols
        raise AssertionError(f"no values for {missing}")
    function = sympy.lambdify(arguments, entries, modules=[NUMPY_FUNCTIONS, "numpy"],
                              dummify=True)
    with np.errstate(all="ignore"):
        evaluated = function(*(values[s] for s in arguments))
    got = np.stack([np.broadcast_to(np.asarray(v), (points,)) for v in evaluated], axis=-1) \
        if entries else np.zeros((points, 0))
    if np.iscomplexobj(got):
        got = np.where(np.abs(got.imag) > 0, np.nan, got.real)
    got = got.astype(np.float64).reshape((points,) + tuple(component) + tuple(per_point))
    if result.show_jacobian:
        expected = result.jacobian(name).detach().to("cpu", torch.float64).numpy()
        expected = expected.reshape(got.shape)
    else:
        numbers = item.derivatives.detach().to("cpu", torch.float64).numpy()
        k = len(component)
        axis_map = {a: k + b for a, b in _point_axes(result, name)}
        expected = _at_points(numbers, axis_map, order).reshape(got.shape)
    dtype = item.derivatives.dtype
    rtol = _RTOL.get(dtype, 1e-4)
    finite = np.abs(expected[np.isfinite(expected)])
    scale = float(finite.max()) if finite.size else 1.0
    atol = 32 * torch.finfo(dtype).eps * scale if dtype.is_floating_point else 0.0
    close = np.isclose(got, expected, rtol=rtol, atol=atol, equal_nan=True)
    bad = ~close.reshape(points, -1).all(axis=1)
    formula.check = not bool(bad.any())
    formula.mismatches = int(bad.sum())
    difference = np.abs(got - expected)[~close]
    formula.worst = float(np.nanmax(difference)) if difference.size and \
        not np.isnan(difference).all() else math.nan


# -- rendering -------------------------------------------------------------------------------------
class _Printer(LatexPrinter):
    """SymPy's LaTeX, with Heaviside(x, 0) written θ(x) (its value at 0 is torch's, 0)."""

    def _print_Heaviside(self, expr, exp=None):
        tex = r"\theta\left(" + self._print(expr.args[0]) + r"\right)"
        return tex if exp is None else f"{tex}^{{{exp}}}"


def _too_big(value) -> str | None:
    """Why ``value`` is not typeset: over 6 x 6 entries or too many nodes; else None."""
    if isinstance(value, sympy.MatrixBase) and (value.rows > MAX_SHOWN or value.cols > MAX_SHOWN):
        return f"symbolic form too large ({value.rows} x {value.cols}; shown up to " \
               f"{MAX_SHOWN} x {MAX_SHOWN})"
    nodes = 0
    for _ in sympy.preorder_traversal(value):
        nodes += 1
        if nodes > MAX_NODES:
            return "symbolic form too large to display"
    return None


def _plain(value) -> str:
    if isinstance(value, sympy.MatrixBase):
        return sympy.sstr(value.tolist())
    return sympy.sstr(value)


class SymbolicSection:
    """The formulas above the numeric matrices (``position = "top"``), or one line saying why
    there are none. LaTeX is prepared once, under a size and time cap."""

    position = "top"

    def __init__(self, result):
        self.result = result
        self.note: str | None = None
        self.function = None
        self.formulas: dict[str, Formula] = {}
        self.random_ops: list[str] = []  # random draws in the re-run (not replayed exactly)
        self._latex: list[str] = []
        self._text: list[str] = []

    def _heading(self) -> str:
        points = {f.points for f in self.formulas.values()}
        if points == {1}:
            return "symbolic (SymPy):"
        if len(points) == 1:
            return f"symbolic (SymPy), at any one of the {points.pop():,} points:"
        return "symbolic (SymPy), at a generic point:"

    def _check_line(self, formula: Formula) -> str:
        where = "at the point" if formula.points == 1 else f"at all {formula.points:,} points"
        if formula.check:
            return f"agrees with autograd {where}"
        if formula.check is None:
            return "not checked against autograd"
        worst = f" (largest difference {formula.worst:.3g})" if math.isfinite(formula.worst) \
            else ""
        why = ""
        if self.random_ops:
            why = (f"; the cell draws random numbers ({', '.join(self.random_ops[:2])}) and the "
                   "re-run drew different ones: call torch.manual_seed at the top of the cell")
        return (f"warning: the formula for {formula.name} disagrees with autograd at "
                f"{formula.mismatches:,} of {formula.points:,} points{worst}{why}")

    def prepare(self) -> None:
        from . import latex as tex

        if self.note is not None:
            self._latex = [f"$${tex.text(self.note)}$$"]
            self._text = [self.note]
            return
        result = self.result
        args = ", ".join(tex.name(n) for n in result.inputs)
        started = time.monotonic()
        printer = _Printer()
        rows = [tex.text(self._heading())]
        self._text = [self._heading()]
        if self.function is not None:
            rows.append(self._formula_tex(f"f({args})", self.function, printer, started))
            self._text.append(f"  f({', '.join(result.inputs)}) = "
                              + (_too_big(self.function) or _plain(self.function)))
        for name, formula in self.formulas.items():
            left = "J" if result.show_jacobian else tex.lhs(result, name)
            rows.append(self._formula_tex(left, formula.derivative, printer, started))
            check = self._check_line(formula)
            rows.append(tex.text(check))
            self._text.append(f"  {_lhs_text(result, name)} = "
                              + (_too_big(formula.derivative) or _plain(formula.derivative)))
            self._text.append(f"  {check}")
        self._latex = _split_displays(rows, tex)

    def _formula_tex(self, left: str, value, printer, started) -> str:
        from . import latex as tex

        too_big = _too_big(value)
        if too_big is None and time.monotonic() - started > RENDER_SECONDS:
            too_big = "symbolic form too large (it took too long to typeset)"
        if too_big is None:
            body = printer.doprint(value)
            if len(body) > MAX_DISPLAY_CHARS - 200 or any(t in body for t in _UNSAFE_TEX):
                too_big = "symbolic form too large to display"
            else:
                return f"{left} = {body}"
        return f"{left}:\\ {tex.text(too_big)}"

    def latex(self) -> str:
        return "\n".join(self._latex)

    def text(self) -> str:
        return "\n".join(self._text)


def _split_displays(rows: list[str], tex) -> list[str]:
    """Rows gathered into ``$$\\begin{array}{l}…$$`` displays, each under the size cap."""
    displays, current = [], []
    for row in rows:
        if current and sum(len(r) + 4 for r in current) + len(row) > MAX_DISPLAY_CHARS:
            displays.append(tex.display(*current))
            current = []
        current.append(row)
    if current:
        displays.append(tex.display(*current))
    return displays


def _lhs_text(result, name: str) -> str:
    """Plain-text counterpart of :func:`latex.lhs`."""
    if result.show_jacobian:
        return "J"
    if len(result.inputs) > 1 or result.full:
        return f"d{result.output_name}/d{name}"
    item = result.inputs[name]
    count = math.prod(result.component_shape(name))
    if item.per_point_numel() == 1:
        return f"f'({name})"
    return f"grad f({name})" if count == 1 else f"J_f({name})"
