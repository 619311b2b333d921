"""The verdicts' kinds and hints of :mod:`vjp_magic.teach.grading`: what to do, in one or two
sentences.

Each verdict's sentences, in the cell's names (the answer's, the output's, the input's),
never the expected numbers. ``case`` is the grading's :class:`~.grading.Case`:
``case.answer`` (how the answer is called), ``case.a`` (its values), ``case.exp`` (the
:class:`~.grading_targets.Expected` derivatives of one input).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..core.textenum import TextEnum

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
    TRANSPOSED = "transposed"
    RESHAPED = "reshaped"
    WRONG_AT_POINTS = "wrong-at-points"
    WRONG = "wrong"
    MISSING = "missing"

    @property
    def words(self) -> str:
        return _WORDS[self]


_WORDS = {
    VerdictKind.CORRECT: "correct",
    VerdictKind.WRONG_SHAPE: "wrong shape",
    VerdictKind.SUMMED: "the components summed",
    VerdictKind.ONE_COMPONENT: "one component only",
    VerdictKind.ACCUMULATED: ".grad accumulated over backward calls",
    VerdictKind.TRANSPOSED: "transposed",
    VerdictKind.RESHAPED: "right numbers, wrong arrangement",
    VerdictKind.WRONG_AT_POINTS: "wrong at some points",
    VerdictKind.WRONG: "not the derivatives",
    VerdictKind.MISSING: "no answer",
}
KINDS = {kind.value: kind.words for kind in VerdictKind}  # kind → the verdict's words
SHOWN_POINTS = 3  # points named in a hint


def shape_text(shape) -> str:
    """``(2, 3)``, ``(3,)``: a shape as Python prints it."""
    return "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"


def _point_text(x: str, item, point) -> str:
    """``x[17]``, ``x[:, 3]``: the input's entries at one point."""
    at = dict(zip(item.pairing.in_axes, point if isinstance(point, tuple) else (point,)))
    index = [str(at[b]) if b in at else ":" for b in range(item.tensor.dim())]
    while index and index[-1] == ":":
        index.pop()
    return f"{x}[{', '.join(index)}]"


class Hints:
    """One or two sentences per verdict."""

    @staticmethod
    def names(case: Case) -> tuple[str, str, str]:
        return case.answer, case.exp.result.output_name, case.exp.name

    def expected(self, case: Case) -> str:
        _, y, x = self.names(case)
        exp = case.exp
        if exp.count == 1:
            return f"shape {shape_text(exp.shape)}, like {x}"
        return (f"shape {shape_text(exp.shape)}: an {x}-shaped gradient for each of {y}'s "
                f"{exp.count:,} components")

    def how(self, case: Case) -> str:
        """How to compute them with backward."""
        _, y, x = self.names(case)
        exp = case.exp
        if exp.count == 1:
            v = "" if exp.result.output.numel() == 1 else f"gradient=torch.ones_like({y})"
            return f"{y}.backward({v}) puts them in {x}.grad"
        along = " (ones along the point axes)" if exp.item.pairing else ""
        return (f"use one backward per component of {y}, v one-hot on it{along}, "
                f"retain_graph=True; store {x}.grad.clone() and zero {x}.grad each time")

    def correct(self, case: Case, form: str) -> str:
        a, y, x = self.names(case)
        what = {"jacobian": "the full Jacobian", "gradient": "the gradient"}.get(
            form, "the derivatives")
        return f"Right: {a} is {what} of {y} with respect to {x}."

    def wrong_shape(self, case: Case) -> str:
        a, y, x = self.names(case)
        others = [shape_text(s) for s in case.exp.accepted()[1:]]
        also = f" ({' or '.join(others)} is accepted too)" if others else ""
        return (f"{a} has shape {shape_text(case.a.shape)}; the derivatives of {y} with "
                f"respect to {x} have {self.expected(case)}{also}.")

    def wrong(self, case: Case) -> str:
        a, y, x = self.names(case)
        if not bool(case.a.any()):
            return (f"{a} is all zeros. If it holds {x}.grad, store {x}.grad.clone(): "
                    f"{x}.grad.zero_() afterwards empties the tensor stored too.")
        return (f"{a} has the right shape but is not the derivatives of {y} with respect to "
                f"{x}. Check the formula; {self.how(case)}.")

    def summed(self, case: Case, times: int | None) -> str:
        a, y, x = self.names(case)
        exp = case.exp
        if exp.item.pairing or exp.x.numel() == 1:
            what = (f"{a} is the derivatives of {y}'s {exp.count:,} components added up: "
                    "v = ones sums them.")
        else:
            what = (f"{a} is vᵀJ with v = ones, the column sums of the Jacobian of {y}, not "
                    f"the gradient of any entry of {y}.")
        again = (f" It was also added up {times} times: zero {x}.grad between backward calls."
                 if times else "")
        return f"{what} To get each component's own, {self.how(case)}.{again}"

    def one_component(self, case: Case, index: int) -> str:
        a, y, _ = self.names(case)
        exp = case.exp
        return (f"{a} holds the derivatives of one component of {y} (number {index}, "
                f"row-major) of {exp.count:,}. The answer has {self.expected(case)}: "
                f"{self.how(case)}.")

    def accumulated(self, case: Case, times: int | None, calls) -> str:
        a, _, x = self.names(case)
        if calls is not None:
            where = f" (lines {', '.join(map(str, calls.lines))})" if calls.lines else ""
            before = " and what it held before this cell" if calls.with_before else ""
            what = (f"{a} is the sum of {calls.summed} backward calls{where}{before}: "
                    "backward adds to .grad.")
        else:
            what = f"{a} is {times} times the derivatives: backward adds to .grad."
        return (f"{what} Zero it before each backward ({x}.grad.zero_() or {x}.grad = None), "
                "or run it once.")

    def rows_added(self, case: Case, how: str) -> str:
        a, _, x = self.names(case)
        what = (f"Each row of {a} adds the previous rows to its own" if how == "running"
                else f"Every row of {a} is the same tensor, all components added up")
        return (what + f": {x}.grad was not zeroed between the "
                f"backward calls. Store {x}.grad.clone() and zero {x}.grad after each one.")

    def transposed(self, case: Case, order) -> str:
        a, y, x = self.names(case)
        inverse = tuple(sorted(range(len(order)), key=order.__getitem__))
        fix = f"{a}.T" if len(order) == 2 else f"{a}.permute{inverse}"
        axes = (f"{y}'s component axes come first, then {x}'s" if case.exp.count > 1
                else f"it is shaped like {x}")
        return f"{a} has the right numbers with its axes swapped: {axes}. Use {fix}."

    def reshaped(self, case: Case, shape) -> str:
        a, _, _ = self.names(case)
        if shape is not None:
            return (f"{a} has the right numbers in the right order but shape "
                    f"{shape_text(case.a.shape)}; the derivatives have {self.expected(case)}. "
                    f"Use {a}.reshape{shape_text(shape)}.")
        return (f"{a} has the right numbers in the wrong places: reshape and view keep the "
                "row-major order and never swap axes. Use .T or .permute(...) to swap axes.")

    def at_points(self, case: Case, points, total: int) -> str:
        a, _, x = self.names(case)
        shown = ", ".join(_point_text(x, case.exp.item, p) for p in points[:SHOWN_POINTS])
        more = ", …" if len(points) > SHOWN_POINTS else ""
        return (f"{a} is right at {total - len(points):,} of {total:,} points, wrong at "
                f"{len(points):,}: {shown}{more}. Look at what is special about {x} there "
                "(a zero, a kink, a division, a branch of the formula).")

    def missing(self, case: Case, answer) -> str:
        a, _, x = self.names(case)
        if answer is None:
            return (f"{a} is None: nothing was computed into it ({x}.grad stays None until a "
                    f"backward reaches {x}).")
        return f"{a} is a {type(answer).__name__}, not a tensor of real numbers."


HINTS = Hints()
