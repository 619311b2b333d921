"""Stage 4b — symbolic derivatives with SymPy, cross-checked against autograd.

The cell runs once, for real, with its torch calls recorded (:mod:`.record`).
:func:`attach` replays that record with each input replaced by a tensor of SymPy symbols
(:mod:`.symtensor`): a tensor the cell computed from the inputs gets the symbolic value of
the same computation, every other tensor is a constant with the value it had when it was
used (random draws included), and the branches the cell took are the ones replayed. SymPy
differentiates the output; the formula is evaluated at every point in float64 and compared
with autograd's numbers. Nothing of the user's code runs again.

For point structure the formula is for one generic point (``x``, or ``x_1 … x_n``); otherwise
every input entry gets its own symbol, named after the variable.
"""
from __future__ import annotations

import math
import re
import time
import warnings
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import sympy
import torch
from sympy.printing.latex import LatexPrinter

from ..render.formatting import notation
from ..run.record import tensors_in, version
from .symtensor import (
    DETACHING,
    NUMPY_FUNCTIONS,
    OutOfTime,
    RuleBug,
    SymTensor,
    Unsupported,
    call_name,
    deadline,
    replay,
    spend,
)
from ..core.tagging import depends_on

RUN_SECONDS = 5.0  # for the replay, and again for differentiating and checking
RENDER_SECONDS = 2.0  # for turning the formulas into LaTeX
MAX_ENTRIES = 4096  # input entries (all inputs together) a replay makes symbols for
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
    undefined: int = 0  # points where one side is nan/±inf and the other a number
    undefined_side: str = "formula"  # which side is undefined there: formula, autograd, either


# -- entry point -----------------------------------------------------------------------------------
def attach(result, *, record, namespace, output_source: str | None = None) -> None:
    """Fill ``result.symbolic`` / ``result.symbolic_check`` and add a rendering section.

    ``record`` (an :class:`~vjp_magic.record.OpRecord` from :func:`~vjp_magic.record.recording`)
    holds the torch calls of the cell's one run (``%%vjp``, ``output_source`` None), or of
    evaluating the expression ``output_source`` (``%jacobian``). It is replayed, never the
    user's code, and released afterwards. What the replay cannot follow becomes one line;
    so does an unexpected error: nothing here fails the cell.
    """
    section = SymbolicSection(result)
    result.sections.append(section)
    for name in result.inputs:
        result.symbolic[name] = None
    try:
        _derive(result, section, record, namespace, output_source)
    except Unavailable as reason:
        _give_up(result, section, f"symbolic: {reason}; numbers only")
    except (Exception, RuleBug, OutOfTime) as error:  # noqa: BLE001 - a bug here, not the cell's
        _give_up(result, section, f"symbolic: the replay failed unexpectedly "
                 f"({_describe(error)}); numbers only")
    finally:
        if record is not None:
            record.release()
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


def _derive(result, section, record, namespace, output_source) -> None:
    names = list(result.inputs)
    total = sum(result.inputs[n].tensor.numel() for n in names)
    if total > MAX_ENTRIES:
        raise Unavailable(f"the inputs have {total:,} entries, more than the {MAX_ENTRIES:,} a "
                          "symbolic replay makes symbols for")
    if record is None:
        raise Unavailable("no record of the torch calls to replay")
    if record.failed is not None:
        raise Unavailable(f"{record.failed}, so there is no record to replay")
    groups: dict[tuple, list[str]] = {}
    for name in names:  # inputs whose points run along the same output axes share a replay
        groups.setdefault(tuple(sorted(a for a, _ in _point_axes(result, name))), []).append(name)
    try:
        for group in groups.values():
            symbols = _group_symbols(result, group, section.symbol_tex)
            with deadline(RUN_SECONDS), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                output = _Replay(result, record, symbols, namespace, output_source).output()
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

# -- symbols ---------------------------------------------------------------------------------------
def _entry_tex(name: str, index: str | None) -> str:
    """LaTeX for one entry's symbol, from the name as the header writes it (:func:`latex.name`):
    ``x_{2}``, ``x_{1,2}``, ``\\alpha_{1,2}``; a name with a subscript of its own keeps it
    before a semicolon, ``x_{1;\\,2}``, ``w_{\\mathrm{in};\\,1,2}`` (never a double subscript);
    anything else is grouped: ``\\mathtt{x\\_\\_}_{1,2}``."""
    from ..render import latex as tex

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
    """Each input's symbol array for one replay: the group's inputs hold the same generic
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



# -- the replay ------------------------------------------------------------------------------------
class _Poison:
    """Why a tensor has no symbolic value; raised only if the output needs that value."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException):
        self.error = error


class _Replay:
    """The recorded calls re-applied to symbolic values.

    The inputs are symbols. A call's result (or the tensor it changed in place) that autograd
    tracked and that came from symbolic values gets the symbolic value of the same call;
    every other tensor is a constant, read as it was when the call was made (from the copy
    the record kept, if it changed in place later). What cannot be followed is remembered as
    a :class:`_Poison` and reported only if the output depends on it.
    """

    def __init__(self, result, record, symbols, namespace, output_source):
        self.result, self.record, self.namespace = result, record, namespace or {}
        self.output_source = output_source
        self.values: dict[int, SymTensor | _Poison] = {}
        self.inputs: dict[int, torch.Tensor] = {}
        for name, item in result.inputs.items():
            self.values[id(item.tensor)] = SymTensor(symbols[name], item.tensor.dtype, name=name)
            self.inputs[id(item.tensor)] = item.tensor
        self.copies: dict[tuple, torch.Tensor] = {}
        self.made: set[int] = set()  # tensors the record produced or changed
        for call in record.calls:
            for target, (seen, copy) in zip(call.targets, call.before):
                if copy is not None:
                    self.copies.setdefault((id(target), seen), copy)
            self.made.update(id(t) for t in tensors_in(call.result) + list(call.targets))
        self._storages: dict[int, list] | None = None
        self._foreign: dict[int, str | None] = {}

    def output(self) -> np.ndarray:
        """Replay every call; return the output's symbolic entries."""
        for call in self.record.calls:
            spend()
            self._step(call)
        return self._output_value()

    def _step(self, call) -> None:
        name, display = call_name(call.func)
        args = tensors_in((call.args, call.kwargs))
        live = [t for t in args if id(t) in self.values]
        outs = tensors_in(call.result) + list(call.targets)
        if name in DETACHING and live:
            self._poison(outs, Unsupported(display,
                                           "is not supported (it detaches from the graph)"))
            return
        if call.targets and not call.grad_enabled:
            self._untracked_write(call, display)
            return
        tracked = [t for t in outs if id(t) in call.tracked and t.is_floating_point()]
        if not tracked:
            return  # constants: the numbers the cell computed
        poisons = [self.values[id(t)] for t in live if isinstance(self.values[id(t)], _Poison)]
        if poisons or not live:
            reason = poisons[0].error if poisons else self._foreign_among(call, args)
            if reason is not None:
                self._poison(tracked, reason)
            return
        try:
            new_args, new_kwargs = self._substitute(call)
            value = replay(call.func, new_args, new_kwargs)
        except (Unsupported, Unavailable, RuleBug) as error:
            self._poison(tracked, error)
            return
        except Exception as error:  # noqa: BLE001 - reported only if the output needs it
            self._poison(tracked, RuleBug(name, error))
            return
        self._store(call, value, {id(t) for t in tracked}, name, display)

    # -- values in
    def _substitute(self, call) -> tuple[tuple, dict]:
        def swap(value, depth=0):
            if isinstance(value, torch.Tensor):
                known = self.values.get(id(value))
                return known if known is not None else self._constant(value, call)
            if depth < 4 and type(value) in (list, tuple):
                return type(value)(swap(v, depth + 1) for v in value)
            return value

        return tuple(swap(a) for a in call.args), {k: swap(v) for k, v in call.kwargs.items()}

    def _constant(self, tensor: torch.Tensor, call) -> torch.Tensor:
        """The tensor's value when the call was made (it may have changed in place since)."""
        seen, tracked = call.seen.get(id(tensor), (None, False))
        reason = self._foreign_reason(tensor) if tracked else None
        if reason is not None:
            raise Unavailable(reason)
        if seen is None or version(tensor) == seen:
            return tensor
        copy = self.copies.get((id(tensor), seen))
        if copy is None:
            raise Unavailable(f"{self._label(tensor)} was changed in place after the cell used "
                              "it, and its earlier value was not kept")
        return copy

    def _foreign_among(self, call, tensors) -> BaseException | None:
        """Why a call's arguments that required grad then cannot be constants, if so."""
        for tensor in tensors:
            reason = self._foreign_reason(tensor) \
                if call.seen.get(id(tensor), (None, False))[1] else None
            if reason is not None:
                return Unavailable(reason)
        return None

    def _foreign_reason(self, tensor: torch.Tensor) -> str | None:
        """Why a tensor computed from the inputs outside the record cannot be a constant."""
        if tensor.grad_fn is None or id(tensor) in self.values:
            return None
        if id(tensor) not in self._foreign:
            reason = None
            if any(depends_on(tensor, x) for x in self.inputs.values()):
                label = self._label(tensor)
                if id(tensor) in self.made:
                    reason = (f"{label} comes from {type(tensor.grad_fn).__name__}, which "
                              "the symbolic replay cannot follow")
                else:
                    reason = f"{label} was computed from the inputs {self._elsewhere()}"
            self._foreign[id(tensor)] = reason
        return self._foreign[id(tensor)]

    def _elsewhere(self) -> str:
        if self.output_source is None:
            return "in an earlier cell; put its computation in this cell to see the formula"
        return "before this line; put its computation in the expression to see the formula"

    def _label(self, tensor: torch.Tensor) -> str:
        for name, value in self.namespace.items():
            if value is tensor and not name.startswith("_"):
                return name
        return f"a tensor of shape {tuple(tensor.shape)}"

    # -- values out
    def _store(self, call, value, tracked: set[int], name: str, display: str) -> None:
        if call.targets:
            for target in call.targets:
                if id(target) in tracked:
                    self._set(target, value, name)
                    self._poison_sharers(target, display)
        else:
            self._assign(call.result, value, tracked, name)

    def _assign(self, result, value, tracked: set[int], name: str) -> None:
        if isinstance(result, torch.Tensor):
            if id(result) in tracked:
                self._set(result, value, name)
        elif isinstance(result, (tuple, list)) and isinstance(value, (tuple, list)) \
                and len(result) == len(value):
            for part, part_value in zip(result, value):
                self._assign(part, part_value, tracked, name)
        else:
            self._poison([t for t in tensors_in(result) if id(t) in tracked],
                         RuleBug(name, TypeError(f"{type(value).__name__} for the result")))

    def _set(self, tensor: torch.Tensor, value, name: str) -> None:
        if id(tensor) in self.inputs:  # x.requires_grad_(), x.to(x.dtype): x itself
            return
        if not isinstance(value, SymTensor) or tuple(value.shape) != tuple(tensor.shape):
            shape = tuple(value.shape) if isinstance(value, SymTensor) else type(value).__name__
            self._poison([tensor], RuleBug(name, ValueError(
                f"gave {shape} for a result of shape {tuple(tensor.shape)}")))
            return
        self.values[id(tensor)] = SymTensor(value.array, tensor.dtype)

    def _poison(self, tensors, error: BaseException) -> None:
        for tensor in tensors:
            if id(tensor) not in self.inputs:
                self.values[id(tensor)] = _Poison(error)

    def _untracked_write(self, call, display: str) -> None:
        """An in-place change under ``torch.no_grad`` (an optimizer step …): autograd does not
        see it, so a tensor that depends on the inputs has no formula afterwards."""
        for target in call.targets:
            for tensor in [target] + self._sharing(target):
                if id(tensor) in self.values and id(tensor) not in self.inputs:
                    self._poison([tensor], Unavailable(
                        f"{display} under torch.no_grad changed {self._label(tensor)}, which "
                        "depends on the inputs"))

    def _poison_sharers(self, target: torch.Tensor, display: str) -> None:
        """Views of a tensor changed in place (and what it is a view of) change with it."""
        for tensor in self._sharing(target):
            self._poison([tensor], Unsupported(
                f"{display} on a tensor that shares memory with {self._label(tensor)}",
                "is not supported (views changed in place)"))

    def _sharing(self, target: torch.Tensor) -> list:
        """Other recorded tensors on the same memory as ``target``."""
        if self._storages is None:
            self._storages = {}
            seen: set[int] = set()
            for call in self.record.calls:
                for tensor in tensors_in((call.args, call.kwargs, call.result)):
                    key = _storage(tensor)
                    if key is not None and id(tensor) not in seen:
                        seen.add(id(tensor))
                        self._storages.setdefault(key, []).append(tensor)
        key = _storage(target)
        return [t for t in self._storages.get(key, []) if t is not target] if key else []

    def _output_tensor(self) -> torch.Tensor:
        """The output among the recorded tensors: itself, or (where the result keeps only a
        detached alias of it) the last recorded tensor on the same memory with the same layout,
        preferring one with a symbolic value (``y.data`` is such a tensor too)."""
        output = self.result.output
        if id(output) in self.values or id(output) in self.made:
            return output
        key = _layout_key(output)
        if key is None:
            return output
        candidates = list(self.inputs.values()) + [
            t for call in self.record.calls for t in tensors_in(call.result) + list(call.targets)]
        matches = [t for t in candidates if _layout_key(t) == key]
        symbolic = [t for t in matches if isinstance(self.values.get(id(t)), SymTensor)]
        poisoned = [t for t in matches if id(t) in self.values]
        return (symbolic or poisoned or matches or [output])[-1]

    def _output_value(self) -> np.ndarray:
        output, name = self._output_tensor(), self.result.output_name
        value = self.values.get(id(output))
        if isinstance(value, _Poison):
            error = value.error
            raise error if isinstance(error, RuleBug) else Unavailable(str(error))
        if isinstance(value, SymTensor):
            if tuple(value.shape) != tuple(output.shape):
                raise Unavailable(f"the replay gave {name} the shape {tuple(value.shape)}, not "
                                  f"{tuple(output.shape)}")
            return value.array
        reason = self._foreign_reason(output)
        if id(output) not in self.made:
            source = self.output_source
            if source is not None and source.isidentifier():
                raise Unavailable(f"{source} is a stored tensor, computed before this line; give "
                                  "the output as an expression, e.g. "
                                  "%jacobian --symbolic (x**2).sum() wrt x")
            raise Unavailable(f"{name} was computed {self._elsewhere()}")
        if reason is not None:
            raise Unavailable(reason)
        raise Unavailable(f"in the replay, {name} does not depend on "
                          f"{', '.join(self.result.inputs)}")


def _layout_key(tensor: torch.Tensor) -> tuple | None:
    """Memory, offset, shape, strides and dtype: equal for a tensor and its detached alias."""
    memory = _storage(tensor)
    if memory is None:
        return None
    return (memory, tensor.storage_offset(), tuple(tensor.shape), tensor.stride(), tensor.dtype)


def _storage(tensor: torch.Tensor) -> int | None:
    try:
        storage = tensor.untyped_storage()
        return storage.data_ptr() if storage.nbytes() else None
    except Exception:  # noqa: BLE001 - sparse, meta …: no memory to share
        return None


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
    compared = _compare(got, expected, points, item.derivatives.dtype)
    formula.check, formula.mismatches, formula.worst = compared[:3]
    formula.undefined, formula.undefined_side = compared[3:]


class Comparison(NamedTuple):
    """How the formula's values compare with autograd's, point by point."""

    agree: bool  # no point where both give numbers that differ
    mismatches: int  # points where they differ
    worst: float  # largest finite difference there (nan if none)
    undefined: int  # other points where one side is nan/±inf and the other a number
    undefined_side: str  # "formula", "autograd" or "either"


def _compare(got: np.ndarray, expected: np.ndarray, points: int,
             dtype: torch.dtype) -> Comparison:
    """Compare the formula's values ``got`` with autograd's ``expected``, both shaped
    (points, ...).

    Close means within ``rtol`` relative or ``atol`` absolute, with ``atol = rtol`` times the
    largest finite derivative (plus the dtype's epsilon as a floor): in float32, derivatives
    that underflow next to much larger ones (sigmoid'(20) is 0 there, 2e-9 in float64) agree.
    Where both are not finite (log'(0), sqrt'(0)) they agree unless they are infinities of
    opposite signs. Where only one side is finite the formula is undefined there (the norm's
    gradient at 0: 0/0 in the formula, 0 by torch's convention): such a point is counted as
    undefined, not as a disagreement.
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
        formula_side = ~np.isfinite(got) & np.isfinite(expected)
        autograd_side = np.isfinite(got) & ~np.isfinite(expected)
    one_sided = (formula_side | autograd_side).reshape(points, -1)
    bad = (~close.reshape(points, -1) & ~one_sided).any(axis=1)
    undefined = one_sided.any(axis=1) & ~bad
    on_formula = bool(formula_side.reshape(points, -1)[undefined].any())
    on_autograd = bool(autograd_side.reshape(points, -1)[undefined].any())
    worst = difference[finite & ~close]
    return Comparison(not bool(bad.any()), int(bad.sum()),
                      float(worst.max()) if worst.size else math.nan, int(undefined.sum()),
                      "either" if on_formula and on_autograd else
                      "autograd" if on_autograd else "formula")


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


_UNDEFINED = {
    "formula": "the formula gives nan or inf where autograd gives a number (torch's value there)",
    "autograd": "autograd gives nan or inf where the formula gives a number",
    "either": "one side gives nan or inf where the other gives a number",
}


class SymbolicSection:
    """The formulas above the numeric matrices (``position = "top"``), or one line saying why
    there are none. LaTeX is prepared once, under a size and time cap."""

    position = "top"

    def __init__(self, result):
        self.result = result
        self.note: str | None = None
        self.function = None
        self.formulas: dict[str, Formula] = {}
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
        n, k = formula.points, formula.undefined
        where = "at the point" if n == 1 else f"at all {n:,} points"
        if formula.check is None:
            return "not checked against autograd"
        if formula.check and not k:
            return f"agrees with autograd {where}"
        undefined = _UNDEFINED[formula.undefined_side]
        if formula.check:
            if k == n:
                return f"the formula is undefined {where}: {undefined}"
            return (f"agrees with autograd at {n - k:,} of {n:,} points; undefined at the "
                    f"other {k:,}: {undefined}")
        worst = f" (largest difference {formula.worst:.3g})" if math.isfinite(formula.worst) \
            else ""
        more = f"; undefined at {k:,} more: {undefined}" if k else ""
        return (f"warning: the formula for {formula.name} disagrees with autograd at "
                f"{formula.mismatches:,} of {n:,} points{worst}{more}")

    def prepare(self) -> None:
        from ..render import latex as tex

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
        from ..render import latex as tex

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
