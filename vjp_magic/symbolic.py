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
import re
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
from .formatting import notation
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
           rng_state: torch.Tensor | None = None, before: dict | None = None) -> None:
    """Fill ``result.symbolic`` / ``result.symbolic_check`` and add a rendering section.

    ``source`` is the cell's Python source (``%%vjp``), or None with ``output_source`` the
    expression to re-run (``%jacobian``). What the re-run cannot follow becomes one line.
    ``rng_state`` (torch's CPU generator state from before the cell ran) replays the cell's
    random draws exactly; ``before`` (from :func:`snapshot`, taken before the cell ran) gives
    the names the cell rebinds their earlier values, so ``c = c * 2`` replays too.
    Nothing here fails the cell: an unexpected error becomes the one line as well.
    """
    section = SymbolicSection(result)
    result.sections.append(section)
    for name in result.inputs:
        result.symbolic[name] = None
    try:
        _derive(result, section, source, namespace, output_source, rng_state, before)
    except Unavailable as reason:
        _give_up(result, section, f"symbolic: {reason}; numbers only")
    except (Exception, RuleBug, OutOfTime) as error:  # noqa: BLE001 - a bug here, not the cell's
        _give_up(result, section, f"symbolic: the re-run failed unexpectedly "
                 f"({_describe(error)}); numbers only")
    try:
        section.prepare()
    except (Exception, OutOfTime) as error:  # noqa: BLE001
        _give_up(result, section, f"symbolic: the formula could not be typeset "
                 f"({_describe(error)}); numbers only")
        section.prepare()


def _describe(error: BaseException) -> str:
    if isinstance(error, RuleBug):
        return str(error)
    text = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    return text if len(text) <= 120 else text[:117] + "..."


def _give_up(result, section, note: str) -> None:
    section.note = note
    section.function = None
    section.formulas = {}
    for name in result.inputs:
        result.symbolic[name] = None
        result.symbolic_check.pop(name, None)


def snapshot(namespace, source: str | None) -> dict:
    """The values, before the cell runs, of the names it rebinds (shallow: the cell rebinds
    them, so the objects themselves stay as they were unless it changes them in place)."""
    if not source:
        return {}
    try:
        names = assigned_names(ast.parse(source))
    except Exception:  # noqa: BLE001 - a cell that does not parse fails on its own
        return {}
    return {n: namespace[n] for n in names if n in namespace}


def _derive(result, section, source, namespace, output_source, rng_state=None,
            before=None) -> None:
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
            symbols = _group_symbols(result, group, section.symbol_tex)
            with deadline(RUN_SECONDS):
                output, section.random_ops = _rerun(result, statements, expression, namespace,
                                                    symbols, dtypes, rng_state, before)
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
def _entry_tex(name: str, index: str | None) -> str:
    """LaTeX for one entry's symbol, from the name as the header writes it (:func:`latex.name`):
    ``x_{2}``, ``x_{1,2}``, ``\\alpha_{1,2}``; a name with a subscript of its own keeps it
    before a semicolon, ``x_{1;\\,2}``, ``w_{\\mathrm{in};\\,1,2}`` (never a double subscript);
    anything else is grouped: ``\\mathtt{x\\_\\_}_{1,2}``."""
    from . import latex as tex

    base = tex.name(name)
    if index is None:
        return base
    own = re.fullmatch(r"([^_{}]+|\\mathrm\{[A-Za-z0-9]+\})_\{(.*)\}", base)
    if own:
        return f"{own.group(1)}_{{{own.group(2)};\\,{index}}}"
    if re.fullmatch(r"[A-Za-z]|\\[A-Za-z]+", base):
        return f"{base}_{{{index}}}"
    return f"{{{base}}}_{{{index}}}"


def _entry_names(name: str, shape: tuple[int, ...]) -> list[tuple[str, str]]:
    """Each entry's symbol name and LaTeX: ``x`` for one entry, ``x_1 … x_n`` along one axis,
    ``x_{i,j}`` along several. A name with an underscore numbers its entries in brackets
    (``x_1[2]``, ``w_in[1,2]``), so they cannot be read as another name's entries."""
    axes = [a for a, n in enumerate(shape) if n != 1]
    names = []
    for index in np.ndindex(*shape):
        label = ",".join(str(index[a] + 1) for a in axes) if axes else None
        if label is None:
            symbol = name
        elif "_" in name:
            symbol = f"{name}[{label}]"
        elif len(axes) == 1:
            symbol = f"{name}_{label}"
        else:
            symbol = f"{name}_{{{label}}}"
        names.append((symbol, _entry_tex(name, label)))
    return names


def _symbol_array(name: str, shape: tuple[int, ...], tex: dict | None = None) -> np.ndarray:
    array = np.empty(shape, dtype=object)
    flat = array.reshape(-1)
    for i, (entry, entry_tex) in enumerate(_entry_names(name, shape)):
        flat[i] = sympy.Symbol(entry, real=True)
        if tex is not None:
            tex[flat[i]] = entry_tex
    return array


def _group_symbols(result, group: list[str], tex: dict | None = None) -> dict[str, np.ndarray]:
    """Each input's symbol array for one re-run: the group's inputs hold the same generic
    symbols at every point (``x`` or ``x_1 … x_n``), the others a symbol per entry.
    ``tex`` collects each symbol's LaTeX."""
    arrays = {}
    owner: dict = {}
    for name, item in result.inputs.items():
        shape = tuple(item.tensor.shape)
        if name not in group:
            arrays[name] = _symbol_array(name, shape, tex)
        else:
            paired = {b for _, b in _point_axes(result, name)}
            generic = _symbol_array(name, tuple(n for b, n in enumerate(shape) if b not in paired),
                                    tex)
            array = np.empty(shape, dtype=object)
            for index in np.ndindex(*shape):
                array[index] = generic[tuple(i for b, i in enumerate(index) if b not in paired)]
            arrays[name] = array
        for symbol in set(arrays[name].reshape(-1)):
            if owner.setdefault(symbol, name) != name:  # x's entry x_1 and an input named x_1
                raise Unavailable(f"the inputs {owner[symbol]} and {name} would share the symbol "
                                  f"{symbol}; rename one of them")
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
           rng_state=None, before=None) -> np.ndarray:
    """Run the statements one by one in a scratch namespace; return the output's expressions.

    The scratch namespace is the namespace after the cell, except that the names the cell
    assigns are dropped, or set back to their values from before the cell (``before``).

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
    before = {n: v for n, v in (before or {}).items() if n in assigned and n not in symbols}
    for name in sorted(referenced - assigned - set(symbols) | set(before) & referenced):
        value = before[name] if name in before else namespace.get(name)
        if isinstance(value, torch.Tensor) and value.grad_fn is not None \
                and depends_on(result.output, value):
            raise Unavailable(f"{name} was computed from the inputs in an earlier cell; put its "
                              "computation in this cell to see the formula")
    scratch = dict(namespace)
    for name in assigned - set(symbols):
        scratch.pop(name, None)
    scratch.update(before)  # c = c * 2 starts from c's value before the cell
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
        shape = (rows, max(array.size // max(rows, 1), 0))
        return _matrix(array, shape)
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
    return _matrix(array, shape)


def _matrix(array: np.ndarray, shape: tuple[int, int]):
    """A SymPy Matrix of ``array``'s entries in the given 2-D shape (from rows of entries)."""
    if not shape[0] or not shape[1]:
        return sympy.zeros(*shape)
    return sympy.Matrix([[sympy.sympify(v) for v in row]
                         for row in np.asarray(array, dtype=object).reshape(shape)])


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
    with np.errstate(all="ignore"), warnings.catch_warnings():  # log(0), sqrt(0) …: inf/nan
        warnings.simplefilter("ignore", RuntimeWarning)
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
    formula.check, formula.mismatches, formula.worst = _compare(got, expected, points,
                                                                item.derivatives.dtype)


def _compare(got: np.ndarray, expected: np.ndarray, points: int, dtype: torch.dtype):
    """(agree at every point, points that disagree, largest finite difference) of the formula's
    values ``got`` and autograd's ``expected``, both shaped (points, ...).

    Close means within ``rtol`` relative or ``atol`` absolute, with ``atol = rtol`` times the
    largest finite derivative (plus the dtype's epsilon as a floor): in float32, derivatives
    that underflow next to much larger ones (sigmoid'(20) is 0 there, 2e-9 in float64) agree.
    Where either side is not finite (log'(0), sqrt'(0)), they agree when both are not finite
    and are not both infinite with opposite signs.
    """
    rtol = _RTOL.get(dtype, 1e-4)
    eps = torch.finfo(dtype).eps if dtype.is_floating_point else 0.0
    with np.errstate(all="ignore"):
        finite = np.isfinite(got) & np.isfinite(expected)
        magnitudes = np.abs(expected[np.isfinite(expected)])
        scale = float(magnitudes.max()) if magnitudes.size else 0.0
        atol = rtol * scale + eps
        difference = np.where(finite, np.abs(got - expected), np.inf)
        close = finite & (difference <= atol + rtol * np.abs(expected))
        odd = ~np.isfinite(got) & ~np.isfinite(expected)
        opposite = np.isinf(got) & np.isinf(expected) & (np.sign(got) != np.sign(expected))
        close |= odd & ~opposite
    bad = ~close.reshape(points, -1).all(axis=1)
    worst = difference[finite & ~close]
    return (not bool(bad.any()), int(bad.sum()),
            float(worst.max()) if worst.size else math.nan)


# -- rendering -------------------------------------------------------------------------------------
class _Printer(LatexPrinter):
    """SymPy's LaTeX, with Heaviside(x, 0) written θ(x) (its value at 0 is torch's, 0), and the
    input symbols as :func:`_entry_tex` writes them."""

    def __init__(self, symbol_tex: dict | None = None):
        super().__init__()
        self._symbol_tex = symbol_tex or {}

    def _print_Symbol(self, expr, style="plain"):
        tex = self._symbol_tex.get(expr)
        return tex if tex is not None else super()._print_Symbol(expr, style)

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
        self.symbol_tex: dict = {}  # each input symbol's LaTeX
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
        printer = _Printer(self.symbol_tex)
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
    return {
        "partial": f"d{result.output_name}/d{name}",
        "prime": f"f'({name})",
        "nabla": f"grad f({name})",
        "jacobian": f"J_f({name})",
    }[notation(result, name)]
