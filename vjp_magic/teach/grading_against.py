"""Grading against the exercise's own f (``%%vjp --check NAME --against EXPR``,
``vjp_magic.check(answer, f, inputs)``), never against the student's graph.

The reference derivatives come from the teacher's f (:class:`Exercise`) evaluated on fresh
copies of the inputs: the student's cell is not run again, their tensors and ``.grad`` are
left alone. Where the student's cell is at hand (its result), two more things are compared,
each named in the verdict and never a ✓:

- its output with f's at the inputs ("your y differs from f(x) at y[1], …": a mistyped f),
  only beyond rounding: where the comparison in their dtype fails, f again on float64 copies
  and y by the cell's float64 replay, else y's rounding bounded from its graph; what neither
  settles is a note, not a ✗ (``(x + 1) - 1``, ``log(exp(x))`` for x at 1e-4 are f = x);
- the derivatives of its graph with f's where the outputs agree ("in the graph as computed,
  y does not reach x through all of f": a ``.detach()``, ``.data``, ``torch.tensor(...)``
  or ``.numpy()`` on the way from x to y, which backward cannot see through).

The answer itself is graded against f's derivatives as :func:`~.grading.grade` grades.
"""
from __future__ import annotations

import ast
import contextlib
import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

import torch

from ..core import analysis
from ..core.errors import VJPUsageError, unreached
from ..core.modes import users_modes
from ..core.quiet import generator_states
from ..core.marked import marked, markup
from ..core.tolerances import tolerances
from ..run.record import recording
from ..run.refusals import NotReplayable
from ..run.replay import build
from .grading import Verdict, VerdictKind, grade
from .grading_hints import SHOWN_POINTS, shape_text
from .grading_reference import output_in_float64, output_rounding
from .grading_targets import JACOBIAN_LIMIT, Expected, target
from .sparse_dense import densified, is_sparse


@dataclass(frozen=True)
class Exercise:
    """The teacher's f: ``make(fresh)`` gives its output for the inputs ``fresh`` (name →
    tensor); ``label`` is how verdicts name it: the expression itself, or a function's name,
    written applied to the inputs (``f(x)``) where ``applied``. f is called once
    (:meth:`evaluate`, recorded); every later evaluation (in float64, the inputs in another
    order, ``--reveal``) replays that record, so f's modules, counters and generators move
    as one call moves them, whatever the verdict. ``moves_generators``: f's draws stay
    drawn (``check(answer, f, x)``, the user's own call of f); else they are put back
    (``--against``, which a plain run of the cell never calls)."""

    make: Callable[[dict], object]
    label: str
    applied: bool = False
    moves_generators: bool = False
    by_name: Callable[[dict], bool] = lambda fresh: True  # f takes the inputs by name
    calls: list = field(default_factory=list, compare=False, repr=False)  # [f's one call]
    drawn: list = field(default_factory=list, compare=False, repr=False)  # [generators after]

    def named(self, inputs) -> str:
        return f"{self.label}({', '.join(inputs)})" if self.applied else self.label

    def evaluate(self, fresh: dict) -> tuple[object, dict]:
        """(f's output at ``fresh``, the leaves its graph starts from): the first time f
        itself, recorded (its draws kept only where :attr:`moves_generators`); after, the
        record replayed (:class:`~vjp_magic.run.refusals.NotReplayable` where it cannot be,
        e.g. a custom Function's forward would run again)."""
        if not self.calls:
            cuda = sorted({t.device.index or 0 for t in fresh.values() if t.is_cuda})
            with contextlib.ExitStack() as stack:
                if not self.moves_generators:
                    stack.enter_context(torch.random.fork_rng(devices=cuda))
                record = stack.enter_context(recording())
                out = self.make(fresh)
            self.calls.append((record, out, dict(fresh)))
            if self.moves_generators:  # as f's one call left them: what check() ends with
                self.drawn.append(generator_states())
            return out, fresh
        record, out, first = self.calls[0]
        if list(first) == list(fresh) and all(_same(first[n], fresh[n]) for n in fresh):
            return out, first  # the same inputs: f's own output and graph
        if not isinstance(out, torch.Tensor):
            return out, fresh
        values = {n: fresh[n] for n in first} if self.by_name(fresh) else \
            dict(zip(first, fresh.values()))  # f(*fresh.values()): by place
        given = next((n for n, t in first.items() if t is out), None)
        if given is not None:  # f returned an input itself (an identity): no op to replay
            return values[given], fresh
        replay = build(record, first, out, verify=False, user_code=False)
        kinds = {t.dtype for t in values.values() if t.is_floating_point()}
        if len(kinds) == 1 and out.is_floating_point() and out.dtype not in kinds:
            replay = replay.with_dtype(kinds.pop())
        with torch.random.fork_rng(devices=[]):
            return replay.run(values), fresh


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.detach(), b.detach())


def _call(f, fresh: dict):
    """``f`` called on the inputs: by name where its parameters are named like them, else in
    order (:func:`_by_name`)."""
    with users_modes():  # the user's torch modes, set aside by check: for f's own calls
        if _by_name(f, fresh):
            return f(**fresh)
        return f(*fresh.values())


def _by_name(f, fresh: dict) -> bool:
    """Whether :func:`_call` gives ``f`` the inputs by name (its parameters named so)."""
    try:
        parameters = inspect.signature(f).parameters
    except (TypeError, ValueError):
        parameters = {}
    return bool(fresh) and set(fresh) <= set(parameters)


def from_function(f: Callable) -> Exercise:
    """A function of the inputs (``check(answer, f, inputs)``: the user's own call of f,
    whose draws stay drawn, as one plain call leaves them)."""
    name = getattr(f, "__name__", "f")
    name = "f" if not name.isidentifier() else name  # a lambda: "f"
    return Exercise(lambda fresh: _call(f, fresh), name, applied=True, moves_generators=True,
                    by_name=lambda fresh: _by_name(f, fresh))


def from_source(source, scope) -> Exercise:
    """``--against``'s words: an expression of the inputs, or the name of a function of
    them, evaluated in the namespace with the inputs bound to fresh copies."""
    text = " ".join(source) if isinstance(source, (list, tuple)) else str(source)
    text = _unquoted(text.strip())

    def make(fresh: dict):
        env = {**scope.user_global_ns, **scope.user_ns, **fresh}
        try:
            value = eval(text, env)  # the teacher's expression, not the student's cell
            return _call(value, fresh) if callable(value) else value
        except Exception as error:  # noqa: BLE001 - the exercise's code failed: say so
            raise VJPUsageError(f"--against {text}: {type(error).__name__}: {error}") from None

    applied = text.isidentifier() and callable(scope.user_ns.get(text))
    return Exercise(make, text, applied, by_name=lambda fresh: not applied or _by_name(
        scope.user_ns.get(text), fresh))


def _unquoted(text: str) -> str:
    """``"x**3 - 2*x"`` → ``x**3 - 2*x`` (a quoted expression on the magic's line)."""
    try:
        node = ast.parse(text, mode="eval").body
    except SyntaxError:
        return text
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value.strip()
    return text


def reference(exercise: Exercise, inputs: Mapping, output_name: str):
    """(f's derivatives as a result, f's output) on fresh copies of ``inputs``."""
    fresh = {n: t.detach().clone().requires_grad_(t.is_floating_point())
             for n, t in inputs.items()}
    with torch.enable_grad():  # f called once, replayed after (Exercise.evaluate)
        out, fresh = exercise.evaluate(fresh)
    if not isinstance(out, torch.Tensor):
        raise VJPUsageError(f"--against {exercise.label}: gave a {type(out).__name__}, not a "
                            "tensor. Give an expression of the inputs, or a function of them "
                            "that returns a tensor.")
    try:
        ref = analysis.differentiate(out, fresh, output_name=output_name)
    except VJPUsageError as error:
        raise VJPUsageError(f"The exercise's f ({exercise.label}): {error}") from None
    return ref, out


def _float64_reference(exercise: Exercise, inputs: Mapping, ref):
    """name → f's derivatives computed in float64 (f on float64 copies of the inputs, the
    same pairing as ``ref``'s), made on the first call and only where asked (a plain ✗ looked
    at again: :func:`~.grading.grade`'s ``exact``); None for an input where f does not run
    in float64, or gives another structure there. f is the exercise's, run as for ``ref``."""
    made: dict = {}

    def exact(name: str):
        if "found" not in made:
            made["found"] = _in_float64_derivatives(exercise, inputs, ref)
        found = made["found"]
        return None if found is None else found.get(name)
    return exact


def _in_float64_derivatives(exercise: Exercise, inputs: Mapping, ref) -> dict | None:
    if not any(t.is_floating_point() and t.dtype != torch.float64 for t in inputs.values()):
        return None  # float64 already: the reference is as precise as it gets
    fresh = {n: t.detach().to(torch.float64) if t.is_floating_point() else t.detach().clone()
             for n, t in inputs.items()}
    try:
        ref64, _ = reference(exercise, fresh, ref.output_name)
    except Exception:  # noqa: BLE001 - f needs its inputs' own dtype …: no float64 reference
        return None
    found = {}
    for name, item in ref.inputs.items():
        other = ref64.inputs.get(name)
        if other is None or other.pairing != item.pairing or is_sparse(other) or \
                is_sparse(item) or other.derivatives.shape != item.derivatives.shape or \
                other.derivatives.dtype != torch.float64:
            continue
        found[name] = other.derivatives.detach()
    return found


def _evaluated(exercise: Exercise, inputs: Mapping, output_name: str) -> tuple:
    """(the exercise labelled as applied to ``inputs``, f's derivatives, f's output)."""
    exercise = replace(exercise, label=exercise.named(inputs), applied=False)
    return (exercise, *reference(exercise, inputs, output_name))


def against(answer, exercise: Exercise, inputs: Mapping, *, result=None, log=None,
            answer_name: str | None = None, output_name: str = "y",
            ordered: bool = True, record=None, output=None) -> Verdict:
    """``answer`` graded against the derivatives of ``exercise`` at ``inputs`` (name →
    the student's tensor); with ``result`` (the student's cell's), also its output and its
    graph against f's. ``ordered``: the inputs' order was given (a dict, names in order);
    False for the cell's binding order, where a y that is f of the inputs in another order is
    said so (✗: which order the exercise means, only ``--wrt`` says). ``record``: the cell's
    (:class:`~vjp_magic.run.record.OpRecord`), whose float64 replay tells a y that differs
    from f(x) only by its float32 rounding from one that differs (:func:`_output_differs`);
    without it, ``output`` (the student's y with its graph, where ``result`` holds a copy)
    bounds that rounding."""
    output_name = result.output_name if result is not None else output_name
    applied, ref, out = _evaluated(exercise, inputs, output_name)
    if result is not None and not ordered and \
            _output_differs(result, out, applied, inputs, (record, output))[0] is not None:
        found = _in_another_order(answer, exercise, inputs, result, log, answer_name,
                                  (record, output))
        if found is not None:
            return found
    return _graded(answer, applied, ref, out, inputs, result, log, answer_name,
                   (record, output))


def _graded(answer, exercise: Exercise, ref, out, inputs: Mapping, result, log,
            answer_name: str | None, computed=(None, None),
            f_inputs: Mapping | None = None) -> Verdict:
    """The answer against f's derivatives ``ref``; with ``result``, its output and graph too
    (``computed``: how y was, as :func:`_output_differs` takes it; ``f_inputs``: the inputs
    in the order f takes them, where not ``inputs``' own)."""
    graded = grade(answer, ref, log=log, answer_name=answer_name, output=out,
                   leaves=dict(inputs), answer_record=computed[0],
                   exact=_float64_reference(exercise, inputs if f_inputs is None else f_inputs,
                                            ref))
    graded = replace(graded, against=exercise.label, answer_kind=graded.kind)
    if result is None:
        return graded
    problem, note = _output_differs(result, out, exercise,
                                    inputs if f_inputs is None else f_inputs, computed)
    kind = VerdictKind.OUTPUT_DIFFERS
    if problem is None and note is not None:  # y may be f(x) up to its own rounding
        if _graph_cut(result, ref, exercise.label) is None:
            return replace(graded, hint=marked(f"{note} {graded.hint}".strip()))
        problem = (f"{note.split(' by more than')[0]}, and so do its derivatives: check the "
                   "formula.")  # rounding leaves a graph's derivatives f's: not rounding
    if problem is None:
        problem, kind = _graph_cut(result, ref, exercise.label), VerdictKind.GRAPH_CUT
    if problem is None:
        return graded
    return replace(graded, correct=False, kind=kind,
                   hint=marked(f"{problem} {_own(graded, exercise, answer_name)}"))


def _own(graded: Verdict, exercise: Exercise, answer_name: str | None) -> str:
    """The answer's own verdict against f, in words."""
    a = f"`{answer_name}`" if answer_name else "the answer"
    return (f"{a[0].upper()}{a[1:]} itself is the derivatives of `{exercise.label}`."
            if graded.correct else
            f"Graded against the derivatives of `{exercise.label}`, {a} is ✗ "
            f"{markup(graded.kind.words)}.")


def _in_another_order(answer, exercise: Exercise, inputs: Mapping, result, log,
                      answer_name: str | None, computed=(None, None)) -> Verdict | None:
    """Where the student's y is f of the cell's inputs in another order than the cell binds
    them (f's parameters named unlike the inputs): ✗ "your y matches f(x, w), not f(w, x)",
    the answer graded against f in that order: f's one call replayed at most twice more,
    the order swapped and, of three or four inputs, reversed (:meth:`Exercise.evaluate`)."""
    names = list(inputs)
    orders = [] if not (exercise.applied and 1 < len(names) <= 4) else \
        list(dict.fromkeys([tuple(names[1::-1] + names[2:]), tuple(reversed(names))]))
    for order in orders:
        reordered = {n: inputs[n] for n in order}
        try:
            applied, ref, out = _evaluated(exercise, reordered, result.output_name)
        except NotReplayable:  # f's one call cannot be replayed so: not called again
            continue
        if _output_differs(result, out, applied, reordered, computed)[0] is None:
            graded = _graded(answer, applied, ref, out, inputs, result, log, answer_name,
                             computed, reordered)
            y = result.output_name
            return replace(graded, correct=False, kind=VerdictKind.OUTPUT_DIFFERS, hint=marked(
                f"Your {y} matches `{applied.label}`, not `{exercise.named(names)}` (the "
                f"inputs in the order the cell binds them): which order the exercise means, "
                f"`--wrt {' '.join(order)}` says. {_own(graded, applied, answer_name)}"))
    return None


def _listed(name: str, indices: list, total: int) -> str:
    shown = ", ".join(f"{name}[{', '.join(map(str, i))}]" if i else name
                      for i in indices[:SHOWN_POINTS])
    more = ", …" if len(indices) > SHOWN_POINTS else ""
    return f"{shown}{more} ({len(indices):,} of {total:,} entries)"


def _output_differs(result, out: torch.Tensor, exercise: Exercise, inputs: Mapping,
                    computed=(None, None)) -> tuple[str | None, str | None]:
    """(How the student's output differs from f's at the inputs, or None where it does not;
    a note where it may: a difference beyond f's rounding that y's own could not be told
    from, which :func:`_graded` makes a ✗ where y's derivatives differ from f's too).

    Where the comparison in their dtype fails, it is decided in float64: f on float64 copies
    of the inputs, y by the cell's float64 replay (``computed``: (the cell's record, y's graph
    tensor), either None), else y's own rounding bounded from its graph
    (:func:`~.grading_reference.output_rounding`); an entry that neither settles is the
    note's, never a ✗ by itself."""
    y, f = result.output.detach(), out.detach()
    name, label = result.output_name, exercise.label
    if tuple(y.shape) != tuple(f.shape):
        return (f"Your {name} has shape {shape_text(tuple(y.shape))}; `{label}` has shape "
                f"{shape_text(tuple(f.shape))}: check the formula.", None)
    rtol = max(tolerances(t.dtype).backward for t in (y, f))
    wrong = _beyond(y, f, rtol)
    if not bool(wrong.any()):
        return None, None
    unsure = torch.zeros_like(wrong)
    f64 = _in_float64(exercise, inputs, f)
    overflow = torch.zeros_like(wrong)
    if f64 is not None:
        wrong &= _beyond(y, f64, tolerances(y.dtype).backward)  # f's own rounding: not y's
        overflow = wrong & ~torch.isfinite(y) & torch.isfinite(f64)
        wrong &= ~overflow
        if y.dtype != torch.float64 and bool(wrong.any()):
            wrong, unsure = _beyond_own_rounding(result, y, f64, wrong, *computed)
    total = wrong.numel()
    note = None if not bool(unsure.any()) else (
        f"Your {name} differs from `{label}` at {_listed(name, unsure.nonzero().tolist(), total)}"
        f" by more than the rounding of `{label}` in {_dtype(f)}; whether it is your "
        f"{name}'s own rounding in {_dtype(y)} could not be told (its graph does not keep every "
        f"value it was computed from): computed in float64, `.double()`, it would show.")
    problems = []
    if bool(wrong.any()):
        problems.append(f"Your {name} differs from `{label}` at "
                        f"{_listed(name, wrong.nonzero().tolist(), total)}: check the formula.")
    if bool(overflow.any()):
        problems.append(f"Your {name} is not finite at "
                        f"{_listed(name, overflow.nonzero().tolist(), total)}, where `{label}` "
                        f"is: a value on the way overflows {_dtype(y)} (`exp` of a large number?)"
                        "; compute it in a way that stays in range.")
    return (" ".join(problems) or None), note


def _dtype(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def _beyond(y: torch.Tensor, f: torch.Tensor, rtol: float) -> torch.Tensor:
    """Where ``y`` differs from ``f`` by more than ``rtol`` of each entry of ``f``."""
    values = f.detach().to(torch.float64)
    expected = target("output", values, values.abs(), tuple(range(values.dim())), rtol)
    return expected.mismatch(y.detach().to(torch.float64).to(values.device))


def _in_float64(exercise: Exercise, inputs: Mapping, f: torch.Tensor) -> torch.Tensor | None:
    """f's output on float64 copies of the inputs (f itself where it is float64 already), or
    None where f does not run in float64 or gives another shape there."""
    if f.dtype == torch.float64:
        return f
    fresh = {n: t.detach().to(torch.float64) if t.is_floating_point() else t.detach().clone()
             for n, t in inputs.items()}
    try:
        with torch.no_grad():
            out, _ = exercise.evaluate(fresh)
    except Exception:  # noqa: BLE001 - no float64 replay of f's call: no float64 value
        return None
    if not isinstance(out, torch.Tensor) or out.shape != f.shape or \
            out.dtype != torch.float64:
        return None
    return out.detach()


SAME_DIFFERENCE = 1e-3  # a real difference stays in float64; rounding shrinks by ~2⁻²⁹


def _beyond_replay(y: torch.Tensor, y64: torch.Tensor, f64: torch.Tensor) -> torch.Tensor:
    """Where y differs from f(x) by a difference its float64 replay ``y64`` keeps: beyond
    float64's tolerance and more than :data:`SAME_DIFFERENCE` of y's own difference. A
    difference of formulas is the same in both precisions; rounding (a cancellation, which
    float64 has too: 1 - cos(x) at x = 2e-4 is off by 5e-9 of itself) shrinks by the ratio
    of their units of roundoff, 2⁻²⁹; an entry not finite in either keeps its verdict."""
    d32 = (y.detach().to(torch.float64).to(f64.device) - f64).abs()
    d64 = (y64.to(f64.device) - f64).abs()
    allowed = tolerances(torch.float64).backward * f64.abs() + SAME_DIFFERENCE * d32
    return ~(d64 <= allowed) | ~torch.isfinite(d32) | ~torch.isfinite(d64)


def _beyond_own_rounding(result, y: torch.Tensor, f64: torch.Tensor, wrong: torch.Tensor,
                         record, graph) -> tuple[torch.Tensor, torch.Tensor]:
    """(The entries of ``wrong`` where y differs from f64 beyond y's own rounding, those
    where that could not be told): by y's float64 replay where the cell was recorded, else
    by the bound on y's rounding its graph gives."""
    graph = result.output if graph is None else graph
    y64 = None if record is None else output_in_float64(record, result, graph)
    if y64 is not None and bool((torch.isfinite(y64) | ~torch.isfinite(y)).all()):
        return wrong & _beyond_replay(y, y64, f64), torch.zeros_like(wrong)
    indices = wrong.nonzero().tolist()
    try:
        bounds = output_rounding(graph, indices)
    except Exception:  # noqa: BLE001 - a freed graph, a saved value written in place …
        bounds = None
    if bounds is None:
        return torch.zeros_like(wrong), wrong
    kept = torch.zeros_like(wrong)
    unsure = torch.zeros_like(wrong)
    for index, bound in zip(indices, bounds):
        at = tuple(index)
        difference = abs(float(y[at]) - float(f64[at]))
        allowed = 2 * bound + tolerances(torch.float64).backward * abs(float(f64[at]))
        if not math.isfinite(bound):
            unsure[at] = True
        elif difference > allowed:
            kept[at] = True
    return kept, unsure


def _graph_cut(result, ref, label: str) -> str | None:
    """Where the derivatives of the student's graph differ from f's, their outputs equal."""
    for name in ref.inputs:
        wrong = _derivative_mismatch(result, ref, name)
        if wrong is None or not bool(wrong.any()):
            continue
        y = result.output_name
        at = _listed(name, wrong.nonzero().tolist(), wrong.numel())
        return (f"Your {y} equals `{label}`, but {unreached(y, name)} through all of "
                f"it: its derivative differs from that of `{label}` at {at}. Something "
                f"on the way from {name} to {y} is cut off from autograd (`.detach()`, `.data`, "
                "`torch.tensor(...)`, `.numpy()`), and backward does not see through it.")
    return None


def _derivative_mismatch(result, ref, name: str) -> torch.Tensor | None:
    """Input-shaped: where the student's graph's derivatives differ from f's (None where
    they cannot be compared: a Jacobian too large to assemble)."""
    ref, result = densified(ref, [name]), densified(result, [name])
    if is_sparse(ref.inputs[name]) or is_sparse(result.inputs.get(name)):
        return None  # too large to compare entry by entry
    exp = Expected(ref, name, None)
    x_dims = exp.x.dim()
    if name not in result.inputs:  # the student's output does not depend on it at all
        mine = torch.zeros_like(exp.d)
        wrong = exp.derivatives().mismatch(mine)
    else:
        item = result.inputs[name]
        mine = item.derivatives.detach().to(torch.float64).to(exp.d.device)
        if item.pairing == ref.inputs[name].pairing and mine.shape == exp.d.shape:
            wrong = exp.derivatives().mismatch(mine)
        elif result.output.numel() * exp.x.numel() <= JACOBIAN_LIMIT:
            full = exp.jacobian() or exp.derivatives()
            mine = result.jacobian(name).detach().to(torch.float64).to(exp.d.device)
            wrong = full.mismatch(mine.reshape(full.value.shape))
        else:
            return None
    lead = wrong.dim() - x_dims
    return wrong.reshape((-1,) + tuple(exp.x.shape)).any(0) if lead else wrong


__all__ = ["Exercise", "against", "from_function", "from_source", "reference"]
