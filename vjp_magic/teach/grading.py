"""Grading a student's answer against the true derivatives (``%%vjp --check``, ``check``).

:func:`grade` compares an answer with the derivatives of a :class:`~vjp_magic.core.result.
VJPResult` and says, as a :class:`Check`, whether it is right and, if not, which classic
mistake made it, recognised from the numbers themselves (the answer the mistake builds):
shape first, then summed components, one component, ``.grad`` accumulated, axes swapped or
reshaped, wrong at some points only. Hints never spell the expected numbers;
:func:`check_sections` shows them only when asked to reveal.
"""
from __future__ import annotations

import itertools
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace

import torch

from ..core.tolerances import tolerances
from ..render.document import Section, paragraph
from ..render.options import RenderOptions
from ..render.sections import derivative_formulas
from ..run.mistakes import summed_calls
from .grading_hints import HINTS as _hints
from .grading_hints import KINDS
from .grading_reference import refinement
from .grading_targets import Target as _Target
from .grading_targets import as_tensor as _as_tensor
from .grading_targets import fits as _fits
from .grading_targets import target as _target

JACOBIAN_LIMIT = 1 << 22  # entries: a full-Jacobian answer is compared up to this size
COMPARED_ENTRIES = 1 << 26  # entries compared looking for the one component an answer is


@dataclass(frozen=True)
class Check:
    """The verdict on one answer: ``correct``, the mistake's ``kind`` (:data:`KINDS`) and a
    ``hint`` that says what to do; ``points`` the wrong points (``"wrong-at-points"``)."""

    correct: bool
    kind: str
    hint: str
    points: tuple = ()
    name: str | None = None  # the input graded against
    expected_shape: tuple = ()  # r.derivatives[name].shape
    answer_shape: tuple | None = None
    form: str | None = None  # "derivatives", "gradient" or "jacobian": how it was read
    factor: int | None = None  # k: the answer is k times what it should be (or what it is)
    component: int | None = None  # "one-component": which one (row-major)
    lines: tuple = ()  # "accumulated": the cell lines of the backward calls summed


# -- the answer and what it should be ---------------------------------------------------------
class _Expected:
    """The derivatives of one input in every accepted form, made on demand. ``refined``:
    (values, slack) from :func:`~.grading_reference.refinement`, where autograd's own
    float32 rounding must not count against an answer."""

    def __init__(self, result, name: str, answer_dtype, refined=None):
        self.result, self.name = result, name
        self.item = item = result.inputs[name]
        self.x = item.tensor
        self.comp = tuple(result.component_shape(name))
        self.count = math.prod(self.comp)
        self.d = item.derivatives.detach().double()
        self.slack = None
        if refined is not None:
            self.d, self.slack = (t.to(self.d.device) for t in refined)
        dtypes = [item.derivatives.dtype] + ([answer_dtype] if answer_dtype else [])
        self.rtol = max(tolerances(t).backward for t in dtypes)
        self.points = tuple(len(self.comp) + b for b in item.pairing.in_axes)
        self.shape = tuple(self.d.shape)
        self.jacobian_shape = tuple(result.output.shape) + tuple(self.x.shape)

    def derivatives(self) -> _Target:
        return _target("derivatives", self.d, self.d.abs(), self.points, self.rtol, self.slack)

    def gradient(self) -> _Target | None:
        """x-shaped, for one component per point (or a scalar output)."""
        return self.component(0) if self.count == 1 else None

    def jacobian(self) -> _Target | None:
        size = math.prod(self.jacobian_shape)
        if self.jacobian_shape == self.shape or size > JACOBIAN_LIMIT:
            return None
        j = self._full(self.d)
        slack = None if self.slack is None else self._full(self.slack)
        return _target("jacobian", j, j.abs(), (), self.rtol, slack)

    def _full(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` (shaped like the derivatives) placed in the full Jacobian."""
        if self.slack is None:
            return self.result.jacobian(self.name).detach().double()
        item = replace(self.item, derivatives=values)
        placed = replace(self.result, inputs={**self.result.inputs, self.name: item})
        return placed.jacobian(self.name).detach().double()

    def summed(self) -> _Target:
        """What v = ones gives: the components' derivatives added up (x-shaped)."""
        axes = tuple(range(len(self.comp)))
        slack = None if self.slack is None else self.slack.sum(axes)
        return _target("gradient", self.d.sum(axes), self.d.abs().sum(axes),
                       self.item.pairing.in_axes, self.rtol, slack)

    def component(self, k: int) -> _Target:
        """Component ``k``'s derivatives (row-major), x-shaped."""
        rows = (self.count,) + tuple(self.x.shape)
        value = self.d.reshape(rows)[k]
        slack = None if self.slack is None else self.slack.reshape(rows)[k]
        return _target("gradient", value, value.abs(), self.item.pairing.in_axes, self.rtol,
                       slack)

    def accepted(self) -> list[tuple]:
        shapes = [self.shape]
        if self.count == 1 and tuple(self.x.shape) != self.shape:
            shapes.append(tuple(self.x.shape))
        if self.jacobian_shape != self.shape and math.prod(self.jacobian_shape) <= JACOBIAN_LIMIT:
            shapes.append(self.jacobian_shape)
        return shapes


# -- recognising the mistake ------------------------------------------------------------------
@dataclass
class _Case:
    """One answer being graded: its values, what it should be, and the words for both."""

    a: torch.Tensor | None
    exp: _Expected
    answer: str  # how hints call the answer ("ans", "x.grad")
    log: object = None

    def verdict(self, kind: str, hint: str, **found) -> Check:
        shape = None if self.a is None else tuple(self.a.shape)
        hint = "T" + hint[1:] if hint.startswith("the answer") else hint
        return Check(kind == "correct", kind, hint, name=self.exp.name,
                     expected_shape=self.exp.shape, answer_shape=shape, **found)

    def fitting(self):
        """(target, the answer in its shape) for the accepted form the answer's shape fits."""
        exp = self.exp
        for shape, make in ((exp.shape, exp.derivatives), (tuple(exp.x.shape), exp.gradient),
                            (exp.jacobian_shape, exp.jacobian)):
            a = _fits(self.a, shape)
            target = make() if a is not None else None
            if target is not None:
                return target, a
        return None, None

    def accumulation(self, value):
        """The log's backward calls ``value`` (x-shaped) is the sum of, when several."""
        x = self.exp.x
        if self.log is None or value.shape != x.shape:
            return None
        found = summed_calls(value, self.exp.name, x, self.log)
        return found if found is not None and (found.summed > 1 or found.with_before) else None


def _same_shape(case: _Case) -> Check | None:
    """An answer shaped like one of the accepted forms: right, or which mistake."""
    target, a = case.fitting()
    if target is None:
        return None
    if target.matches(a):
        return case.verdict("correct", _hints.correct(case, target.form), form=target.form)
    for recognise in (_accumulated, _swapped, _at_points):
        found = recognise(case, target, a)
        if found is not None:
            return found
    return case.verdict("wrong", _hints.wrong(case), form=target.form)


def _accumulated(case: _Case, target: _Target, a) -> Check | None:
    """k times the answer, the sum of several backward calls, or rows added up in turn."""
    exp, summed = case.exp, case.accumulation(a)
    k = target.multiple(a)
    if k is not None or summed is not None:
        lines = summed.lines if summed is not None else ()
        return case.verdict("accumulated", _hints.accumulated(case, k, summed), form=target.form,
                            factor=k or (summed.summed if summed else None), lines=lines)
    if target.form != "derivatives" or exp.count < 2:
        return None
    flat = exp.d.reshape(exp.count, -1)
    tol = target.tol.reshape(exp.count, -1) * exp.count
    for how, value in (("running", flat.cumsum(0)), ("same", flat.sum(0).expand_as(flat))):
        candidate = _Target(target.form, value.reshape(a.shape), tol.reshape(a.shape))
        if candidate.matches(a):
            return case.verdict("accumulated", _hints.rows_added(case, how), form=target.form)
    return None


def _orders(dim: int):
    return [p for p in itertools.permutations(range(dim)) if p != tuple(range(dim))] \
        if dim <= 5 else []


def _swapped(case: _Case, target: _Target, a) -> Check | None:
    """The right numbers with axes swapped (``.T``), or read in another order (reshape)."""
    for order in _orders(a.dim()):
        moved = target.permuted(order)
        if moved.matches(a):
            return case.verdict("transposed", _hints.transposed(case, order), form=target.form)
        if moved.reshaped(a.shape).matches(a):
            return case.verdict("reshaped", _hints.reshaped(case, None), form=target.form)
    return None


def _at_points(case: _Case, target: _Target, a) -> Check | None:
    """Right at most points, wrong at a few: which ones."""
    axes = target.point_axes
    if not axes or not case.exp.item.has_points:
        return None
    wrong = target.mismatch(a).movedim(axes, tuple(range(len(axes))))
    wrong = wrong.reshape(wrong.shape[:len(axes)] + (-1,)).any(-1)
    bad = wrong.nonzero()
    if not 0 < len(bad) < wrong.numel():
        return None
    # one conversion each: iterating a million-row tensor takes seconds
    points = tuple(bad[:, 0].tolist()) if len(axes) == 1 else tuple(map(tuple, bad.tolist()))
    return case.verdict("wrong-at-points", _hints.at_points(case, points, wrong.numel()),
                        points=points, form=target.form)


def _x_shaped(case: _Case) -> Check | None:
    """An x-shaped answer where each point has several components: their sum, or one."""
    exp = case.exp
    a = _fits(case.a, tuple(exp.x.shape)) if exp.count > 1 else None
    if a is None:
        return None
    summed = exp.summed()
    if summed.matches(a):
        calls = case.accumulation(a)
        if calls is not None and calls.summed > 1:
            return case.verdict("accumulated", _hints.accumulated(case, None, calls),
                                form="gradient", lines=calls.lines, factor=calls.summed)
        return case.verdict("summed", _hints.summed(case, None), form="gradient")
    k = summed.multiple(a)
    if k is not None:
        return case.verdict("summed", _hints.summed(case, k), form="gradient", factor=k)
    for index in range(min(exp.count, COMPARED_ENTRIES // max(1, exp.x.numel()))):
        if exp.component(index).matches(a):
            return case.verdict("one-component", _hints.one_component(case, index),
                                form="gradient", component=index)
    return None


def _arranged(case: _Case) -> Check | None:
    """The right number of entries in another shape: transposed, or reshaped."""
    exp, a = case.exp, case.a
    targets = [exp.derivatives]
    if a.numel() == math.prod(exp.jacobian_shape) != math.prod(exp.shape):
        targets.append(exp.jacobian)
    for make in targets:
        target = make()
        if target is None or target.value.numel() != a.numel():
            continue
        if target.reshaped(a.shape).matches(a):
            return case.verdict("reshaped", _hints.reshaped(case, target.value.shape),
                                form=target.form)
        for order in _orders(target.value.dim()):
            moved = target.permuted(order)
            fitted = _fits(a, tuple(moved.value.shape))
            if fitted is not None and moved.matches(fitted):
                return case.verdict("transposed", _hints.transposed(case, order),
                                    form=target.form)
            if moved.reshaped(a.shape).matches(a):
                return case.verdict("reshaped", _hints.reshaped(case, None), form=target.form)
    return None


# -- grading ----------------------------------------------------------------------------------
def _input_name(result, name, answer_name, a) -> str:
    """The input graded against: named, read off ``x.grad``, or the one the shape fits."""
    if name is not None or len(result.inputs) == 1:
        return result.input_name(name)
    match = re.fullmatch(r"\s*([A-Za-z_]\w*)\.grad\s*", answer_name or "")
    if match and match.group(1) in result.inputs:
        return match.group(1)
    for candidate in result.inputs:
        exp = _Expected(result, candidate, None)
        if a is not None and any(_fits(a, s) is not None for s in exp.accepted()):
            return candidate
    return next(iter(result.inputs))


def _per_input(answer, result, name) -> dict | None:
    """An answer per input: a mapping name → answer, or one entry per input in order."""
    if name is not None or len(result.inputs) < 2:
        return None
    if isinstance(answer, Mapping):
        return dict(answer)
    if isinstance(answer, (list, tuple)) and len(answer) == len(result.inputs):
        shapes = {tuple(getattr(t, "shape", ())) for t in answer}
        if len(shapes) > 1 or any(_fits(_as_tensor(t)[0], tuple(i.tensor.shape)) is not None
                                  for t, i in zip(answer, result.inputs.values())
                                  if _as_tensor(t)[0] is not None):
            return dict(zip(result.inputs, answer))
    return None


def grade(answer, result, name: str | None = None, *, log=None,
          answer_name: str | None = None, record=None, output=None) -> Check:
    """Grade ``answer`` against ``result``'s derivatives with respect to input ``name``.

    Accepted: ``r.derivatives[name]`` (component axes + x's shape), the full Jacobian
    (output shape + x's shape), for one component per point an x-shaped gradient; a
    list/tuple of tensors is stacked; axes of size 1 may differ. With several inputs, a
    mapping name → answer (or one answer per input, in order) is graded input by input.
    ``log`` (the cell's :class:`~vjp_magic.run.guard.BackwardLog`) names the backward calls
    an accumulated answer adds up; ``answer_name`` is how the hint calls the answer.

    An answer the plain comparison calls wrong is compared again where autograd's own float32
    value may be the imprecise one (:mod:`.grading_reference`): with ``record`` (the cell's
    :class:`~vjp_magic.run.record.OpRecord`) against float64 derivatives of its replay, else
    within a bound on autograd's rounding read off ``output``'s graph (``result.output``'s
    when not given; without a graph, the plain comparison stands).
    """
    several = _per_input(answer, result, name)
    if several is not None:
        checks = [grade(value, result, key, log=log, record=record, output=output,
                        answer_name=f"{answer_name or 'the answer'}[{key!r}]")
                  for key, value in several.items()]
        return next((c for c in checks if not c.correct), checks[0])
    a, dtype = _as_tensor(answer)
    name = _input_name(result, name, answer_name, a)
    case = _Case(a, _Expected(result, name, dtype), answer_name or "the answer", log)
    if a is None:
        return case.verdict("missing", _hints.missing(case, answer))
    found = _recognised(case, a.to(case.exp.d.device))
    if found.correct or found.kind == "wrong-shape":
        return found
    refined = refinement(result, name, record, output)
    if refined is None:
        return found
    again = _Case(a.to(refined[0].device), _Expected(result, name, dtype, refined),
                  case.answer, log)
    target, fitted = again.fitting()
    if target is not None and target.matches(fitted):
        return again.verdict("correct", _hints.correct(again, target.form), form=target.form)
    # a mistake the plain comparison recognised stands; a plain "wrong" may be recognised now
    return _recognised(again, again.a) if found.kind == "wrong" else found


def _recognised(case: _Case, a: torch.Tensor) -> Check:
    """The verdict on the answer ``a``: right, the mistake recognised, or just wrong."""
    case.a = a
    for recognise in (_same_shape, _x_shaped, _arranged):
        found = recognise(case)
        if found is not None:
            return found
    return case.verdict("wrong-shape", _hints.wrong_shape(case))


def check_sections(check: Check, result, reveal: bool = False,
                   options: RenderOptions | None = None) -> tuple[Section, ...]:
    """The verdict as document sections: "✓ correct", or the mistake and its hint; the
    expected derivatives only with ``reveal``."""
    mark = "✓ correct" if check.correct else f"✗ {KINDS.get(check.kind, check.kind)}"
    blocks: list = [paragraph(mark, strong=True)]
    if not check.correct:
        blocks.append(paragraph(check.hint))
    if reveal and check.name in result.inputs:
        blocks.append(paragraph("The expected answer:"))
        blocks.extend(derivative_formulas(result, check.name, options or RenderOptions()))
    return (Section(tuple(blocks)),)


__all__ = ["Check", "KINDS", "check_sections", "grade"]
