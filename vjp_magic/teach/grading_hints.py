"""The verdicts' kinds and hints of :mod:`vjp_magic.teach.grading`: what to do, in one or two
sentences.

Each verdict's sentences, in the cell's names (the answer's, the output's, the input's),
never the expected numbers; the code they name between backticks (the verdict makes them
:class:`~vjp_magic.core.marked.Marked`: plain text as a ``str``, code spans when shown), and
every shape said with whose it is ("``ans`` has shape (4,); the derivatives have shape
(2, 4)"). ``case`` is the grading's :class:`~.grading.Case`:
``case.answer`` (how the answer is called), ``case.a`` (its values), ``case.exp`` (the
:class:`~.grading_targets.Expected` derivatives of one input).
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING

import torch

from ..core.errors import operand
from ..core.marked import code, marked
from ..core.textenum import TextEnum
from ..core.validation import parameter_expression
from ..render.numbers import plural

if TYPE_CHECKING:
    from .grading import Case


class VerdictKind(TextEnum):
    """What a verdict found: ``correct`` or the mistake recognised. A ``str`` that reads as its
    name everywhere (compare, hash, print, repr), so ``verdict.kind == "summed"`` holds (the
    kinds are stable names: tests and notebooks rely on them); ``words``: how the verdict
    says it."""

    CORRECT = "correct"
    WRONG_SHAPE = "wrong-shape"
    SUMMED = "summed"
    ONE_COMPONENT = "one-component"
    ACCUMULATED = "accumulated"
    SCALED = "scaled"
    TRANSPOSED = "transposed"
    RESHAPED = "reshaped"
    WRONG_AT_POINTS = "wrong-at-points"
    WRONG = "wrong"
    MISSING = "missing"
    OUTPUT_DIFFERS = "output-differs"
    GRAPH_CUT = "graph-cut"
    UNDECIDED = "undecided"  # within a rounding bound, not proved within the tolerance

    @property
    def words(self) -> str:
        return _WORDS[self]


_WORDS = {
    VerdictKind.CORRECT: "correct",
    VerdictKind.WRONG_SHAPE: "wrong shape",
    VerdictKind.SUMMED: "the components summed",
    VerdictKind.ONE_COMPONENT: "one component only",
    VerdictKind.ACCUMULATED: marked("`.grad` accumulated over backward calls"),
    VerdictKind.SCALED: "a multiple of the derivatives",
    VerdictKind.TRANSPOSED: "transposed",
    VerdictKind.RESHAPED: "right numbers, wrong arrangement",
    VerdictKind.WRONG_AT_POINTS: "wrong at some points",
    VerdictKind.WRONG: "not the derivatives",
    VerdictKind.MISSING: "no answer",
    VerdictKind.OUTPUT_DIFFERS: "the output is not the exercise's f",
    VerdictKind.GRAPH_CUT: "the graph is cut between the input and the output",
    VerdictKind.UNDECIDED: "rounding cannot be told from an error here",
}
KINDS = {kind.value: kind.words for kind in VerdictKind}  # kind → the verdict's words
SHOWN_POINTS = 3  # points named in a hint
FORM_WORDS = {  # how a right answer was read: the layout named in "✓ correct (…)"
    "gradient": "the gradient", "jacobian": "the full Jacobian",
    "per-row": "one Jacobian per row", "flat-jacobian": "the full Jacobian (flattened to m × n)",
    "compressed": "the compressed rows (one per colour) of the Jacobian",
}


NEAR = 1e-2  # a wrong answer this close (relative) may be a right formula's rounding


def _rounding_note(case: Case) -> str:
    """Where the answer is in a low precision and every wrong entry is within :data:`NEAR`
    of the right value: a right formula computed with cancellation can be that far off
    (``(exp(2x) - 1)/(exp(2x) + 1)`` for tanh at x = 1e-4), which the answer's values alone
    cannot tell from a wrong one; the verdict stays ✗, the hint says how to tell."""
    if case.exp.rtol < 1e-6:  # float64 throughout: rounding is not it
        return ""
    target, a = case.fitting()
    if target is None:
        return ""
    wrong = target.mismatch(a)
    expected, got = target.value[wrong], a[wrong]
    if not bool(wrong.any()) or not bool(torch.isfinite(got).all() & torch.isfinite(expected)
                                          .all()):
        return ""
    relative = (got - expected).abs() / expected.abs().clamp_min(torch.finfo(torch.float64).tiny)
    if float(relative.max()) > NEAR:
        return ""
    return (" Each wrong entry is within 1% of the right value: if the formula is right, "
            "rounding can make it so (a difference of nearly equal numbers, as `1 - cos(x)` "
            "at small x); computed in float64 (`.double()`), it would show.")


def shape_text(shape) -> str:
    """``(2, 3)``, ``(3,)``: a shape as Python prints it."""
    return "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"


def _point_text(x: str, item, point) -> str:
    """``x[17]``, ``x[:, 3]``: the input's entries at one point."""
    at = dict(zip(item.pairing.in_axes, point if isinstance(point, tuple) else (point,)))
    index = [str(at[b]) if b in at else ":" for b in range(item.dim())]
    while index and index[-1] == ":":
        index.pop()
    return f"{x}[{', '.join(index)}]"


class Hints:
    """One or two sentences per verdict."""

    @staticmethod
    def names(case: Case) -> tuple[str, str, str]:
        """The answer as code spells it (``answer``, ``answer['x']`` for a dict's entry,
        where it has no name: from Python), the output's name, the input's as the cell writes
        it (a module's parameter ``model[0].weight``, never its key ``model.0.weight``)."""
        answer = case.answer.removeprefix("the ")
        return answer, case.exp.result.output_name, parameter_expression(case.exp.name)

    @staticmethod
    def subject(case: Case) -> str:
        """The answer as a sentence names it: as code (```ans```, ```x.grad```), or in words
        ("the answer")."""
        return case.answer if case.answer.startswith("the ") else code(case.answer)

    def expected(self, case: Case) -> str:
        _, y, x = self.names(case)
        exp = case.exp
        if exp.count == 1:
            return f"shape {shape_text(exp.shape)}, like {x}"
        return (f"shape {shape_text(exp.shape)}: an {x}-shaped gradient for each of {y}'s "
                f"{exp.count:,} components")

    def how(self, case: Case, coloured: bool = False) -> str:
        """How to compute them with backward (``coloured``: on a sparse Jacobian, the
        coloured passes the display teaches rather than one per component)."""
        _, y, x = self.names(case)
        exp = case.exp
        if getattr(case, "exam", False):  # the code would be the exercise's answer
            return ("work out which backward calls give them (exam mode: the code is "
                    "the exercise)")
        if exp.count == 1:
            v = "" if exp.result.output.numel() == 1 else f"gradient=torch.ones_like({y})"
            return f"`{operand(y)}.backward({v})` puts them in `{x}.grad`"
        sparse = getattr(exp, "coloured", None) if coloured else None
        columns = sparse is not None and str(getattr(sparse, "mode", "rows")) == "columns"
        if columns:  # the forward-mode passes the display teaches
            return (f"use one forward-mode pass per colour of {x}'s entries ({sparse.count:,} "
                    f"colours), as the code beneath the result does: row c of Ju is J·u for "
                    f"u = 1 on the entries of {x} of colour c, and J[p, q] is Ju[colour[q], p]")
        if sparse is not None and sparse.count < exp.count:  # the colours the display teaches
            return (f"use one backward per colour, not per component: v = 1 on the entries "
                    f"of {y} of one colour ({sparse.count:,} colours, as the code beneath "
                    f"the result makes them), `retain_graph=True`; row c of g is `{x}.grad` "
                    f"for colour c, and each derivative J[p, q] is g[colour[p], q]")
        along = " (ones along the point axes)" if exp.item.pairing else ""
        return (f"use one backward per component of {y}, v one-hot on it{along}, "
                f"`retain_graph=True`; store `{x}.grad.clone()` and zero `{x}.grad` each time")

    def correct(self, case: Case, form: str) -> str:
        _, y, x = self.names(case)
        what = FORM_WORDS.get(form, "the derivatives")
        return f"Right: {self.subject(case)} is {what} of {y} with respect to {x}."

    def wrong_shape(self, case: Case) -> str:
        _, y, x = self.names(case)
        others = [shape_text(s) for s in case.exp.accepted()[1:]]
        also = f" ({' or '.join(others)} is accepted too)" if others else ""
        return (f"{self.subject(case)} has shape {shape_text(case.a.shape)}; the derivatives "
                f"of {y} with respect to {x} have {self.expected(case)}{also}.")

    def wrong(self, case: Case, coloured: bool = False) -> str:
        _, y, x = self.names(case)
        a = self.subject(case)
        if not bool(case.a.any()):
            if re.fullmatch(rf"\s*{re.escape(x)}\.grad\s*", case.answer):  # x.grad itself
                return (f"{a} is all zeros: it was zeroed (`{x}.grad.zero_()`, or "
                        f"`zero_grad()`) after the backward that filled it. Grade it before "
                        f"zeroing, or grade a copy taken then: `{x}.grad.clone()`.")
            return (f"{a} is all zeros. If it holds `{x}.grad`, store `{x}.grad.clone()`: "
                    f"`{x}.grad.zero_()` afterwards empties the tensor stored too.")
        return (f"{a} has the right shape but is not the derivatives of {y} with respect to "
                f"{x}. Check the formula; {self.how(case, coloured)}.{_rounding_note(case)}")

    def summed(self, case: Case, times: int | None, vanish: bool = False) -> str:
        _, y, x = self.names(case)
        a = self.subject(case)
        exp = case.exp
        if vanish:
            what = (f"{a} is vᵀJ with v = ones, the column sums of the Jacobian of {y}: "
                    f"zero (to rounding), as {y}'s components add up to a constant (as "
                    "softmax's do), not the gradient of any entry of it.")
        elif exp.item.pairing or exp.x.numel() == 1:
            what = (f"{a} is the derivatives of {y}'s {exp.count:,} components added up: "
                    "v = ones sums them.")
        else:
            what = (f"{a} is vᵀJ with v = ones, the column sums of the Jacobian of {y}, not "
                    f"the gradient of any entry of {y}.")
        again = (f" It was also added up {times} times: zero `{x}.grad` between backward calls."
                 if times else "")
        return f"{what} To get each component's own, {self.how(case, True)}.{again}"

    def summed_by_hand(self, case: Case, calls) -> str:
        a = self.subject(case)
        return (f"{a} adds up the results of {_calls(calls)}, one "
                f"component each: keep them apart instead, {self.how(case)}.")

    def one_component(self, case: Case, index: int) -> str:
        _, y, x = self.names(case)
        a = self.subject(case)
        exp = case.exp
        return (f"{a} holds the derivatives of one component of {y} (index {index} in the "
                f"code, row-major) of {exp.count:,}. {a[0].upper()}{a[1:]} has shape "
                f"{shape_text(case.a.shape)}; the derivatives of {y} with respect to {x} have "
                f"{self.expected(case)}. To get them, {self.how(case)}.")

    def accumulated(self, case: Case, times: int | None, calls, logged: bool = False) -> str:
        """``calls``: the backward calls summed, as the log shows them; else ``times``, read
        off the numbers (``logged``: the cell's log shows no backward that made them)."""
        _, _, x = self.names(case)
        a = self.subject(case)
        if calls is not None:
            before = " and what it held before this cell" if calls.with_before else ""
            what = (f"{a} is the sum of {_calls(calls)}{before}: "
                    "backward adds to `.grad`.")
            return (f"{what} Zero it before each backward (`{x}.grad.zero_()` or "
                    f"`{x}.grad = None`), or run it once.")
        if logged:
            return (f"{a} is {times} times the derivatives, as `{x}.grad` is after {times} "
                    f"backward calls without emptying it (`{x}.grad = None` before each), or after "
                    f"one with a v {times} times too large; no backward of this cell made it: "
                    f"look for a factor {times} in the formula.")
        return (f"{a} is {times} times the derivatives: backward adds to `.grad`, so {times} "
                f"backward calls without zeroing in between give this (zero it before each: "
                f"`{x}.grad.zero_()` or `{x}.grad = None`); so does a v {times} times too "
                "large.")

    def scaled(self, case: Case, times: int, calls) -> str:
        """``times`` × the derivatives where the log shows no .grad accumulated."""
        _, y, _ = self.names(case)
        what = f"{self.subject(case)} is {times} times the derivatives"
        where = f" (line{'s' if len(calls.lines) > 1 else ''} " \
            f"{', '.join(map(str, calls.lines))})" if calls.lines else ""
        if calls.summed > 1:
            return (f"{what}: it adds up {calls.summed} backward calls' results{where}, each "
                    "already the whole derivative. Keep one of them.")
        return (f"{what}, with one backward{where}: the v given to it (or the tensor it "
                f"differentiated) is {times} times too large. For the derivatives of {y}, "
                f"{self.how(case)}.")

    def rows_added(self, case: Case, how: str, zeroed: bool = False) -> str:
        _, _, x = self.names(case)
        a = self.subject(case)
        what = (f"Each row of {a} adds the previous rows to its own" if how == "running"
                else f"Every row of {a} is the same tensor, all components added up")
        if zeroed:  # the log shows .grad zeroed between the calls: the rows were added by hand
            return what + ": each row should hold one component's derivatives only."
        return (what + f": `{x}.grad` was not zeroed between the backward calls. Store "
                f"`{x}.grad.clone()` and zero `{x}.grad` after each one.")

    def rows_one_tensor(self, case: Case, index: int) -> str:
        _, _, x = self.names(case)
        return (f"Every row of {self.subject(case)} holds the last component's derivatives "
                f"(index {index} in the code): the rows are one tensor, as when `{x}.grad` is "
                f"stored without `.clone()` and the next backward overwrites it. Store "
                f"`{x}.grad.clone()`.")

    def transposed(self, case: Case, order) -> str:
        a, y, x = self.names(case)
        inverse = tuple(sorted(range(len(order)), key=order.__getitem__))
        fix = f"{operand(a)}.T" if len(order) == 2 else f"{operand(a)}.permute{inverse}"
        axes = (f"{y}'s component axes come first, then {x}'s" if case.exp.count > 1
                else f"it is shaped like {x}")
        return (f"{self.subject(case)} has the right numbers with its axes swapped: {axes}. "
                f"Use `{fix}`.")

    def reshaped(self, case: Case, shape) -> str:
        a, _, _ = self.names(case)
        if shape is not None:
            return (f"{self.subject(case)} has shape {shape_text(case.a.shape)}, with the right "
                    f"numbers in the right order; the derivatives have {self.expected(case)}. "
                    f"Use `{operand(a)}.reshape{shape_text(shape)}`.")
        return (f"{self.subject(case)} has the right numbers in the wrong places: `reshape` "
                "and `view` keep the row-major order and never swap axes. Use `.T` or "
                "`.permute(...)` to swap axes.")

    def at_points(self, case: Case, points, total: int) -> str:
        _, _, x = self.names(case)
        a = self.subject(case)
        shown = ", ".join(_point_text(x, case.exp.item, p) for p in points[:SHOWN_POINTS])
        more = ", …" if len(points) > SHOWN_POINTS else ""
        return (f"{a} is right at {total - len(points):,} of {total:,} points, wrong at "
                f"{len(points):,}: {shown}{more}. Look at what is special about {x} there "
                f"(a zero, a kink, a division, a branch of the formula).{_rounding_note(case)}")

    def missing(self, case: Case, answer, calls=()) -> str:
        """``calls``: the cell's calls that reached the input (``.kind``, ``.line``)."""
        _, _, x = self.names(case)
        a = self.subject(case)
        if isinstance(answer, torch.Tensor):
            kind = ("bool" if answer.dtype == torch.bool else
                    "complex" if answer.is_complex() else "")
            dtype = str(answer.dtype).removeprefix("torch.")
            return (f"{a} is a tensor of {dtype}, {kind + ' values' if kind else 'its dtype'}, "
                    "not real numbers: the derivatives are floating-point numbers (e.g. "
                    "float32); grade those.")
        if answer is not None:
            return f"{a} is a {type(answer).__name__}, not a tensor of real numbers."
        lines = ", ".join(str(c.line) for c in calls if c.line is not None)
        at = f" (line {lines})" if lines else ""
        other = re.fullmatch(r"\s*([^\W\d]\w*)\.grad\s*", case.answer)
        if other and other.group(1) != x:  # h.grad beside input x: h is likely computed
            h = other.group(1)
            return (f"{a} is None: backward fills `.grad` of leaves only (tensors made, not "
                    f"computed). If {h} is computed from another tensor, call "
                    f"`{h}.retain_grad()` before the backward to keep `{h}.grad`.")
        tensor = case.x
        if isinstance(tensor, torch.Tensor) and not tensor.is_leaf \
                and not tensor.retains_grad:  # h = x * 2: backward fills leaves' .grad only
            return (f"{a} is None: {x} is not a leaf (it is computed from another tensor), "
                    f"and backward fills `.grad` of leaves only. Call `{x}.retain_grad()` "
                    f"before the backward to keep `{x}.grad`, or differentiate with "
                    f"`torch.autograd.grad(..., {x})`.")
        if any(c.kind == "backward" for c in calls):
            return (f"{a} is None, though a backward reached {x}{at}: `{x}.grad` was set to "
                    f"None afterwards (`{x}.grad = None`, or `zero_grad()`). Grade a copy "
                    f"taken before that: `{x}.grad.clone()`.")
        if calls:
            return (f"{a} is None: `torch.autograd.grad`{at} returns the gradients and leaves "
                    f"`{x}.grad` alone. Grade what it returned.")
        return (f"{a} is None: nothing was computed into it (`{x}.grad` stays None until a "
                f"backward reaches {x}).")


HINTS = Hints()


def _calls(calls) -> str:
    """``2 backward calls (lines 3, 5)``, ``1 backward call (line 2)``: the calls summed."""
    lines = list(calls.lines or ())
    where = f" (line{'s' if len(lines) > 1 else ''} {', '.join(map(str, lines))})" \
        if lines else ""
    return f"{plural(calls.summed, 'backward call')}{where}"

