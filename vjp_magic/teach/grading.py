"""Grading a student's answer against the true derivatives (``%%vjp --check``, ``check``).

:func:`grade` compares an answer with the derivatives of a :class:`~vjp_magic.core.result.
VJPResult` and says, as a :class:`Verdict`, whether it is right and, if not, which classic
mistake made it (its :class:`~.grading_hints.VerdictKind`), recognised from the numbers
themselves (the answer the mistake builds): shape first, then summed components, one
component, k times the answer, axes swapped or reshaped, wrong at some points only. The
cell's backward log only confirms a diagnosis (``.grad`` accumulated over calls, rather than a
v k times too large or results summed by hand), never overrides what the numbers say. The
layouts a course uses are right answers where their shape says which they are: the full
Jacobian, flattened to m × n, or one Jacobian per row (N, m, d). Hints never spell the
expected numbers; :func:`verdict_sections` shows them only when asked to reveal.
:mod:`.grading_against` grades against the exercise's own f instead of the cell's graph.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from ..core.marked import marked, markup
from ..render.document import Section, paragraph
from ..render.options import RenderOptions
from ..render.sections import derivative_formulas
from ..core.tagging import depends_on
from ..run.accumulation import summed_calls
from ..run.backward_log import reaches
from .grading_hints import HINTS as _hints
from .grading_hints import KINDS, NEAR, VerdictKind, shape_text
from .sparse_dense import densified, is_sparse
from .grading_reference import (MAX_COMPONENTS, Refinement, answer_rounding, float64_floor,
                                 refinement, rounding_bound)
from .grading_targets import Expected, Target, as_tensor, fits

COMPARED_ENTRIES = 1 << 26  # entries compared looking for the one component an answer is


@dataclass(frozen=True)
class Verdict:
    """The verdict on one answer: ``correct``, the mistake's ``kind`` (a
    :class:`~.grading_hints.VerdictKind`, equal to its name: ``"summed"``) and a ``hint`` that
    says what to do (plain text; a :class:`~vjp_magic.core.marked.Marked` one whose code the
    display sets as code); ``points`` the wrong points (``"wrong-at-points"``)."""

    correct: bool
    kind: VerdictKind
    hint: str
    points: tuple = ()
    name: str | None = None  # the input graded against
    expected_shape: tuple = ()  # r.derivatives[name].shape
    answer_shape: tuple | None = None
    form: str | None = None  # "derivatives", "gradient" or "jacobian": how it was read
    factor: int | None = None  # k: the answer is k times what it should be (or what it is)
    component: int | None = None  # "one-component": which one (row-major)
    lines: tuple = ()  # "accumulated": the cell lines of the backward calls summed
    calls: int | None = None  # "scaled": the backward calls the answer came from
    against: str | None = None  # graded against the exercise's f (how it was given)
    answer_kind: VerdictKind | None = None  # with ``against``: the answer's own verdict
    # a right answer: the shape of the layout it was read as, and the input's (x.grad's); for
    # :attr:`shape_note` only (two verdicts are equal whatever they are)
    form_shape: tuple | None = dataclasses.field(default=None, compare=False)
    input_shape: tuple | None = dataclasses.field(default=None, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", VerdictKind(self.kind))  # "summed" is accepted too

    @property
    def headline(self) -> str:
        """"✓ correct", with the layout where it is not the plain one, or "✗ <the mistake>"."""
        if self.correct:
            layout = _layout_words(self.form, self.answer_shape)
            return "✓ correct" + (f" ({layout})" if layout else "")
        if self.kind == VerdictKind.UNDECIDED:  # neither ✓ nor ✗: not proved either way
            return f"? {self.kind.words}"
        if self.kind == VerdictKind.SCALED and self.factor:
            once = " with one backward" if self.calls == 1 else ""
            return f"✗ {self.factor}× the answer{once}"
        return marked(f"✗ {markup(self.kind.words)}")  # its code (.grad) set as code

    @property
    def shape_note(self) -> str | None:
        """A right answer whose shape differs from its layout's by axes of size 1 (``(5, 1)``
        for derivatives shaped ``(5,)``): the numbers are right, but used beside the input
        (``x - lr * ans``) it broadcasts; what to, or that it does not. None otherwise."""
        if not self.correct or self.form_shape is None or self.answer_shape is None \
                or tuple(self.answer_shape) == tuple(self.form_shape):
            return None
        given, own = shape_text(self.answer_shape), shape_text(self.form_shape)
        beside = self.input_shape if self.input_shape is not None else self.form_shape
        x = self.name or "the input"
        try:
            spread = shape_text(torch.broadcast_shapes(tuple(self.answer_shape), tuple(beside)))
        except RuntimeError:
            spread = None
        what = (f"combined with {x} (shape {shape_text(beside)}), as in {x} - lr * answer, it "
                + ("does not broadcast: PyTorch raises a size mismatch" if spread is None else
                   f"keeps shape {spread}" if spread == shape_text(beside) else
                   f"broadcasts to shape {spread}, not {shape_text(beside)}"))
        dims = ", ".join(map(str, self.form_shape))
        return (f"The numbers are right, but the answer has shape {given} where they have "
                f"shape {own}: {what}. Reshape it with .reshape({dims}).")


def _layout_words(form: str | None, shape) -> str | None:
    """How a right answer was laid out, where it is not the derivatives' own layout."""
    if form == "jacobian":
        return "as the full Jacobian"
    if form == "compressed":
        return "as the compressed rows, one per colour"
    if form == "flat-jacobian" and shape and len(shape) == 2:
        return f"as the full Jacobian, flattened to {shape[0]} × {shape[1]}"
    if form == "per-row" and shape:
        return f"one Jacobian per row, shape {shape_text(shape)}"
    return None


# -- recognising the mistake ------------------------------------------------------------------
@dataclass
class Case:
    """One answer being graded: its values ``a``, what it should be (``exp``), and how the
    hints call it (``answer``); ``log`` the cell's backward calls."""

    a: torch.Tensor | None
    exp: Expected
    answer: str  # how hints call the answer ("ans", "x.grad")
    log: object = None
    leaf: torch.Tensor | None = None  # the tensor the log's calls reached (default: exp.x)
    exam: bool = False  # exam mode: hints never spell the code that computes the answer

    def verdict(self, kind: VerdictKind, hint: str, **found) -> Verdict:
        shape = None if self.a is None else tuple(self.a.shape)
        hint = marked("T" + hint[1:] if hint.startswith("the answer") else hint)
        if kind == VerdictKind.CORRECT and shape is not None and "form_shape" not in found:
            found["form_shape"] = next((s for s, _ in self.exp.forms()
                                        if fits(self.a, s) is not None), None)
            found["input_shape"] = tuple(self.x.shape)
        return Verdict(kind == VerdictKind.CORRECT, kind, hint, name=self.exp.name,
                     expected_shape=self.exp.shape, answer_shape=shape, **found)

    def fitting(self):
        """(target, the answer in its shape) for the accepted form the answer's shape fits."""
        for shape, make in self.exp.forms():
            a = fits(self.a, shape)
            target = make() if a is not None else None
            if target is not None:
                return target, a
        return None, None

    @property
    def x(self) -> torch.Tensor:
        return self.exp.x if self.leaf is None else self.leaf

    def calls_from(self, value):
        """The log's last backward calls whose sum ``value`` (x-shaped) is, or None."""
        if self.log is None or value.shape != self.x.shape:
            return None
        return summed_calls(value.to(self.x.device), self.exp.name, self.x, self.log)

    def accumulation(self, value):
        """The log's backward calls ``value`` (x-shaped) is the sum of, when several and
        ``.grad`` really held their sum (not zeroed between them)."""
        found = self.calls_from(value)
        if found is None or (found.summed == 1 and not found.with_before):
            return None
        return found if self.grad_kept(found) else None

    def grad_kept(self, found) -> bool:
        """Whether ``.grad`` went on holding the sum across the calls ``found`` adds up (the
        log's copy of ``.grad`` before each is not None nor zero; unknown counts as kept)."""
        calls = [c for c in self.log.records if reaches(c, self.x)][-found.summed:]
        for call in calls[0 if found.with_before else 1:]:
            if id(self.x) in call.before:
                held = call.before[id(self.x)]
                if held is None or not bool(held.any()):
                    return False
        return True

    def zeroed(self) -> bool:
        """Whether the log shows ``.grad`` zeroed (or None) before a later backward call."""
        if self.log is None:
            return False
        calls = [c for c in self.log.records if reaches(c, self.x)]
        return any(id(self.x) in c.before and (c.before[id(self.x)] is None
                                               or not bool(c.before[id(self.x)].any()))
                   for c in calls[1:])

    def calls_to_input(self) -> list:
        """The cell's successful backward / autograd.grad calls that went to the input."""
        if self.log is None:
            return []
        x = self.x
        return [c for c in self.log.records if c.error is None and (
            reaches(c, x) if c.kind == "backward" else
            any(t is x for t in (c.inputs or ())) and any(
                isinstance(t, torch.Tensor) and depends_on(t, x) for t in c.tensors))]


def _same_shape(case: Case) -> Verdict | None:
    """An answer shaped like one of the accepted forms: right, or which mistake."""
    target, a = case.fitting()
    if target is None:
        return None
    if target.matches(a):
        return case.verdict(VerdictKind.CORRECT, _hints.correct(case, target.form),
                            form=target.form)
    for recognise in (_accumulated, _swapped, _at_points):
        found = recognise(case, target, a)
        if found is not None:
            return found
    # points whose values came from the colours: the hint teaches the display's passes
    return case.verdict(VerdictKind.WRONG, _hints.wrong(case, coloured=case.exp.item.has_points),
                        form=target.form)


def _accumulated(case: Case, target: Target, a) -> Verdict | None:
    """k times the answer (a .grad accumulated over calls where the log says so, else a
    factor), the sum of several backward calls, or rows added up in turn."""
    summed = case.accumulation(a)
    if summed is not None:  # the log confirms: .grad held the sum of several calls
        return case.verdict(VerdictKind.ACCUMULATED, _hints.accumulated(case, None, summed),
                            form=target.form, factor=summed.summed, lines=summed.lines)
    k = target.multiple(a)
    calls = None if k is None else case.calls_from(a)
    if k is not None and calls is None:  # the numbers alone: either cause, named both
        return case.verdict(VerdictKind.ACCUMULATED,
                            _hints.accumulated(case, k, None, case.log is not None),
                            form=target.form, factor=k)
    if k is not None:  # the log shows the calls it came from, .grad not accumulated
        return case.verdict(VerdictKind.SCALED, _hints.scaled(case, k, calls), form=target.form,
                            factor=k, lines=calls.lines if calls else (),
                            calls=calls.summed if calls else None)
    return _rows_added(case, target, a)


def _rows_added(case: Case, target: Target, a) -> Verdict | None:
    """Rows that add up the previous ones, are all the same sum, or all the last one."""
    exp = case.exp
    if target.form != "derivatives" or exp.count < 2:
        return None
    flat = exp.d.reshape(exp.count, -1)
    tol = target.tol.reshape(exp.count, -1) * exp.count
    for how, value in (("running", flat.cumsum(0)), ("same", flat.sum(0).expand_as(flat))):
        candidate = Target(target.form, value.reshape(a.shape), tol.reshape(a.shape))
        if candidate.matches(a):
            return case.verdict(VerdictKind.ACCUMULATED,
                                _hints.rows_added(case, how, case.zeroed()), form=target.form)
    last = exp.count - 1
    value = flat[last].expand_as(flat).reshape(a.shape)
    if Target(target.form, value, target.tol).matches(a) and bool(flat[last].any()):
        return case.verdict(VerdictKind.ONE_COMPONENT, _hints.rows_one_tensor(case, last),
                            form=target.form, component=last)
    return None


def _orders(dim: int):
    return [p for p in itertools.permutations(range(dim)) if p != tuple(range(dim))] \
        if dim <= 5 else []


def _swapped(case: Case, target: Target, a) -> Verdict | None:
    """The right numbers with axes swapped (``.T``), or read in another order (reshape)."""
    for order in _orders(a.dim()):
        moved = target.permuted(order)
        if moved.matches(a):
            return case.verdict(VerdictKind.TRANSPOSED, _hints.transposed(case, order),
                                form=target.form)
        if moved.reshaped(a.shape).matches(a):
            return case.verdict(VerdictKind.RESHAPED, _hints.reshaped(case, None), form=target.form)
    return None


def _at_points(case: Case, target: Target, a) -> Verdict | None:
    """Right at most points, wrong at a few (half of them at most): which ones. An answer
    wrong at most points is not the derivative, right where it is by chance (x**3 for
    3x**2 agrees at 0 only): no hunt for kinks that are not there."""
    axes = target.point_axes
    if not axes or not case.exp.item.has_points:
        return None
    wrong = target.mismatch(a).movedim(axes, tuple(range(len(axes))))
    wrong = wrong.reshape(wrong.shape[:len(axes)] + (-1,)).any(-1)
    bad = wrong.nonzero()
    if not 0 < 2 * len(bad) <= wrong.numel():
        return None
    # one conversion each: iterating a million-row tensor takes seconds
    points = tuple(bad[:, 0].tolist()) if len(axes) == 1 else tuple(map(tuple, bad.tolist()))
    return case.verdict(VerdictKind.WRONG_AT_POINTS, _hints.at_points(case, points, wrong.numel()),
                        points=points, form=target.form)


def _x_shaped(case: Case) -> Verdict | None:
    """An x-shaped answer where each point has several components: their sum, or one."""
    exp = case.exp
    a = fits(case.a, tuple(exp.x.shape)) if exp.count > 1 else None
    if a is None:
        return None
    summed = exp.summed()
    vanish = summed.vanishes()  # the column sums are 0: no multiple of them can be told
    if summed.matches(a):
        calls = case.calls_from(a)
        if calls is not None and calls.summed > 1 and case.grad_kept(calls):
            return case.verdict(VerdictKind.ACCUMULATED, _hints.accumulated(case, None, calls),
                                form="gradient", lines=calls.lines, factor=calls.summed)
        if calls is not None and calls.summed > 1 and not vanish:  # zeroed: summed by hand
            return case.verdict(VerdictKind.SUMMED, _hints.summed_by_hand(case, calls),
                                form="gradient", lines=calls.lines)
        return case.verdict(VerdictKind.SUMMED, _hints.summed(case, None, vanish),
                            form="gradient")
    k = None if vanish else summed.multiple(a)
    if k is not None:
        return case.verdict(VerdictKind.SUMMED, _hints.summed(case, k), form="gradient", factor=k)
    for index in range(min(exp.count, COMPARED_ENTRIES // max(1, exp.x.numel()))):
        if exp.component(index).matches(a):
            return case.verdict(VerdictKind.ONE_COMPONENT, _hints.one_component(case, index),
                                form="gradient", component=index)
    return None


def _arranged(case: Case) -> Verdict | None:
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
            return case.verdict(VerdictKind.RESHAPED, _hints.reshaped(case, target.value.shape),
                                form=target.form)
        for order in _orders(target.value.dim()):
            moved = target.permuted(order)
            fitted = fits(a, tuple(moved.value.shape))
            if fitted is not None and moved.matches(fitted):
                return case.verdict(VerdictKind.TRANSPOSED, _hints.transposed(case, order),
                                    form=target.form)
            if moved.reshaped(a.shape).matches(a):
                return case.verdict(VerdictKind.RESHAPED, _hints.reshaped(case, None),
                                    form=target.form)
    return None


def _compressed(case: Case) -> Verdict | None:
    """The compressed rows the display teaches (a sparse Jacobian: one row per colour, vᵀJ
    for v = 1 on the entries of that colour): right where each row is a colour's, in the
    display's numbering or any other (rows matched to colours one to one), else wrong."""
    exp = case.exp
    a = next((fits(case.a, s) for s in exp.compressed_shapes()
              if fits(case.a, s) is not None), None)
    if a is None:
        return None
    expected = exp.compressed()
    a = a.reshape(expected.value.shape)
    if expected.matches(a) or _rows_matched(expected, a):
        return case.verdict(VerdictKind.CORRECT, _hints.correct(case, "compressed"),
                            form="compressed")
    return case.verdict(VerdictKind.WRONG, _hints.wrong(case, coloured=True), form="compressed")


def _rows_matched(expected: Target, a: torch.Tensor) -> bool:
    """Whether the rows of ``a`` are those of ``expected`` in some order (colours numbered
    otherwise): each row of ``a`` matches exactly one unused row of ``expected``."""
    left = list(range(a.shape[0]))
    for row in a:
        hit = next((k for k in left if not bool(
            Target("compressed", expected.value[k], expected.tol[k]).mismatch(row).any())), None)
        if hit is None:
            return False
        left.remove(hit)
    return True


# -- grading ----------------------------------------------------------------------------------
def _input_name(result, name, answer_name, a) -> str:
    """The input graded against: named, read off ``x.grad``, or the one the shape fits."""
    if name is not None or len(result.inputs) == 1:
        return result.input_name(name)
    match = re.fullmatch(r"\s*([A-Za-z_]\w*)\.grad\s*", answer_name or "")
    if match and match.group(1) in result.inputs:
        return match.group(1)
    for candidate in result.inputs:
        exp = Expected(result, candidate, None)
        if a is not None and any(fits(a, s) is not None for s in exp.accepted()):
            return candidate
    return next(iter(result.inputs))


def _against_fitting(answer, a: torch.Tensor, result, again: dict) -> Verdict:
    """Graded against the input its name or shape says; where it is wrong there but right
    for another input its shape fits, it is right for that one."""
    first = _input_name(result, None, again["answer_name"], a)
    verdict = grade(answer, result, first, **again)
    for other in ([] if verdict.correct else _fitting_inputs(result, a)):
        if other != first:
            found = grade(answer, result, other, **again)
            if found.correct:
                return found
    return verdict


def _fitting_inputs(result, a: torch.Tensor) -> list[str]:
    """The inputs whose accepted shapes ``a`` fits, in the result's order."""
    return [n for n in result.inputs
            if any(fits(a, s) is not None for s in Expected(result, n, None).accepted())]


def _per_input(answer, result, name) -> dict | None:
    """An answer per input: a mapping name → answer, or one entry per input in order."""
    if name is not None or len(result.inputs) < 2:
        return None
    if isinstance(answer, Mapping):
        return dict(answer)
    if isinstance(answer, (list, tuple)) and len(answer) == len(result.inputs):
        shapes = {tuple(getattr(t, "shape", ())) for t in answer}
        if len(shapes) > 1 or any(fits(as_tensor(t)[0], tuple(i.shape)) is not None
                                  for t, i in zip(answer, result.inputs.values())
                                  if as_tensor(t)[0] is not None):
            return dict(zip(result.inputs, answer))
        # one shape: stacked (rows of one input's answer) where that fits an input's form,
        # else one answer per input where each fits its own (a full Jacobian per input)
        stacked = as_tensor(answer)[0]
        if stacked is not None and not any(_fits_a_form(stacked, result, n)
                                           for n in result.inputs) and \
                all(_fits_a_form(as_tensor(t)[0], result, n)
                    for t, n in zip(answer, result.inputs)):
            return dict(zip(result.inputs, answer))
    return None


def _each(several: dict, result, answer_name, options: dict) -> list[Verdict]:
    """The verdict on each input's answer (``several``: name → answer)."""
    return [grade(value, result, key, answer_name=f"{answer_name or 'the answer'}[{key!r}]",
                  **options) for key, value in several.items()]


def _in_another_order(answer, result, answer_name, options: dict, ordered: bool,
                      wrong: Verdict) -> Verdict | None:
    """A sequence with one answer per input, right in another order than the inputs'. Right
    only where the order is the cell's binding order (``ordered`` False: the student need not
    know it) and the answers' shapes fit no other order; else (the classic swapped ∂/∂x,
    ∂/∂w of a product, or an order the user gave) ✗, the hint naming the order read and the
    dict that says which is which. None where no other order is right."""
    names = list(result.inputs)
    if len(names) > 4:  # (24 orders at most)
        return None
    for order in itertools.permutations(names):
        if list(order) == names:
            continue
        verdicts = _each(dict(zip(order, answer)), result, answer_name, options)
        if not all(v.correct for v in verdicts):
            continue
        a = f"`{answer_name}`" if answer_name else "the answer"
        by_name = "{" + ", ".join(f"{n!r}: ..." for n in order) + "}"
        read = f"{a} holds the derivatives with respect to {', '.join(order)}, in that order"
        if not ordered and _only_fitting_order(answer, result) == order:
            return dataclasses.replace(verdicts[0], hint=marked(
                f"Right: {read} (the inputs are {', '.join(names)} in the order the cell binds "
                f"them; a dict, `{by_name}`, says which is which)."))
        return dataclasses.replace(wrong, hint=marked(
            f"{read[0].upper()}{read[1:]}, where the inputs are {', '.join(names)}: a dict, "
            f"`{by_name}`, says which is which."))
    return None


def _only_fitting_order(answer, result) -> tuple | None:
    """The one order of the inputs whose shapes the answers fit (None: none, or several)."""
    fitting = [order for order in itertools.permutations(result.inputs)
               if all(_fits_a_form(as_tensor(t)[0], result, n) for t, n in zip(answer, order))]
    return fitting[0] if len(fitting) == 1 else None


def _fits_a_form(a, result, name: str) -> bool:
    """Whether ``a`` has the shape of a form an answer for input ``name`` may take: x's, the
    derivatives' (components + x's) or the full Jacobian's (output's + x's)."""
    if a is None:
        return False
    x = tuple(result.inputs[name].shape)
    forms = (x, tuple(result.inputs[name].derivatives.shape), tuple(result.output.shape) + x)
    return any(fits(a, form) is not None for form in forms)


def grade(answer, result, name: str | None = None, *, log=None,
          answer_name: str | None = None, record=None, output=None,
          leaves: Mapping | None = None, exam: bool = False, ordered: bool = True,
          answer_record=None, exact=None) -> Verdict:
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
    when not given; without a graph, the plain comparison stands). ``leaves`` (name →
    tensor): the tensors the log's calls reached, where ``result``'s inputs are copies.
    ``exam``: exam mode, whose hints say what is wrong but never the code that answers.
    ``ordered``: the inputs' order was given; False for the cell's binding order (a sequence
    right in the one order its shapes fit is right there). ``exact`` (name → float64
    derivatives shaped like ``result``'s, or None; called only for an answer the plain
    comparison calls wrong): the exercise's f computed in float64, which proves what the
    graph's rounding bound cannot. A low-precision answer still
    wrong is right where its own rounding explains the difference
    (:func:`~.grading_reference.answer_rounding`: its calls in ``answer_record``, default
    ``record``, replayed in float64 from ``leaves``, or its own graph)."""
    coloured = {n: item.sparse for n, item in result.inputs.items() if is_sparse(item)}
    result = densified(result)  # a sparse Jacobian small enough to show whole: dense
    several = _per_input(answer, result, name)
    if several is not None:
        options = dict(log=log, record=record, output=output, leaves=leaves, exam=exam,
                       answer_record=answer_record, exact=exact)
        verdicts = _each(several, result, answer_name, options)
        wrong = next((v for v in verdicts if not v.correct), None)
        if wrong is not None and not isinstance(answer, Mapping):
            reordered = _in_another_order(answer, result, answer_name, options, ordered, wrong)
            if reordered is not None:
                return reordered
        return wrong or verdicts[0]
    a, dtype = as_tensor(answer)
    if name is None and len(result.inputs) > 1 and a is not None:
        return _against_fitting(answer, a, result, dict(
            log=log, answer_name=answer_name, record=record, output=output, leaves=leaves,
            exam=exam, answer_record=answer_record, exact=exact))
    name = _input_name(result, name, answer_name, a)
    leaf = (leaves or {}).get(name)
    case = Case(a, Expected(result, name, dtype, coloured=coloured.get(name)),
                answer_name or "the answer", log, leaf, exam)
    if a is None:
        return case.verdict(VerdictKind.MISSING,
                            _hints.missing(case, answer, case.calls_to_input()))
    found = _recognised(case, a.to(case.exp.device))
    if found.correct or found.kind == VerdictKind.WRONG_SHAPE:
        return found
    return _graded_again(found, case, (answer, dtype), result, (record, output, exact),
                         answer_record or record,
                         leaves or {n: item.tensor for n, item in result.inputs.items()},
                         coloured.get(name))


def _graded_again(found: Verdict, case: Case, given: tuple, result, computed: tuple,
                  answer_record, inputs: Mapping, coloured) -> Verdict:
    """A plain ✗ (``found``) looked at again: against float64 derivatives (``computed``: the
    record and output :func:`refinement` takes, and ``exact``, f's float64 derivatives), then
    within the answer's own rounding (:func:`_own_rounding`; ``given``: the answer as given
    and its dtype). ✓ only where the answer is proved within the tolerance: of the float64
    derivatives, or its formula replayed in float64. Where only a rounding bound would
    excuse the difference (autograd's, read off the graph; or, a low-precision answer no
    farther from the float64 values than autograd's own value, the answer's own rounding,
    unknown), the verdict says rounding cannot be told from an error
    (:data:`VerdictKind.UNDECIDED`): never ✓."""
    (answer, dtype), name = given, case.exp.name
    refined = _exact_refinement(result, name, computed) or refinement(
        result, name, *computed[:2])
    again = case if refined is None else \
        Case(case.a.to(refined.values.device), Expected(result, name, dtype, refined, coloured),
             case.answer, case.log, case.leaf, case.exam)
    strict = case if refined is None or not refined.proved else \
        Case(again.a, Expected(result, name, dtype, refined._replace(
            slack=refined.floor if refined.floor is not None else
            torch.zeros_like(refined.slack)), coloured),
            case.answer, case.log, case.leaf, case.exam)
    target, fitted = strict.fitting()
    if strict is not case and target is not None and target.matches(fitted):
        return strict.verdict(VerdictKind.CORRECT, _hints.correct(strict, target.form),
                              form=target.form)
    own = _own_rounding(strict, answer, answer_record, inputs, again)
    if own is not None:
        return own
    target, fitted = again.fitting()
    if refined is not None and target is not None and target.matches(fitted):
        if not refined.proved:  # within autograd's rounding as bounded from the graph
            return _undecided(again, target.form, dtype, autograd=True)
        if dtype is not None and dtype != torch.float64:  # as near as autograd's own value
            return _undecided(again, target.form, dtype, autograd=False, near=True)
    # a mistake the plain comparison recognised stands; a plain "wrong" may be recognised now
    return _recognised(strict if refined is not None and refined.proved else again, again.a) \
        if found.kind == VerdictKind.WRONG and refined is not None else found


def _exact_refinement(result, name: str, computed: tuple) -> Refinement | None:
    """A proved :class:`~.grading_reference.Refinement` from ``exact`` (``computed[2]``:
    float64 derivatives of the exercise's f), the slack autograd's error there, the floor
    float64's rounding as bounded from f's float32 graph (``computed[1]``), or None."""
    exact = computed[2]
    found = exact(name) if callable(exact) else None
    item = result.inputs[name]
    if not isinstance(found, torch.Tensor) or is_sparse(item) or \
            found.shape != item.derivatives.shape:
        return None
    d64 = found.detach().to(item.derivatives.device, torch.float64)
    graph = computed[1] if computed[1] is not None else result.output
    bound = None
    if isinstance(graph, torch.Tensor) and graph.grad_fn is not None and \
            len(result.gradients[name]) <= MAX_COMPONENTS:
        try:
            bound = rounding_bound(graph, item.tensor, list(result.gradients[name]))
        except Exception:  # noqa: BLE001 - a freed graph …: the float64 values as they are
            bound = None
    return Refinement(d64, (item.derivatives.detach().double() - d64).abs(), True,
                      float64_floor(bound, item.derivatives.dtype, d64))


def _undecided(case: Case, form: str, dtype, autograd: bool, near: bool = False) -> Verdict:
    """Neither ✓ nor ✗: the answer differs from the derivatives by more than the tolerance
    but by less than a first-order bound on a rounding (``autograd``: autograd's own, its
    terms cancelling; else the answer's own computation's), which cannot be told apart from
    an error without a float64 computation (in float64 itself: none finer)."""
    if autograd:
        dtype = case.exp.item.derivatives.dtype
        kind = str(dtype).removeprefix("torch.")
        why = (f"the answer differs from autograd's {kind} derivatives by more than the "
               "tolerance, but by less than autograd's own rounding could (terms that cancel "
               "in its computation)")
        how = ("they are float64 already, the finest precision torch computes in") \
            if dtype == torch.float64 else _float64_ways(in_cell=case.log is not None)
    elif near:  # (the float64 derivatives are known: the answer's computation is not)
        kind = str(dtype).removeprefix("torch.")
        own = str(case.exp.item.derivatives.dtype).removeprefix("torch.")
        why = ("the answer differs from the derivatives computed in float64 by more than the "
               f"tolerance, but by no more than autograd's own {own} value does: a right "
               f"formula computed in {kind} can be that far off (terms that cancel), and the "
               "answer's formula cannot be computed again in float64 here")
        how = "compute the answer in float64 (`.double()`) to grade it"
    else:
        kind = str(dtype or torch.float32).removeprefix("torch.")
        why = ("the answer differs from the derivatives by more than the tolerance, but by "
               f"less than the rounding of its own {kind} computation could, and its formula "
               "cannot be computed again in float64 here")
        how = "compute the answer in float64 (`.double()`) to grade it"
    return case.verdict(VerdictKind.UNDECIDED, f"Rounding cannot be told from an error here: "
                        f"{why}. Neither right nor wrong is proved: {how}.", form=form)


def _float64_ways(in_cell: bool) -> str:
    """How the user, where they are (a ``%%vjp --check`` cell, or ``check`` from Python),
    has float64 derivatives to grade against."""
    if in_cell:  # (its record was not replayed: a cell would not help)
        return ("grade it against the exercise's function (`--against f`), which is computed "
                "again in float64; or compute the output from inputs in float64 (`x.double()`)")
    return ("grade it against the exercise's function (`check(answer, f, x)`), which is "
            "computed again in float64; or compute the output from inputs in float64 "
            "(`x.double()`); or grade it in a `%%vjp` cell, whose record is replayed in "
            "float64")


def _own_rounding(case: Case, answer, record, inputs: Mapping,
                  loose: Case | None = None) -> Verdict | None:
    """✓ where the answer's formula, replayed in float64
    (:func:`~.grading_reference.answer_rounding`), is right against ``case``'s (proved)
    values; :func:`_undecided` where only a first-order bound on the answer's own rounding
    (no replay), or only ``loose``'s unproved slack, would make it right; else None."""
    if case.exp.rtol < 1e-6 or not isinstance(answer, torch.Tensor):
        return None  # (float64 throughout: rounding is not it)
    found = answer_rounding(answer, record, inputs)
    rounding, exact = (found.bound, found.exact) if found is not None else (None, None)
    given = answer.detach().to(torch.float64)
    if rounding is None or rounding.shape != given.shape or not bool(
            torch.isfinite(given).all() & (rounding <= NEAR * given.abs()).all()):
        return None  # (an overflow, or rounding that left no digit right: not a ✓)
    loose = case if loose is None else loose
    for shape, make in case.exp.forms():
        a, r = fits(case.a, shape), fits(rounding.to(case.a.device), shape)
        target = make() if a is not None and r is not None else None
        if target is None:
            continue
        if exact is not None:  # the formula itself, replayed in float64, must be right: its
            # rounding moves no wrong formula ((x + 1e6) - 1e6 + 0.05) onto the right values
            nearer = fits(exact.to(case.a.device, case.a.dtype), shape)
            if nearer is not None and target.matches(nearer):
                hint = _hints.correct(case, target.form)
                return case.verdict(
                    VerdictKind.CORRECT, f"{hint} It differs from the exact values only by "
                    "the rounding of its own "
                    f"{str(answer.dtype).removeprefix('torch.')} computation.",
                    form=target.form)
            judged = _form_target(loose, shape)
            if nearer is not None and judged is not None and judged.matches(nearer):
                return _undecided(loose, target.form, answer.dtype, autograd=True)
            return None
        # a first-order bound only (no replay): each entry moved toward the right value by it
        # may reach it, but a wrong formula's error hides in it as well as rounding does
        judged = _form_target(loose, shape) or target
        nearer = a + torch.minimum((judged.value - a).abs(), r) * torch.sign(judged.value - a)
        if judged.matches(nearer):
            return _undecided(loose, target.form, answer.dtype, autograd=False)
        return None
    return None


def _form_target(case: Case, shape) -> Target | None:
    """``case``'s target for the accepted form of ``shape``, or None."""
    for form_shape, make in case.exp.forms():
        if form_shape == shape:
            return make()
    return None


def _recognised(case: Case, a: torch.Tensor) -> Verdict:
    """The verdict on the answer ``a``: right, the mistake recognised, or just wrong (a
    VJPUsageError where it is too large to grade: :meth:`.Expected.refuse_too_large`)."""
    case.exp.refuse_too_large(a)
    case.a = a
    for recognise in (_same_shape, _x_shaped, _arranged, _compressed):
        found = recognise(case)
        if found is not None:
            return found
    return case.verdict(VerdictKind.WRONG_SHAPE, _hints.wrong_shape(case))


def verdict_sections(verdict: Verdict, result, reveal: bool = False,
                     options: RenderOptions | None = None) -> tuple[Section, ...]:
    """The verdict as document sections: "✓ correct", or the mistake and its hint; the
    expected derivatives only with ``reveal``."""
    blocks: list = [paragraph(verdict.headline, strong=True)]
    if not verdict.correct:
        blocks.append(paragraph(verdict.hint))
    elif verdict.shape_note is not None:
        blocks.append(paragraph(verdict.shape_note))
    if reveal and verdict.name in result.inputs:
        shown = densified(result, [verdict.name])
        if is_sparse(shown.inputs[verdict.name]):
            blocks.append(paragraph(f"The expected answer is r.derivatives[{verdict.name!r}] "
                                    "(sparse: too large to show whole here)."))
        else:
            blocks.append(paragraph("The expected answer:"))
            blocks.extend(derivative_formulas(shown, verdict.name,
                                              options or RenderOptions()))
    return (Section(tuple(blocks)),)


__all__ = ["KINDS", "Case", "Verdict", "VerdictKind", "grade", "verdict_sections"]
