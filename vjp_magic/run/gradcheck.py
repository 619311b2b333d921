"""``--gradcheck``: the cell's recorded operations, replayed in float64, against central
finite differences (the cell itself is not run again, but a custom ``autograd.Function``'s
forward, the user's code, runs in each replay: counted in the report's ``reran``).

For a random, non-uniform v drawn from the run's seed (entries of random sign and magnitude
in [1.5, 3], so a backward that ignores its incoming gradient shows), the analytic vᵀJ
comes from one backward pass through the float64 replay (so custom ``autograd.Function``
backwards are the ones checked), and passes with 2v and −v/2 must give those multiples of it
(a backward not multiplied by ``grad_output``, or using |grad_output|, fails, for a scalar
output too; near overflow v is scaled down by a power of 2, :func:`_fitted`: the check's own
arithmetic never overflows); the numeric one is vᵀ(f(x + h e_k) − f(x − h e_k)) / 2h for a
sample of entries k of each input (all of them when there are few; with a sample, every other
entry in groups, :func:`_groups`). Entries agree within ``atol + rtol·|numeric|``, the tolerances of
``torch.autograd.gradcheck`` (for a scalar output, both divided by v: errors are in the
derivative's own units; a vector output's largest error and noise are told in them after the
check, :mod:`.gradcheck_units`), atol scaled down where every derivative is below 1 (:func:`_atol`).

One v cancels an error orthogonal to it: vᵀΔJ e_k = 0 with ΔJ e_k ≠ 0 (a backward missing a
term x_i·Σg is off by x in every column, and Σ v_i x_i ≈ 0 for about one seed in a thousand).
So a vector output's entries and groups are compared for a second, independent v as well,
read from the same outputs (no forward run more where it agrees; :meth:`_Input.entry`), and
a column of J whose derivatives, told in their own units, disagree beyond the tolerance has
them judged again one output entry at a time, where nothing cancels
(:func:`_told_in_units`): a largest error far over the tolerance is never told with a pass.
Where the cell computes in float32, its custom backwards are also checked at that dtype
against the float64 vᵀJ (:func:`_cell_derivatives`), a difference judged against the rounding
the same formula has in that dtype (:mod:`.gradcheck_rounding`).

A step must not cross a kink (relu, clamp, abs at 0): there the central difference is not
a derivative. Each entry's central difference is used only where the one-sided differences
agree with it (f is smooth across the step); else a one-sided difference that agrees with
its own halved step (no kink on that side), else the same at smaller steps; a disagreement
or a kink is tried again at the smaller steps (a staircase finer than the step), and an entry
nearer 0 than :data:`SMALL`, or farther than :data:`LARGE`, at a step relative to it
(:func:`_relative`). Where both
sides are smooth but differ, f has no derivative there to check (a kink): the entry is
*inconclusive*, never failed; so is one where no step is safe, or a disagreement is within
the differences' own truncation (their change from step s to s/2, the smallest) while no
side is safe (*steep*, as sin(1e8·x): its slope changes within the smallest step; never
called a kink, :func:`_steep`); so is one whose central difference does not settle
when the step is halved (a jump, as sign at 0). This is decided by the one-sided quotients,
whoever computes f: a custom Function's max, sort or piecewise function at a tie or
breakpoint is inconclusive as a built-in's is (where several pieces meet, a right backward
may take a piece that no step along e_k enters: maximum(x, x.flip(0)) at ties). A check
fails only where every safe difference disagrees with autograd, and, where x is a kink or
autograd disagrees, only where autograd also disagrees at a point nearby, ties broken
(:func:`_nearby`: a backward wrong away from the kink too, ignoring grad_output, with a
detached term, 1 % off). Where the quotients at steps growing 4-fold change by more than a
smooth f's truncation (jumps, :func:`.gradcheck_noise.unresolved`), f changes in rounding
stairs coarser than the step (``((x + 1e12) - 1e12) * 2 + x``): a backward that agrees with
f seen across the stairs is *unresolved* (inconclusive), one that disagrees at every scale
fails.

Each difference is judged against its own rounding noise: :data:`NOISE_ULPS` ulps of every
output entry (where that leaves it in doubt, of those that move along the direction: one
that does not is exact; where none moves even at a large step, all), plus what rounding x +
h·e_k moved the step by. Where an entry's disagreement is within that noise but over the
tolerance, the values are too large for finite differences at this step (y = x + 1e12: noise
≈ ε·1e12/h ≈ 100): the entry is *inconclusive* (``noisy``), never failed; a disagreement
beyond tolerance plus noise still fails. A disagreement, or an apparent kink, is also
weighed against the rounding of the values inside (:mod:`.gradcheck_noise`: ``(x + 1e12) -
1e12`` loses the step in x + 1e12, though its output is small).

The replays draw no random numbers from the global generators: they run under
:func:`torch.random.fork_rng`, so the cell's RNG state is as a plain run leaves it.
"""
from __future__ import annotations

import math
import time
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from ..core.probes import probe_generator
from ..core.textenum import TextEnum
from ..core.errors import invalid_gradient
from ..core.torch_api import TorchError, materialized_grad, torch_error
from .gradcheck_noise import (EPS, NOISE_ULPS, SUPPORT_STEP, HiddenNoise, moved_output,
                              unresolved)
from .gradcheck_rounding import MARGIN, RUNS, rounding_moves
from .gradcheck_units import derivative_error, per_output
from .record import tensors_in
from .refusals import verify
from .replay import NotReplayable, aliases, build, distinct
from .steps import Interpreter, forwards_run

ATOL, RTOL = 1e-5, 1e-3  # as torch.autograd.gradcheck
STEP = 1e-6  # the finite-difference step (torch.autograd.gradcheck's eps)
SMALLER = (1.0, 1 / 16, 1 / 256)  # steps tried (times STEP) where a kink is within one
NEARBY = 1e-3  # where built-ins disagree: checked again this far (times 1 + max |x|) away
SMALL, SMALL_FLOOR = 1e-2, 1e-100  # |x_k| in this range: tried again at a step relative to it
LARGE = 1e2  # |x_k| from here on: tried again at a step relative to it too (STEP·|x_k|)
MAX_ENTRIES = 64  # entries per input checked; all of them up to this many
GROUP = 8  # entries per group direction (the entries outside the sample), at least
MAX_GROUPS = 64  # group directions per input, at most (larger groups beyond)
MAX_SINGLES = 4 * MAX_ENTRIES  # entries of groups in doubt checked singly, per input
# vᵀJ at these multiples of v must be these multiples of it (powers of 2: exact): another
# sign and size, and incoming gradients ~1e-6 and ~1e6 times |v| (a loss divided by the batch
# size; a backward that skips |g| < 0.5 or clips large g shows), which V_MAGNITUDE alone
# never reaches (its range keeps vᵀJ's rounding small: every entry weighs alike)
SCALES = (2.0, -0.5, 2.0 ** -20, 2.0 ** 20)
MIXED = 2.0 ** -12  # a vector output's v split in two halves, one of them this much smaller
CELL_ULPS = 16  # the cell dtype's rounding allowed in its derivatives, in its epsilons
COARSE = 1e-2  # cell-dtype values this far from float64's (of the largest): no comparison
SEED = 0  # where the run has no seed of its own
V_MAGNITUDE = (1.5, 3.0)  # |v| per entry: drawn in this range, either sign
SECOND = 1  # the draw of the second v, independent of the first (a vector output's)
RIVALS = 8  # a vector output's entries read in J's own units: the largest errors in vᵀJ
MAX_SECONDS = 10.0  # sampling stops after this long (each input gets at least one entry)
# A count budget instead (``gradcheck(passes=...)``, or this default where it is not None):
# at most this many checks (sampled entries, group directions, entries of groups in doubt),
# the same at any machine load. None: the time budget (the user's). Tests set it.
PASSES: int | None = None
KINKED = frozenset((
    "relu", "relu6", "clamp", "clip", "clamp_min", "clamp_max", "abs", "hardtanh",
    "leaky_relu", "maximum", "minimum", "max", "min", "amax", "amin", "threshold",
    "hardshrink", "softshrink", "where", "hardsigmoid", "hardswish", "elu", "selu", "celu",
    "prelu", "rrelu", "l1_loss", "smooth_l1_loss", "huber_loss", "median", "sort", "topk",
    "max_pool1d", "max_pool2d", "max_pool3d", "norm", "dist", "cdist",
    "sqrt", "rsqrt", "sign", "sgn", "floor", "ceil", "round", "trunc", "frac", "heaviside",
    "kthvalue", "nanmedian", "mode", "msort", "cummax", "cummin", "atan2",
))  # ops with kinks, jumps or infinite slopes: named where an entry is inconclusive or fails


@dataclass(frozen=True)
class GradcheckReport:
    """The verdict: ``ok`` True when every checked entry agrees, False when one does not (every
    safe finite difference there disagrees), None when nothing could be checked (``note`` says
    why) or, none failing, some entries are ``inconclusive`` (a kink: f has no derivative there
    to check) or ``unchecked``; ``max_error[name]`` the largest |analytic − numeric| over its
    conclusive entries, in the derivatives' units (:mod:`.gradcheck_units`; ``checked[name]``
    entries examined); ``inconclusive[name]`` the indices
    of its inconclusive entries, ``failed[name]`` those of its disagreeing ones; ``kinks`` the
    ops with kinks the replay runs (where some entry is inconclusive or fails); ``custom`` the
    custom backward functions on the way from the output to the checked inputs; ``unscaled`` the
    inputs whose vᵀJ does not double when v does (a backward that ignores its incoming
    gradient); ``detached`` the replay's detaching ops (on a failure); ``note`` why nothing (or
    not all) was checked; ``noisy[name]`` the indices of entries inconclusive because the finite
    differences' rounding noise is over the tolerance there (values too large for the step),
    ``noise`` the largest such noise (derivative units); ``covered[name]`` the entries outside
    the sample checked in groups (one direction per group); ``cell_dtype`` the cell's dtype
    where it is not float64 and its own derivatives were compared with the float64 ones
    (``cell_error[name]``: the largest difference, relative to the largest derivative;
    ``cell_failed``: the inputs where they disagree); ``unchecked[name]`` how many entries were
    left unchecked (groups in doubt past :data:`MAX_SINGLES`): the check is then never passed
    (ok None, failed if one failed); ``stopped``: the seconds after which sampling ran out of
    time, the rest unchecked (never passed either); ``passes``: likewise, the count budget that
    ran out (``gradcheck(passes=...)``); ``reran``: how many times the check's replays ran
    each custom Function's forward (the user's own code, which the cell ran once), by name;
    ``unresolved[name]`` the entries where f changes in rounding stairs coarser than the step
    (inconclusive), ``stair`` the largest stair in x; ``sides``: (name, index, right, left),
    a scalar output's one-sided derivatives at its first kink; ``steep[name]``: those of the
    ``inconclusive`` entries where no step is safe and no kink was found (f's slope changes
    within the smallest step, as sin(1e8·x)'s: steep, not shown to be a kink),
    ``steepness`` the largest such change, relative to the derivative, ``steep_step`` that
    smallest step."""

    ok: bool | None
    max_error: dict = field(default_factory=dict)
    custom: tuple = ()
    checked: dict = field(default_factory=dict)
    note: str | None = None
    inconclusive: dict = field(default_factory=dict)
    kinks: tuple = ()
    unscaled: tuple = ()
    failed: dict = field(default_factory=dict)
    detached: tuple = ()
    noisy: dict = field(default_factory=dict)
    noise: float = 0.0
    covered: dict = field(default_factory=dict)
    cell_dtype: str | None = None
    cell_error: dict = field(default_factory=dict)
    cell_failed: tuple = ()
    unchecked: dict = field(default_factory=dict)
    stopped: float | None = None
    passes: int | None = None
    reran: dict = field(default_factory=dict)  # custom Function -> forwards its replays ran
    unresolved: dict = field(default_factory=dict)
    stair: float = 0.0
    sides: tuple = ()
    steep: dict = field(default_factory=dict)
    steepness: float = 0.0
    steep_step: float = 0.0


@dataclass
class Budget:
    """When sampling stops: after ``passes`` checks where that is set (counted: the same at
    any load), else at ``seconds`` of wall clock; the first entry of each input is always
    checked. ``ran_out``: a check was left for want of budget."""

    seconds: float = MAX_SECONDS
    passes: int | None = None
    used: int = 0
    ran_out: bool = False
    deadline: float = field(init=False)

    def __post_init__(self) -> None:
        self.deadline = time.perf_counter() + self.seconds

    def allows(self, free: bool = False) -> bool:
        """Whether one more check may run (``free``: it runs whatever is left), counted."""
        spent = self.used >= self.passes if self.passes is not None else \
            time.perf_counter() > self.deadline
        if spent and not free:
            self.ran_out = True
            return False
        self.used += 1
        return True


def gradcheck(record, inputs: dict, output, names=None, seconds: float = MAX_SECONDS,
              seed: int | None = None, passes: int | None = None) -> GradcheckReport:
    """Check the derivatives of ``output`` with respect to ``inputs`` (name -> tensor; only
    ``names`` if given) on the float64 replay of ``record``; sampling stops after about
    ``seconds``, or, where ``passes`` (else :data:`PASSES`) is set, after that many checks
    instead (:class:`Budget`; the entries checked by then are reported). v and the sampled
    entries are drawn from ``seed`` (the run's; :data:`SEED` if None), never from torch's
    global generators, whose state (CPU, and CUDA's where the inputs are there) is left as
    it was."""
    devices = sorted({t.device.index or 0 for t in inputs.values()
                      if isinstance(t, torch.Tensor) and t.is_cuda})
    names = list(inputs) if names is None else list(names)
    first = aliases(inputs)  # one tensor named twice is checked once, reported under both
    with torch.random.fork_rng(devices=devices), forwards_run() as reran:
        report = _gradcheck(record, distinct(inputs), output,
                            list(dict.fromkeys(first.get(n, n) for n in names)),
                            Budget(seconds, PASSES if passes is None else passes),
                            SEED if seed is None else seed)
    report = replace(report, reran=dict(reran)) if reran else report
    return _named(report, first, names) if len(set(first.values())) < len(first) else report


_BY_NAME = ("max_error", "checked", "inconclusive", "failed", "noisy", "covered", "cell_error",
            "unchecked", "unresolved", "steep")  # GradcheckReport's fields keyed by input name
_NAMES = ("unscaled", "cell_failed")  # and those that list input names


def _named(report: GradcheckReport, first: dict, names: list) -> GradcheckReport:
    """``report`` (made for each tensor under its first name) under every name in ``names``."""
    keyed = {f: {n: getattr(report, f)[first.get(n, n)] for n in names
                 if first.get(n, n) in getattr(report, f)} for f in _BY_NAME}
    listed = {f: tuple(n for n in names if first.get(n, n) in getattr(report, f))
              for f in _NAMES}
    return replace(report, **keyed, **listed)


def _gradcheck(record, inputs: dict, output, names, budget: Budget,
               seed: int) -> GradcheckReport:
    names = list(inputs) if names is None else list(names)
    unsupported = _unsupported(inputs, names, output)
    if unsupported:
        return GradcheckReport(ok=None, note=unsupported)
    try:
        own = build(record, inputs, output, verify=False)  # the cell's dtype, built once
        replay = own.with_dtype(torch.float64)  # refused before any run of a user's forward
        verify(own.run, inputs, output)
    except NotReplayable as reason:
        return GradcheckReport(ok=None, note=f"The cell's operations cannot be replayed: "
                                              f"{reason}.")
    except Exception as error:  # noqa: BLE001 - never break the cell for the check
        return GradcheckReport(ok=None, note=f"The replay could not be built "
                                              f"({type(error).__name__}: {error}).")
    values = {n: t.detach().to(torch.float64) if t.is_floating_point() else t.detach()
              for n, t in inputs.items()}
    try:
        analytic = _analytic(replay, values, names, seed, _cell_dtype(output))
        if analytic.note:
            return GradcheckReport(ok=None, note=analytic.note)
        with torch.no_grad():
            base = replay.run(values)
        probe, second = (None if v is None else (v, base, HiddenNoise(replay, values, v, STEP))
                         for v in (analytic.numeric_v, analytic.v2))
        atol = _atol(analytic.grads.values())
        with _users_backward(bool(analytic.custom)):
            found = {name: _compare(replay, values, name, analytic.grads[name], probe,
                                    budget, seed, atol,
                                    second and (second, analytic.second[name]))
                     for name in names}
    except Exception as error:  # noqa: BLE001 - e.g. an op without float64 support
        return GradcheckReport(ok=None, note=_replay_failed(error))
    cell = _cell_derivatives(own, (inputs, values), output, names, analytic, replay,
                             (probe[1], seed))
    if probe[1].numel() > 1:  # a vector output's errors are of vᵀJ: told in J's own units
        with _users_backward(bool(analytic.custom)):
            _told_in_units(replay, values, found, (probe, second), atol)
    return _report(replay, found, analytic, budget, cell)


def _unsupported(inputs: dict, names: list, output) -> str | None:
    """Why the check cannot judge these dtypes, or None: a complex input or output (its
    derivatives are Wirtinger pairs, which finite differences along real steps do not
    check), or an output that is not floating point (integers and booleans have none)."""
    complex_in = [n for n in names if isinstance(inputs.get(n), torch.Tensor)
                  and inputs[n].is_complex()]
    if complex_in:
        return (f"{complex_in[0]} is complex ({inputs[complex_in[0]].dtype}): --gradcheck "
                "checks real floating-point inputs only; complex derivatives are not "
                "supported.")
    dtype = getattr(output, "dtype", None)
    if dtype is not None and dtype.is_complex:
        return (f"The output is complex ({dtype}): --gradcheck checks real floating-point "
                "outputs only; complex derivatives are not supported (check its .real and "
                ".imag, or .abs(), as the output).")
    if dtype is not None and not dtype.is_floating_point:
        return (f"The output is {dtype}: an integer or boolean output has no derivative to "
                "check.")
    return None


def _replay_failed(error: Exception) -> str:
    """The note where the float64 replay or its backward raised: a custom backward that
    returned a gradient of the wrong shape (a mistake in the user's backward) said so."""
    if torch_error(error) is TorchError.INVALID_GRADIENT:
        return invalid_gradient(error)
    return f"The float64 replay failed ({type(error).__name__}: {error})."


def _told_in_units(replay, values: dict, found: dict, probes: tuple, atol: float) -> None:
    """A vector output's errors, of vᵀJ, told in J's own units (:mod:`.gradcheck_units`):
    the columns of the entries that may be the worst, and the noise. Where an input passed
    but a column holds derivatives beyond the tolerance (v and the second v both cancelled
    their error), they are judged again, each alone (:func:`_judged_again`): a figure far
    over the tolerance is never told beside a passed check."""
    probe, second = probes
    for name, f in found.items():
        if f.noise_at is not None:
            f.noise = per_output(replay, values, name, f.noise_at, probe, f.noise)
        if f.worst_at is None:
            continue
        columns = [(derivative_error(replay, values, name, k,
                                     second if k in f.by_second else probe, weighted,
                                     STEP * _relative(float(values[name].reshape(-1)[k])),
                                     (atol, RTOL)), k) for weighted, k in f.rivals()]
        f.worst = max(column.error for column, _ in columns)
        if f.agree and any(column.over for column, _ in columns):
            f.worst = max(_judged_again(replay, values, (name, k), f, column, probe[1], atol)
                          for column, k in columns)


def _judged_again(replay, values: dict, entry: tuple, f: _Found, column, base: torch.Tensor,
                  atol: float) -> float:
    """Input ``entry`` = (name, k)'s ``column`` (:class:`.gradcheck_units.Column`): each
    derivative over the tolerance judged on its own output entry (:func:`_row_entry`: a v
    of one entry cancels nothing), recorded in ``f``: one that disagrees fails the input; a
    kink or noise there, or more such derivatives than were judged, leave the entry
    inconclusive. The column's figure, its agreeing derivatives' errors."""
    (name, k), errors = entry, [column.within]
    if not f.agree:  # failed by an earlier column: enough
        return column.error
    where = [_index(values[name].shape, k)]
    for row, want in column.over:
        verdict, error = _row_entry(replay, values, name, k, (row, want), base, atol)
        if verdict is Agreement.DISAGREE:
            f.agree, f.failed = False, f.failed + where
            return column.error
        if verdict is Agreement.NOISY:
            f.noisy, f.noise = f.noisy + where, max(f.noise, error)
            return max(errors)
        if verdict in (Agreement.KINK, Agreement.UNRESOLVED, Agreement.STEEP):
            f.add(verdict, error, where)
            return max(errors)
        errors.append(error)
    if column.count > len(column.over):  # the rest not judged: not passed
        f.inconclusive += where
    return max(errors)


def _row_entry(replay, values: dict, name: str, k: int, derivative: tuple,
               base: torch.Tensor, atol: float) -> tuple[Agreement, float]:
    """:func:`_entry`'s verdict on ∂y_row/∂x_k, ``derivative`` = (row, the backward's
    value), with v the flat output entry ``row`` alone (``base``: f(x))."""
    (row, want), start = derivative, values[name]
    e = torch.zeros(base.numel(), dtype=base.dtype, device=base.device)
    e[row] = 1.0
    e = e.reshape(base.shape)
    analytic = torch.zeros(start.numel(), dtype=torch.float64, device=start.device)
    analytic[k] = want  # (what _Noise reads of vᵀJ along e_k)
    probe = (e, base, HiddenNoise(replay, values, e, STEP))
    return _entry(replay, values, name, _direction(start, k, 0), probe, want,
                  analytic.reshape(start.shape), atol)


def _report(replay, found: dict, analytic: _Analytic, budget: Budget,
            cell: _Cell) -> GradcheckReport:
    """The verdict from each input's comparison, the scaling check and the cell dtype's
    derivatives (sampling stopped where the ``budget`` ran out)."""
    failed = {name: tuple(f.failed) for name, f in found.items() if not f.agree}
    inconclusive = {name: tuple(f.inconclusive) for name, f in found.items() if f.inconclusive}
    noisy = {name: tuple(f.noisy) for name, f in found.items() if f.noisy}
    stairs = {name: tuple(f.unresolved) for name, f in found.items() if f.unresolved}
    sides = next(((name, *f.sides) for name, f in found.items() if f.sides), ())
    bad = bool(failed or analytic.unscaled or cell.failed)
    detached = replay.detaching() if failed or analytic.unscaled else ()
    notes = _detached_note(detached) + ([cell.note] if cell.note else [])
    unchecked = {name: f.unchecked for name, f in found.items() if f.unchecked}
    notes += [f"{name}: {count:,} entries beyond the sample were not checked (their groups "
              "are in doubt: kinks or rounding noise), so the check cannot pass; to check "
              "them, try a smaller input, the cell in float64, or values nearer 0 (a large "
              "offset such as + 1e5 drowns the step in rounding)." for name, count in
              unchecked.items()]
    stopped = passes = None
    if budget.ran_out:
        stopped, passes = (budget.seconds, None) if budget.passes is None else \
            (None, budget.passes)
        after = f"{stopped:g} s" if passes is None else f"{passes:,} checks"
        notes.append(f"Sampling stopped after {after}; "
                     f"{sum(f.checked for f in found.values()):,} entries checked.")
    return GradcheckReport(
        ok=False if bad else (None if inconclusive or noisy or stairs or cell.doubtful
                              or unchecked or budget.ran_out else True), unchecked=unchecked,
        stopped=stopped, passes=passes,
        covered={n: f.covered for n, f in found.items()}, cell_dtype=cell.dtype,
        cell_error=cell.error, cell_failed=cell.failed,
        max_error={n: f.worst for n, f in found.items()}, custom=analytic.custom,
        checked={n: f.checked for n, f in found.items()}, note=" ".join(notes) or None,
        inconclusive=inconclusive, unscaled=analytic.unscaled, failed=failed,
        kinks=kinked_ops(replay) if inconclusive or failed else (), detached=tuple(detached),
        noisy=noisy, noise=max((f.noise for f in found.values()), default=0.0),
        unresolved=stairs, stair=max((f.stair for f in found.values()), default=0.0),
        sides=sides, steep={name: tuple(f.steep) for name, f in found.items() if f.steep},
        steepness=max((f.steepness for f in found.values()), default=0.0),
        steep_step=STEP * SMALLER[-1] if any(f.steep for f in found.values()) else 0.0)


def kinked_ops(replay) -> tuple[str, ...]:
    """The ops with kinks (:data:`KINKED`) among the replay's steps, once each."""
    found = []
    for step in replay.steps:
        name = getattr(step.func, "__name__", "").strip("_")
        if name in KINKED or name.removesuffix("_") in KINKED:
            found.append(name.removesuffix("_"))
    return tuple(dict.fromkeys(found))


def _detached_note(detaching) -> list[str]:
    """A failed check where the cell detaches part of its computation: why that fails."""
    if not detaching:
        return []
    return [f"The cell detaches part of its computation ({', '.join(detaching)}): autograd "
            "treats it as a constant, the finite differences do not, so they differ even "
            "when every backward is right."]


@dataclass
class _Analytic:
    """The backward side: vᵀJ per input (for a scalar output divided by v: the gradient),
    the v the finite differences use, the custom backwards on the way, the inputs whose
    vᵀJ does not scale with v, and why nothing can be checked (``note``)."""

    grads: dict = field(default_factory=dict)
    numeric_v: torch.Tensor | None = None
    custom: tuple = ()
    unscaled: tuple = ()
    note: str | None = None
    raw: dict = field(default_factory=dict)  # vᵀJ per input, for a scalar output too
    v: torch.Tensor | None = None
    second: dict = field(default_factory=dict)  # v₂ᵀJ per input (a vector output's)
    v2: torch.Tensor | None = None


def _analytic(replay, values: dict, names: list, seed: int,
              cell_dtype: torch.dtype | None = None) -> _Analytic:
    """vᵀJ for each input by one backward pass through the replay, and the scaling check
    (``cell_dtype``: where the cell computes in less than float64, v is exact in it)."""
    leaves = {n: t.detach().requires_grad_(True) if n in names else t
              for n, t in values.items()}
    with torch.enable_grad():
        out = replay.run(leaves)
    if out.dtype != torch.float64:
        raise TypeError(f"the replay computes in {out.dtype}, not float64 (a custom Function "
                        "or an op casts), too coarse for finite differences")
    if not torch.isfinite(out).all():
        return _Analytic(note=_not_finite(out))
    v = probe_v(out, seed)
    if cell_dtype is not None:  # exact in the cell's dtype: its check uses the same v
        v = v.to(cell_dtype).to(torch.float64)
    scalar = out.numel() == 1
    numeric_v = torch.ones_like(v) if scalar else v  # a scalar's errors in its own units
    if not out.requires_grad:
        return _Analytic({n: torch.zeros_like(values[n]) for n in names}, numeric_v)
    wrt = [leaves[n] for n in names]
    v, raw = _fitted(out, wrt, v, cell_dtype or torch.float64)
    numeric_v = numeric_v if scalar else v
    v2 = None if scalar else probe_v(out, seed, SECOND)  # (a scalar's v cannot cancel)
    v2, second = (None, ()) if v2 is None else _fitted(out, wrt, v2, torch.float64)
    unscaled = _unscaled(out, wrt, names, v, raw)
    grads = tuple(g / v.reshape(()) for g in raw) if scalar else raw
    return _Analytic(dict(zip(names, grads)), numeric_v, custom_on_the_way(out, wrt),
                     unscaled, raw=dict(zip(names, raw)), v=v,
                     second=dict(zip(names, second)), v2=v2)


def _fitted(out: torch.Tensor, wrt: list, v: torch.Tensor, dtype: torch.dtype) -> tuple:
    """(v, vᵀJ) with v scaled down by a power of 2 (exact: the same direction) where the
    check's own arithmetic would overflow ``dtype`` (the cell's, or float64): |v|·|y| and
    vᵀJ, times :data:`SCALES` and summed over the output, stay below its largest value
    (exp at 709: 3·exp(709) is inf; a custom exp at 88 in float32). The check's overflow is
    never read as the backward's."""
    limit = torch.finfo(dtype).max / 2 ** 8 / max(1, out.numel()) / max(map(abs, SCALES))
    v = v * _below(float(out.detach().abs().max()) * V_MAGNITUDE[1], limit)
    raw = materialized_grad(out, wrt, v, retain_graph=True)
    top = _largest(raw)
    if top > limit:  # vᵀJ itself too large (J beyond y), or inf: measured at a smaller v
        smaller = v * (_below(top, limit) if math.isfinite(top) else 2.0 ** -64)
        again = materialized_grad(out, wrt, smaller, retain_graph=True)
        if _largest(again) <= limit:
            return smaller, again
    return v, raw


def _below(size: float, limit: float) -> float:
    """The largest power of 2 (at most 1) that brings ``size`` to ``limit`` or below."""
    if not size > limit or not math.isfinite(size):
        return 1.0
    return 2.0 ** -math.ceil(math.log2(size / limit))


def _largest(grads) -> float:
    """The largest |entry| of ``grads`` (NaN left out: no scaling removes it)."""
    return max((float(g.detach().abs().nan_to_num(nan=0.0, posinf=math.inf).max())
                for g in grads if g.numel()), default=0.0)


def _unscaled(out: torch.Tensor, wrt: list, names: list, v: torch.Tensor,
              grads: tuple) -> tuple[str, ...]:
    """The inputs whose vᵀJ is not linear in v: at each of :data:`SCALES` times v (twice,
    minus a half, 2⁻²⁰ and 2²⁰: another sign and size, tiny and huge incoming gradients),
    not that multiple of ``grads``, as when a backward ignores ``grad_output``, uses
    |grad_output| or treats small or large ones otherwise (for a scalar output v is one
    number: its own sign alone cannot tell g from |g|); a vector output's v split in two
    halves too (:func:`_split`). Backward passes: 4, and 3 more for a vector output."""
    found: set = set()
    for scale in SCALES:
        scaled = materialized_grad(out, wrt, scale * v, retain_graph=True)
        atol = _atol(scaled)  # scaling by a power of 2 is exact: for reordered sums only
        found.update(n for n, g, gs in zip(names, grads, scaled)
                     if not torch.allclose(gs, scale * g, rtol=RTOL, atol=atol,
                                           equal_nan=True))
    if v.numel() > 1:
        found.update(_split(out, wrt, names, v, grads))
    return tuple(n for n in names if n in found)


def _split(out: torch.Tensor, wrt: list, names: list, v: torch.Tensor,
           grads: tuple) -> set:
    """The inputs whose vᵀJ is not additive over v split in halves a and b (alternate flat
    entries): aᵀJ + bᵀJ must be vᵀJ (each half holds exact zeros: a backward wrong where
    grad_output is 0 shows), and (:data:`MIXED`·a + b)ᵀJ − bᵀJ must be MIXED·aᵀJ (mixed
    magnitudes in one grad_output: one that drops entries small beside the largest shows).
    The second is held to half of MIXED·aᵀJ beyond 2¹⁰ ε of the terms' rounding: it tells a
    dropped part (all of it), never the reordered sums' rounding. Both allow the rounding of
    the largest vᵀJ of all inputs (:func:`_atol`: a bias before BatchNorm, whose true
    derivatives are 0, holds only rounding noise)."""
    half = (torch.arange(v.numel(), device=v.device) % 2 == 0).reshape(v.shape)
    a, b = v * half, v * ~half
    ga, gb, gm = (materialized_grad(out, wrt, w, retain_graph=True)
                  for w in (a, b, MIXED * a + b))
    found, atol, largest = set(), _atol(grads), _largest(grads)
    for n, g, x, y, m in zip(names, grads, ga, gb, gm):
        if not torch.allclose(x + y, g, rtol=RTOL, atol=atol, equal_nan=True):
            found.add(n)
            continue
        want, got = MIXED * x, m - y
        rounding = 2 ** 10 * EPS * (m.abs() + y.abs() + largest)
        off = (got - want).abs() > 0.5 * want.abs() + rounding
        if bool((off & torch.isfinite(want) & torch.isfinite(got)).any()):
            found.add(n)
    return found


def _cell_dtype(output) -> torch.dtype | None:
    """The cell's floating dtype where it is coarser than float64, else None."""
    dtype = getattr(output, "dtype", None)
    if dtype is None or not dtype.is_floating_point or dtype.is_complex:
        return None
    return dtype if torch.finfo(dtype).eps > torch.finfo(torch.float64).eps else None


@dataclass
class _Cell:
    """The cell dtype's own derivatives against the float64 ones (:func:`_cell_derivatives`):
    the dtype compared, the largest difference per input, the inputs failed, and those in
    doubt (the cell branches, and float32 takes the other side of a kink than float64)."""

    dtype: str | None = None
    error: dict = field(default_factory=dict)
    failed: tuple = ()
    note: str | None = None
    doubtful: tuple = ()


BRANCHING = frozenset(("gt", "lt", "ge", "le", "eq", "ne", "greater", "less", "greater_equal",
                       "less_equal", "argmax", "argmin", "argsort", "bucketize",
                       "searchsorted"))  # with KINKED: where float32 may branch otherwise


def _cell_derivatives(own, inputs: tuple, output, names: list, analytic: _Analytic,
                      replay, base: tuple) -> _Cell:
    """The cell's vᵀJ computed in its own dtype (float32: its custom backwards at that
    dtype, as the cell ran them) against the float64 one, within that dtype's rounding:
    :data:`CELL_ULPS` of its epsilon (at least :data:`RTOL`), plus 10 times the values' own
    measured difference from float64's (cancellation in a float32 matmul), of each entry
    plus a tenth of the largest of all inputs'. Only where a custom backward lies on the way
    (PyTorch's own are right in every dtype: a difference there is rounding); where the
    values differ by over :data:`COARSE`, or the derivatives differ where the cell branches
    (relu, a comparison) and the two dtypes take different branches there
    (:func:`_same_branches`), or by no more than the same formula's rounding in that dtype
    (:func:`_rounding_excuses`: cancellation, saturation), the custom backwards are in doubt
    (the verdict inconclusive, a note), not failed (``own``: the cell's replay in its dtype,
    built once; ``inputs``: the cell's and their float64 values; ``base``: the float64
    output and the run's seed)."""
    (inputs, values), (base, seed) = inputs, base
    dtype = _cell_dtype(output)
    if dtype is None or analytic.v is None or not analytic.raw or not analytic.custom:
        return _Cell()
    computed = _cell_vjp(own, inputs, names, analytic.v.to(dtype))
    if computed is None:
        return _Cell()
    out, grads = computed
    tol, label = max(RTOL, CELL_ULPS * torch.finfo(dtype).eps), str(dtype).split(".")[-1]
    gap, tiny = float((out.double() - base).abs().max()), torch.finfo(torch.float64).tiny
    forward = gap / max(float(base.abs().max()), tiny)
    if not forward <= COARSE:  # the values cancelled (Σ x³ over ±x: 0)? what the steps read
        read = _read_gap(own, inputs, replay)
        forward = forward if read is None else read
    if not forward <= COARSE:
        return _Cell(label, doubtful=tuple(names), note=(
            f"The {label} derivatives (custom backward {', '.join(analytic.custom)}) were "
            f"not compared with the float64 ones: the {label} values already differ by "
            f"{forward:.1e} of the largest."))
    scale = max((float(g.abs().max()) for g in analytic.raw.values() if g.numel()),
                default=0.0) or 1.0  # the largest derivative of all (a bias before
    error, failed, gaps, allowed = {}, [], {}, {}  # BatchNorm: 0 in float64, float32's
    for name, g in zip(names, grads):  # rounding beside the others'
        want = analytic.raw[name]
        if not want.numel():
            continue
        gaps[name] = (g.double() - want).abs()
        error[name] = float(gaps[name].max()) / scale
        allowed[name] = (tol + 10 * forward) * (want.abs() + 0.1 * scale)
        if not bool((gaps[name] <= allowed[name]).all()):
            failed.append(name)
    branches = [*kinked_ops(replay), *_branching(replay)]
    if failed and branches and not _same_branches(own, inputs, replay):
        return _Cell(label, error, doubtful=tuple(failed), note=(
            f"The {label} derivatives differ from the float64 ones, but the cell branches "
            f"({', '.join(dict.fromkeys(branches))}) and {label} takes another branch there "
            "than float64 (or the branches could not be compared)."))
    if failed:
        return _rounding_excuses(replay, (values, seed), analytic.v, dtype,
                                 (_Cell(label, error, tuple(failed)), gaps, allowed, scale))
    return _Cell(label, error, tuple(failed))


def _rounding_excuses(replay, values: tuple, v: torch.Tensor, dtype: torch.dtype,
                      found: tuple) -> _Cell:
    """``found`` (the cell's verdict with failed inputs, each input's difference from the
    float64 vᵀJ and the difference allowed, per entry, and the largest derivative): where
    every failed entry's difference is within :data:`.gradcheck_rounding.MARGIN` times what
    the same formula's rounding in ``dtype`` moves it by
    (:func:`.gradcheck_rounding.rounding_moves`), in doubt, not failed."""
    cell, gaps, allowed, scale = found
    (values, seed), names = values, list(cell.failed)
    moves = rounding_moves(replay, values, names, v, dtype, seed)
    if moves is None or not all(bool((gaps[n] <= allowed[n] + MARGIN * moves[n]).all())
                                for n in names):
        return cell
    worst = max(cell.error[n] for n in names)
    expected = max(float(moves[n].max()) for n in names) / scale
    return _Cell(cell.dtype, cell.error, doubtful=tuple(names), note=(
        f"The {cell.dtype} derivatives of {', '.join(names)} differ from the float64 ones by "
        f"up to {worst:.1%} of the largest, but rounding of this size is expected here: the "
        f"same operations in float64, each value rounded as {cell.dtype} rounds it, move "
        f"them by up to {expected:.1%} in {RUNS} runs (cancellation, as 1 − cos x near 0, or "
        f"saturation, as 1 − p for a softmax's p near 1), so {cell.dtype} cannot tell a right "
        "backward from a wrong one here."))


def _read_gap(own, inputs: dict, replay) -> float | None:
    """The largest difference, of its own largest |value|, between what a step reads in the
    cell's dtype and in float64 (every floating argument of every step: what the backwards
    read, a custom Function's input among them); None where the two replays do not pair.
    The output itself is read by no step: a sum that cancels to ~0 (Σ x³ over ±x) is judged
    by the terms it read, while (z + 1e6) − 1e6 fed to a custom Function still shows."""
    wide = _Reads(replay.steps)
    try:
        with torch.no_grad():
            replay.run({n: t.detach().to(torch.float64) if t.is_floating_point()
                        else t.detach() for n, t in inputs.items()}, interpreter=wide)
            narrow = _Reads(own.steps, wide.reads)
            own.run({n: t.detach() for n, t in inputs.items()}, interpreter=narrow)
    except Exception:  # noqa: BLE001 - no pairing: the output's own gap stands
        return None
    return narrow.gap if narrow.paired and not narrow.reads else None


class _Reads(Interpreter):
    """A replay keeping (``against`` None) each step's floating arguments in float64, or
    comparing its own with those kept, in order: ``gap``, the largest difference of the
    kept one's largest |value|; ``paired``: every one had its partner of the same shape."""

    def __init__(self, steps: list, against: list | None = None):
        super().__init__(steps)
        self.against, self.reads = against, [] if against is None else list(against)
        self.gap, self.paired = 0.0, True

    def call_function(self, step, args: tuple, kwargs: dict):
        for t in tensors_in((args, kwargs)):
            if not (t.is_floating_point() and t.numel()):
                continue
            if self.against is None:
                self.reads.append(t.detach().to(torch.float64, copy=True))
            elif not self.reads or self.reads[0].shape != t.shape:
                self.paired = False
            else:
                wide = self.reads.pop(0)
                scale = float(wide.abs().max())
                gap = float((t.detach().double() - wide).abs().max())
                if scale > 0 and math.isfinite(scale):
                    self.gap = max(self.gap, gap / scale) if math.isfinite(gap) else math.inf
        return super().call_function(step, args, kwargs)


class _Decisions(Interpreter):
    """A replay that keeps, for each branching step (:data:`KINKED`, :data:`BRANCHING`),
    which branch it took: a comparison's (integer or boolean) result, else the step's vᵀJ
    for a fixed w of alternating signs (:func:`_branch_w`): which side of a kink (relu's
    0 or w), which entry a max or sort picks (w's entries differ, neighbours in sign)."""

    def __init__(self, steps: list):
        super().__init__(steps)
        self.decisions: list = []

    def call_function(self, step, args: tuple, kwargs: dict):
        name = getattr(step.func, "__name__", "").strip("_").removesuffix("_")
        if name not in KINKED and name not in BRANCHING:
            return super().call_function(step, args, kwargs)
        wrt = [a.detach().requires_grad_(True) for a in args
               if isinstance(a, torch.Tensor) and a.is_floating_point()]
        leaves = iter(wrt)  # cloned: an in-place op (relu_) acts on a non-leaf
        with torch.enable_grad():
            value = super().call_function(step, tuple(
                next(leaves).clone() if isinstance(a, torch.Tensor) and a.is_floating_point()
                else a for a in args), kwargs)
        parts = list(value) if isinstance(value, (tuple, list)) else [value]
        if not all(isinstance(part, torch.Tensor) for part in parts):
            raise TypeError(f"{name} returns {type(value).__name__}")
        moving = [p for p in parts if p.is_floating_point() and p.requires_grad]
        self.decisions += [p.detach() for p in parts  # (sort's indices)
                           if not any(p is m for m in moving)]
        if moving and wrt:
            self.decisions.append(materialized_grad(moving, wrt, [_branch_w(p) for p in moving]))
        return value  # (the steps after it run without grad)


def _branch_w(value: torch.Tensor) -> torch.Tensor:
    """±(1 + (k mod 16)/16) at flat entry k, the sign alternating: exact in float32."""
    k = torch.arange(value.numel(), device=value.device)
    w = (1 + (k % 16) / 16) * (1 - 2 * (k % 2))
    return w.to(value.dtype).reshape(value.shape)


def _same_branches(cell, inputs: dict, replay) -> bool:
    """Whether the cell's dtype takes the same branch as float64 at every branching step
    (:class:`_Decisions`: equal results or signs, magnitudes within :data:`RTOL`): then a
    difference of their derivatives is not a branch's. False where it cannot tell."""
    try:
        coarse, fine = _Decisions(cell.steps), _Decisions(replay.steps)
        with torch.no_grad():
            values = {n: t.detach() for n, t in inputs.items()}
            cell.run(values, interpreter=coarse)
            replay.run(values, interpreter=fine)
    except Exception:  # noqa: BLE001 - cannot tell: in doubt, as before
        return False
    if len(coarse.decisions) != len(fine.decisions):
        return False
    return all(_same_decision(a, b) for a, b in zip(coarse.decisions, fine.decisions))


def _same_decision(coarse, fine) -> bool:
    """One branching step's decisions in the two dtypes agree (see :func:`_same_branches`)."""
    pairs = list(zip(coarse, fine)) if isinstance(coarse, tuple) else [(coarse, fine)]
    for a, b in pairs:
        if a.shape != b.shape:
            return False
        if not a.is_floating_point():
            if not torch.equal(a, b.to(a.dtype)):
                return False
            continue
        a = a.to(torch.float64)
        if not (torch.equal(a.sign(), b.sign()) and torch.allclose(a, b, rtol=RTOL, atol=0)):
            return False
    return True


def _branching(replay) -> list[str]:
    """The comparisons among the replay's steps (:data:`BRANCHING`)."""
    names = (getattr(step.func, "__name__", "").strip("_") for step in replay.steps)
    return [n.removesuffix("_") for n in names if n.removesuffix("_") in BRANCHING]


def _cell_vjp(replay, inputs: dict, names: list, v: torch.Tensor):
    """(the output, vᵀJ per input) of the cell replayed in its own dtype (``replay``, built
    and verified once for the whole check: each run may run a custom Function's forward,
    the user's code), or None."""
    try:
        leaves = {n: t.detach().requires_grad_(True) if n in names else t.detach()
                  for n, t in inputs.items()}
        with torch.enable_grad():
            out = replay.run(leaves)
        if out.dtype != v.dtype or not out.requires_grad:
            return None
        return out.detach(), materialized_grad(out, [leaves[n] for n in names], v)
    except Exception:  # noqa: BLE001 - the float64 check stands alone
        return None


def _atol(derivatives) -> float:
    """The absolute tolerance: :data:`ATOL`, or less where every input's derivatives are
    smaller than 1 (ATOL times the largest of them all): a backward 1 % off, or one ignoring
    ``grad_output``, fails at 1e-6 as at 1, while an input whose true derivatives are 0
    beside others' (a bias before BatchNorm) keeps a tolerance for its rounding noise."""
    sizes = [float(d.detach().abs().nan_to_num(posinf=1.0).max()) for d in derivatives
             if d.numel()]
    return ATOL * min(1.0, max(sizes, default=1.0))


def probe_v(out: torch.Tensor, seed: int, draw: int = 0) -> torch.Tensor:
    """The check's v, shaped like ``out``, from the run's ``seed``: entries of magnitude
    in :data:`V_MAGNITUDE` (never near 0 or ±1: an error in any entry shows, and so does a
    backward that ignores its incoming gradient) and random signs; ``draw`` 1 gives the
    second, independent v (:data:`SECOND`)."""
    generator = probe_generator(seed, "gradcheck", draw)
    low, high = V_MAGNITUDE
    magnitude = low + (high - low) * torch.rand(out.shape, generator=generator,
                                                dtype=torch.float64)
    sign = torch.randint(0, 2, out.shape, generator=generator).to(torch.float64) * 2 - 1
    return (sign * magnitude).to(out.device)


def custom_on_the_way(out: torch.Tensor, inputs: list) -> tuple[str, ...]:
    """The custom ``autograd.Function`` backward nodes on some path from ``out`` to one of
    the leaf tensors ``inputs``, by name, once each (``out``'s graph read once)."""
    if out.grad_fn is None:
        return ()
    wanted = {id(t) for t in inputs}
    reaches: dict[int, bool] = {}
    order, stack, seen = [], [(out.grad_fn, False)], {}
    while stack:  # postorder without recursion: a node after everything below it
        node, expanded = stack.pop()
        if expanded:
            order.append(node)
            continue
        if id(node) in seen:
            continue
        seen[id(node)] = node  # held: the walk compares ids (see core.tagging.walk_nodes)
        stack.append((node, True))
        stack.extend((child, False) for child, _ in node.next_functions if child is not None)
    for node in order:
        variable = getattr(node, "variable", None)
        reaches[id(node)] = (variable is not None and id(variable) in wanted) or any(
            reaches.get(id(child), False) for child, _ in node.next_functions
            if child is not None)
    return tuple(dict.fromkeys(
        node.name() for node in order if reaches[id(node)]
        and isinstance(node, torch.autograd.function.BackwardCFunction)))


def _not_finite(out: torch.Tensor) -> str:
    """Why a check cannot run where the output holds inf or nan: its first such entry."""
    flat = out.detach().reshape(-1)
    k = int((~torch.isfinite(flat)).nonzero()[0])
    where = "" if out.dim() == 0 else f"[{', '.join(map(str, np.unravel_index(k, out.shape)))}]"
    return (f"The output is not finite (y{where} = {float(flat[k]):g}): finite differences "
            "need finite values there.")


class Agreement(TextEnum):
    """One entry's finite difference against autograd's."""

    AGREE = "agree"
    DISAGREE = "disagree"
    KINK = "kink"  # f kinks at the entry, and autograd took a one-sided slope: no verdict
    NOISY = "noisy"  # within the differences' rounding noise, not the tolerance: no verdict
    UNRESOLVED = "unresolved"  # f changes in rounding stairs coarser than the step: no verdict
    STEEP = "steep"  # no step is safe: f's slope changes within the smallest step, no verdict


@dataclass
class _Found:
    """One input's comparison: the largest conclusive error, entries examined, whether all
    conclusive ones agree, and the indices of the inconclusive ones."""

    worst: float = 0.0
    checked: int = 0
    agree: bool = True
    inconclusive: list = field(default_factory=list)
    failed: list = field(default_factory=list)
    noisy: list = field(default_factory=list)
    noise: float = 0.0  # the largest rounding noise of a noisy entry
    noise_at: int | None = None  # its flat entry
    covered: int = 0  # entries outside the sample checked (in groups, or singly)
    singles: int = 0  # of them, checked singly (their group in doubt)
    unchecked: int = 0  # left unchecked: too many groups in doubt (MAX_SINGLES)
    worst_at: int | None = None  # the flat entry of ``worst`` (a vector output's is in vᵀJ)
    largest: list = field(default_factory=list)  # (error, k) of the largest, up to RIVALS
    by_second: frozenset = frozenset()  # the entries failed by the second v (their errors)
    unresolved: list = field(default_factory=list)  # entries in rounding stairs (Agreement)
    stair: float = 0.0  # the largest such stair, in x
    sides: tuple | None = None  # (index, left, right): a kink's one-sided derivatives
    steep: list = field(default_factory=list)  # of the inconclusive: no step safe (STEEP)
    steepness: float = 0.0  # the largest change of slope within the smallest step, relative

    def rivals(self) -> list:
        """(error, k) of the entries whose error in vᵀJ is within the spread of |v| of the
        worst (V_MAGNITUDE: a 2× larger weight may hide a larger derivative error), up to
        RIVALS of them: each may be the worst in J's own units."""
        low, high = V_MAGNITUDE
        return [(e, k) for e, k in self.largest if e * high / low >= self.worst]

    def add(self, verdict: Agreement, error: float, where: list, k: int | None = None) -> None:
        """One entry's (flat ``k``, at ``where``) verdict and error, recorded."""
        if verdict in (Agreement.KINK, Agreement.STEEP):
            self.inconclusive += where
            if verdict is Agreement.STEEP:
                self.steep += where
                self.steepness = max(self.steepness, error)
        elif verdict is Agreement.UNRESOLVED:
            self.unresolved += where
            self.stair = max(self.stair, error)
        elif verdict is Agreement.NOISY:
            self.noisy += where
            if error > self.noise or self.noise_at is None:
                self.noise, self.noise_at = max(self.noise, error), k
        else:
            if error > self.worst or self.worst_at is None:
                self.worst, self.worst_at = max(self.worst, error), k
            if k is not None:
                self.largest = sorted(self.largest + [(error, k)], reverse=True)[:RIVALS]
            self.agree = self.agree and verdict is Agreement.AGREE
            self.failed += where if verdict is Agreement.DISAGREE else []


@dataclass
class _Input:
    """What one input's checks share: the replay, the values, the input's name, its vᵀJ,
    the probe (v, f(x), hidden noise), the tolerance and the rounding noise; ``second``: the
    same for the second v (a vector output's), read from the same outputs."""

    replay: object
    values: dict
    name: str
    analytic: torch.Tensor
    probe: tuple
    atol: float
    noise: _Noise
    second: _Input | None = None

    def entry(self, found: _Found, k: int) -> Agreement:
        """Entry ``k`` checked on its own, recorded in ``found``: at the step :data:`STEP`,
        and where that does not agree and 0 < |x_k| < :data:`SMALL` or |x_k| >= :data:`LARGE`,
        again at a step relative to x_k (:func:`_relative`), whose verdict stands where it is
        one (agree, disagree); the step's own further checks (stairs, a point nearby:
        :func:`_entry`) run only where its verdict stands (a right backward at x below the
        step costs no more)."""
        scale = _relative(float(self.values[self.name].reshape(-1)[k]))
        with _further(scale == 1.0), _kink_sides() as sides:  # (a scalar's sides: told)
            verdict, error, by_second = self._both(k, 1.0, found.agree)
        if verdict is not Agreement.AGREE and scale != 1.0:
            again = self._both(k, scale, found.agree)
            if again[0] in (Agreement.AGREE, Agreement.DISAGREE):
                verdict, error, by_second = again
            elif verdict in (Agreement.DISAGREE, Agreement.KINK):  # the step's stands: in full
                with _kink_sides() as sides:
                    verdict, error, by_second = self._both(k, 1.0, found.agree)
        where = _index(self.values[self.name].shape, k)
        if verdict is Agreement.KINK and sides and self.probe[0].numel() == 1:
            found.sides = found.sides or (where, *sides[0])
        if by_second:
            found.by_second = found.by_second | {k}
        found.add(verdict, error, [where], k)
        return verdict

    def _both(self, k: int, scale: float, retry: bool) -> tuple[Agreement, float, bool]:
        """v's verdict on entry ``k`` at steps ``scale`` times their size; where it agrees,
        the second v is asked too, from the same outputs (no forward run where it agrees at
        once): one v may cancel an error (vᵀΔJ e_k = 0 with ΔJ e_k ≠ 0), two independent
        ones together almost never; its disagreement is the entry's (True: the second's)."""
        direction, moved = _direction(self.values[self.name], k, 0) * scale, {}
        verdict, error = self._judged(direction, k, moved, retry, scale)
        if verdict is Agreement.AGREE and self.second is not None:
            again = self.second._judged(direction, k, moved, True, scale)
            if again[0] is Agreement.DISAGREE:
                return again[0], again[1], True
        return verdict, error, False

    def _judged(self, direction: torch.Tensor, k: int, moved: dict, retry: bool,
                scale: float = 1.0) -> tuple[Agreement, float]:
        """:func:`_entry`'s verdict on entry ``k`` for this v (``moved``: outputs by step)
        along ``direction``, ``scale`` times e_k (the derivative and its tolerance scaled
        with it; the error told in e_k's units)."""
        verdict, error = _entry(self.replay, self.values, self.name, direction, self.probe,
                                float(self.analytic.reshape(-1)[k]) * scale, self.analytic,
                                self.atol * scale, self.noise, retry=retry, moved=moved)
        return verdict, error / scale

    def group_agrees(self, u: torch.Tensor, group: torch.Tensor, weights: torch.Tensor,
                     scale: float = 1.0) -> bool:
        """Whether the flat entries ``group`` moved along ``u`` (``weights`` on them, each
        at most ``scale`` steps, :func:`_relative`) agree, for v and the second v, from the
        same outputs (:meth:`_group_within`)."""
        steps = (STEP, -STEP, STEP / 2, -STEP / 2)
        outs = [moved_output(self.replay, self.values, self.name, t * u) for t in steps]
        return all(c._group_within(u, outs, steps, group, weights, scale)
                   for c in (self, self.second) if c is not None)

    def _group_within(self, u: torch.Tensor, outs: list, steps: tuple, group: torch.Tensor,
                      weights: torch.Tensor, scale: float = 1.0) -> bool:
        """Whether the central differences along ``u`` at steps h and h/2 agree with this
        v's vᵀJ u within ``atol`` (times the group's ``scale``, as a single entry's at its
        relative step) plus their measured error: twice their gap (a smooth f's truncation
        error at h/2 is a third of it) plus their rounding noise. In doubt (False) where the
        gap or the noise is over the loose tolerance (``atol`` and ``RTOL`` scaled to the
        group: a kink or a stair within the step, values too large), which there would hide
        a wrong entry."""
        v, base, _ = self.probe
        flat, norm = self.analytic.reshape(-1), float(weights[group].norm())
        want = float(flat[group] @ weights[group])
        loose = self.atol * norm + RTOL * float(flat[group].norm()) * norm / len(group)
        g = [float(v.mul(out - base).sum()) for out in outs]
        wide, narrow = (g[0] - g[1]) / (2 * STEP), (g[2] - g[3]) / STEP
        gap = abs(wide - narrow)
        if not math.isfinite(gap + narrow) or gap > loose:
            return False
        noise = self._group_noise(u, outs, steps, None)
        if noise > loose:  # counting only the outputs that move along u (many outputs)
            noise = self._group_noise(u, outs, steps, _support(
                self.replay, self.values, self.name, u, base))
        return noise <= loose and abs(narrow - want) <= self.atol * scale + 2 * gap + noise

    def _group_noise(self, u: torch.Tensor, outs: list, steps: tuple, mask) -> float:
        """The rounding noise of :meth:`group_agrees`' two central differences, summed."""
        start = self.values[self.name]
        noises = [self.noise(out, mask, start + t * u, t * u) / abs(t)
                  for out, t in zip(outs, steps)]
        return (noises[0] + noises[1]) / 2 + (noises[2] + noises[3]) / 2


def _compare(replay, values: dict, name: str, analytic: torch.Tensor, probe: tuple,
             budget: Budget, seed: int, atol: float = ATOL,
             second: tuple | None = None) -> _Found:
    """One input's entries compared; at least one entry is checked, more while the
    ``budget`` lasts. Where entries are sampled, the others are checked in groups after them
    (:func:`_groups`), until one fails or the budget is spent. ``second``: (the probe of
    the second v, its v₂ᵀJ) for a vector output (:meth:`_Input.entry`)."""
    count = values[name].numel()
    if count <= MAX_ENTRIES:
        order = list(range(count))
    else:
        generator = probe_generator(seed, "gradcheck-entries")
        order = torch.randperm(count, generator=generator).tolist()
    found = _Found()
    checks = _Input(replay, values, name, analytic, probe, atol,
                    _Noise(probe[0], probe[1], analytic, values[name]))
    if second is not None:
        (probe2, analytic2) = second
        checks.second = _Input(replay, values, name, analytic2, probe2, atol,
                               _Noise(probe2[0], probe2[1], analytic2, values[name]))
    for k in order[:MAX_ENTRIES]:
        if not budget.allows(free=not found.checked):
            break
        checks.entry(found, k)
        found.checked += 1
    if found.agree and len(order) > MAX_ENTRIES:
        _groups(checks, found, order[MAX_ENTRIES:], budget, seed)
    return found


def _groups(checks: _Input, found: _Found, rest: list, budget: Budget, seed: int) -> None:
    """The entries outside the sample, in groups of :data:`GROUP` or more (at most
    :data:`MAX_GROUPS` groups), each along one direction of random signs on its entries,
    held to the measured error of its finite differences (:meth:`_Input.group_agrees`), not
    to a relative tolerance: a single entry 1 % off stands out of thousands. Only a
    detector: a group in doubt (a disagreement, a kink, noise) has its entries checked
    singly, and they give the verdict, by entry (a right backward is never failed for a
    group); after :data:`MAX_SINGLES` such entries the rest is left (``unchecked``: the
    values are noisy there; the check is then not passed). The groups stop at the first
    failure or where the ``budget`` is spent."""
    size = max(GROUP, -(-len(rest) // MAX_GROUPS))
    generator = probe_generator(seed, "gradcheck-direction")
    flat = checks.analytic.reshape(-1)
    scales = _relatives(checks.values[checks.name].reshape(-1)).to(flat)
    weights = _weights(checks.analytic.numel(), generator).to(flat) * scales  # each entry's
    # step relative to it, as a single entry's (:func:`_relative`); groups of like scales
    rest_at = torch.tensor(rest, device=flat.device)
    rest_at = rest_at[torch.sort(scales[rest_at], stable=True).indices]
    for start in range(0, len(rest), size):
        if not found.agree or not budget.allows():
            return
        group = rest_at[start:start + size]
        u = torch.zeros_like(flat)
        u[group] = weights[group]
        if checks.group_agrees(u.reshape(checks.analytic.shape), group, weights,
                               float(scales[group].max())):
            found.covered += len(group)
            continue
        if found.singles + len(group) > MAX_SINGLES:  # many in doubt (noise): enough
            found.unchecked = len(rest) - found.covered
            return
        for k in group.tolist():  # in doubt: the entries themselves tell
            if budget.allows():
                checks.entry(found, k)
                found.singles, found.covered = found.singles + 1, found.covered + 1


def _relative(x: float) -> float:
    """The step for an entry of value ``x``, in steps :data:`STEP` (the one owner of the
    step for an entry of scale |x|, :func:`_relatives` for many): |x| / :data:`SMALL` where
    x is nearer 0 than that (a step as large as x, 1e-6 at x = 1e-6, is no small change
    there: x³'s sides differ by 6x·h), |x| from :data:`LARGE` on (at x = 1e10 a step of 1e-6
    is below the rounding of f: x³'s noise ε·1e30/1e-6 drowns any error; 1e-6·|x| resolves
    it), else 1; also 1 at 0 (no scale: the kinks of relu, abs), below :data:`SMALL_FLOOR`
    (products of such values underflow) and at inf or nan."""
    return float(_relatives(torch.tensor(x, dtype=torch.float64)))


def _relatives(x: torch.Tensor) -> torch.Tensor:
    """:func:`_relative` of each entry of ``x`` (the steps of a group's entries)."""
    size = x.detach().abs().to(torch.float64)
    small = (size >= SMALL_FLOOR) & (size < SMALL)
    large = (size >= LARGE) & torch.isfinite(size)
    return torch.where(small, size / SMALL, torch.where(large, size, torch.ones_like(size)))


def _index(shape, k: int):
    """Entry ``k`` (row-major) as an index: an int for a vector, a tuple otherwise."""
    index = tuple(int(i) for i in np.unravel_index(k, tuple(shape)))
    return index[0] if len(index) == 1 else index


def _close(a: float, b: float, noise: float = 0.0, atol: float = ATOL,
           rtol: float = RTOL) -> bool:
    """Whether ``a`` and ``b`` agree within the tolerances, ``noise`` (their rounding noise)
    allowed on top."""
    return abs(a - b) <= atol + rtol * max(abs(a), abs(b)) + noise


def _agreement(want: float, numeric: float, noise: float = 0.0,
               atol: float = ATOL, rtol: float = RTOL) -> Agreement:
    """AGREE within the tolerances; NOISY where only the rounding ``noise`` of ``numeric``
    covers the difference; else DISAGREE."""
    if _close(want, numeric, 0.0, atol, rtol):
        return Agreement.AGREE
    return Agreement.NOISY if _close(want, numeric, noise, atol, rtol) else Agreement.DISAGREE


def _entry(replay, values: dict, name: str, u: torch.Tensor, probe: tuple,
           want: float, analytic: torch.Tensor, atol: float = ATOL,
           noise: _Noise | None = None, rtol: float = RTOL,
           retry: bool = True, moved: dict | None = None) -> tuple[Agreement, float]:
    """:func:`_entry_verdict`, where it disagrees or finds no safe step, judged against the
    differences' own truncation (:func:`_steep`): where f's slope changes within the smallest
    step (sin(1e8·x)), the differences establish nothing: STEEP (inconclusive), with that
    change relative to the derivative, never a failure or a kink."""
    noise = noise or _Noise(probe[0], probe[1], analytic, values[name])
    found = _entry_verdict(replay, values, name, u, probe, want, analytic, atol, noise, rtol,
                           retry, moved)
    if found[0] not in (Agreement.DISAGREE, Agreement.STEEP):
        return found
    change = _steep(_along(replay, values, name, u, probe, noise, moved), want, atol, rtol,
                    found[0] is Agreement.STEEP)
    return found if change is None else (Agreement.STEEP, change)


def _along(replay, values: dict, name: str, u: torch.Tensor, probe: tuple, noise: _Noise,
           moved: dict | None, mask=None, inside: float = 0.0):
    """h -> (vᵀ(f(x + h u) − f(x)), its rounding noise) (``moved``: outputs kept by step;
    ``mask``: the output entries counted in the noise; ``inside``: hidden noise, per STEP)."""
    v, base, _ = probe
    start = values[name]

    def along(h: float) -> tuple[float, float]:
        out = moved.get(h) if moved is not None else None
        if out is None:
            out = moved_output(replay, values, name, h * u)
            if moved is not None:
                moved[h] = out
        return (float(v.mul(out - base).sum()),
                noise(out, mask, start + h * u, h * u) + inside * STEP)
    return along


def _steep(along, want: float, atol: float, rtol: float, always: bool) -> float | None:
    """How much f's slope changes within the smallest step s (its one-sided quotients at s,
    right minus left, relative to the derivative) where the central differences at s and
    s/2 still differ beyond tolerance and rounding noise (truncation: f not resolved even at
    s) and neither one-sided quotient agrees with its own at s/2 within ``atol`` and noise
    (a kink within s has a side that does: a piece, relu's, is linear at that scale); else
    None (``always``: the change wherever no side is safe)."""
    s = STEP * SMALLER[-1]
    (up, n_up), (down, n_down) = along(s), along(-s)
    (up2, n_up2), (down2, n_down2) = along(s / 2), along(-s / 2)
    wide, narrow = (up - down) / (2 * s), (up2 - down2) / s
    noise = (n_up + n_down) / (2 * s) + (n_up2 + n_down2) / s
    sides = [_close(up / s, up2 / (s / 2), (n_up + n_up2) * 2 / s, atol, 0.0),
             _close(-down / s, -down2 / (s / 2), (n_down + n_down2) * 2 / s, atol, 0.0)]
    if any(sides) or not (always or not _close(wide, narrow, noise, atol, rtol)):
        return None
    return abs(up + down) / s / max(abs(want), abs(wide), abs(narrow), atol)


def _entry_verdict(replay, values: dict, name: str, u: torch.Tensor, probe: tuple,
                   want: float, analytic: torch.Tensor, atol: float, noise: _Noise,
                   rtol: float, retry: bool, moved: dict | None) -> tuple[Agreement, float]:
    """(:class:`Agreement`, |want − numeric|, or for NOISY the noise) along ``u``: the
    central difference where f is smooth across the step, else a safe one-sided one (see
    the module), each judged with its rounding noise (:class:`_Noise`): first counting
    every output entry, then, where that leaves it NOISY, only those that move along ``u``
    (:func:`_support`; x + 1e12 moves none at the step, yet each depends on x). ``retry``:
    a disagreement is tried again at the smaller steps (:func:`_judged`); ``moved``: the
    outputs by step, kept (another v's check of the same entry reads them again)."""
    v, base, hidden = probe

    def along_within(mask, inside: float = 0.0):
        return _along(replay, values, name, u, probe, noise, moved, mask, inside)

    tolerance = (atol, rtol, retry)
    found = _judged(along_within(None), want, *tolerance)
    if found[0] is Agreement.NOISY:
        found = _judged(along_within(_support(replay, values, name, u, base)), want,
                        *tolerance)
    if found[0] in (Agreement.DISAGREE, Agreement.KINK):  # rounding inside may explain it
        inside = hidden(name, u)  # (x + 1e12 - 1e12: the step lost in x + 1e12), measured
        if inside:  # judged again, each difference with that noise as well
            found = _judged(along_within(None, inside), want, *tolerance)
    if found[0] not in (Agreement.DISAGREE, Agreement.KINK, Agreement.STEEP) or not retry \
            or not _FURTHER.get():
        return found
    stairs = lambda: unresolved(along_within(None), STEP, want, (atol, rtol))  # noqa: E731
    stair = stairs() if found[0] is Agreement.DISAGREE else None  # rounding stairs?
    if found[0] is Agreement.DISAGREE and not stair and _USERS_BACKWARD.get():
        return found  # f smooth along u at x, a user's backward on the way disagrees there:
        # wrong at x, whatever it gives at x' (a built-in's ties are checked there, below)
    nearby = (None, 0.0) if stair else _nearby(replay, values, name, u, v, (atol, rtol))
    if nearby[0] is Agreement.DISAGREE:  # wrong where f has a derivative: fails, with the
        # error at x, or at a kink the one at x' (at x the backward may be near a side)
        return found if found[0] is Agreement.DISAGREE else nearby
    if found[0] is Agreement.KINK and nearby[0] is not Agreement.AGREE:  # stairs, not kinks?
        stair = stairs()  # (a true kink's x' agrees: no ladder there)
    if stair:
        return Agreement.UNRESOLVED, stair * float(u.abs().max())
    if found[0] is Agreement.DISAGREE and nearby[0] is not Agreement.AGREE:
        return found  # a disagreement stands unless the backward is right at x'
    if found[0] is Agreement.STEEP:
        return found  # no step safe at x, nor a disagreement at x': no verdict
    return Agreement.KINK, found[1]  # x's own: a kink, ties, no derivative there


def _judged(along, want: float, atol: float, rtol: float = RTOL,
            retry: bool = True) -> tuple[Agreement, float]:
    """:func:`_entry`'s verdict from ``along`` (h -> vᵀ(f(x + h u) − f(x)), its noise), at
    the first of the steps :data:`SMALLER` that gives one; a disagreement or a kink is tried
    again at the smaller ones (``retry``): one that agrees there agrees (a staircase finer
    than the step, floor(x·1e6), is locally constant: at h/256 no stair lies in the step; a
    kink farther than the step is no kink at x); else a kink found at any step is a kink,
    and a disagreement stands only where no step agrees or finds one."""
    first = None
    for factor in SMALLER:
        found = _at_step(along, STEP * factor, want, atol, rtol, factor == SMALLER[-1])
        if found is None:
            continue
        if found[0] is Agreement.AGREE or (first is None and found[0] is Agreement.NOISY):
            return found  # (NOISY after a verdict: the noise grows as the step falls)
        if first is None or found[0] is Agreement.KINK or (
                found[0] is Agreement.STEEP and first[0] is Agreement.KINK):
            first = found  # (no side safe at a smaller step: the kink was not one)
        if not retry:
            break
    return first or (Agreement.STEEP, 0.0)  # no step safe: no kink shown (:func:`_steep`)


def _at_step(along, h: float, want: float, atol: float, rtol: float,
             last: bool) -> tuple[Agreement, float] | None:
    """:func:`_judged`'s verdict at step ``h``, or None where a smaller step must tell (f
    curved at this step, or no side safe)."""
    (up, n_up), (down, n_down) = along(h), along(-h)
    if _close(up / h, -down / h, (n_up + n_down) / h, atol, rtol):  # smooth across: central
        numeric, noise = (up - down) / (2 * h), (n_up + n_down) / (2 * h)
        verdict = _agreement(want, numeric, noise, atol, rtol)
        if verdict is Agreement.DISAGREE and not _settles(along, h, numeric, noise, atol,
                                                          rtol):
            return Agreement.KINK, 0.0  # a jump (sign at 0): no derivative there
        return verdict, noise if verdict is Agreement.NOISY else abs(want - numeric)
    if not last and _curved(along, h, up, down):
        return None  # smooth but curved (sin(1000 x)): a smaller step brings the sides together
    safe = []  # (the side's quotient extrapolated to step 0, 2·D(h/2) − D(h): O(h²), noise)
    for sign, (d, n) in ((1.0, (up, n_up)), (-1.0, (down, n_down))):
        half, n_half = along(sign * h / 2)
        if _close(sign * d / h, sign * half / (h / 2), n / h + n_half / (h / 2), atol, rtol):
            safe.append((2 * sign * half / (h / 2) - sign * d / h, n / h + 4 * n_half / h,
                         abs(d / h - half / (h / 2))))
    if len(safe) == 2 and last and _curved(along, h, up, down):
        safe = []  # the sides' gap halves with the step: f'' ≫ f' (sin(1e6·x)), no kink
    if len(safe) == 2:  # smooth on either side, not across: a kink at the entry itself,
        sides = _SIDES.get()  # whoever computes f (:func:`_entry` checks a point nearby)
        if sides is not None:
            sides.append((safe[0][0], safe[1][0]))
        return Agreement.KINK, min(abs(want - d) for d, _, _ in safe)
    if safe:  # a disagreement within the extrapolation's own correction: f not resolved
        (numeric, noise, correction), = safe[:1]
        verdict = _agreement(want, numeric, noise, atol, rtol)
        if verdict is Agreement.DISAGREE and _close(want, numeric, noise + correction, atol,
                                                    rtol):
            return Agreement.STEEP, 0.0
        return verdict, noise if verdict is Agreement.NOISY else abs(want - numeric)
    return _truncated(along, h, (up, n_up), (down, n_down), want, (atol, rtol)) if last \
        else None


def _truncated(along, h: float, up: tuple, down: tuple, want: float,
               tolerance: tuple) -> tuple[Agreement, float] | None:
    """At the smallest step h, where no side is safe but f is smooth and curved there (its
    one-sided slopes' gap halves with the step, :func:`_curved`: f'' ≫ f', as sin(1e5·x)
    near a zero of its derivative): the central difference at h/2, whose truncation error
    is about a third of its change from h (Richardson): AGREE within the tolerance and
    rounding noise, STEEP (no verdict) within that error too, else DISAGREE; None where f
    is not curved so (a kink, noise, or steeper still)."""
    (up, n_up), (down, n_down) = up, down
    if not _curved(along, h, up, down):
        return None
    (half_up, n_half_up), (half_down, n_half_down) = along(h / 2), along(-h / 2)
    numeric, noise = (half_up - half_down) / h, (n_half_up + n_half_down) / h
    error = abs(numeric - (up - down) / (2 * h)) / 3 + noise + (n_up + n_down) / (2 * h)
    atol, rtol = tolerance
    if _close(want, numeric, noise, atol, rtol):
        return Agreement.AGREE, abs(want - numeric)
    if _close(want, numeric, 2 * error, atol, rtol):
        return Agreement.STEEP, 0.0
    return Agreement.DISAGREE, abs(want - numeric)


_SIDES: ContextVar[list | None] = ContextVar("gradcheck_sides", default=None)
# whether a custom backward of the user's lies on the way (:func:`custom_on_the_way`)
_USERS_BACKWARD: ContextVar[bool] = ContextVar("gradcheck_users_backward", default=False)


@contextmanager
def _users_backward(present: bool):
    token = _USERS_BACKWARD.set(present)
    try:
        yield
    finally:
        _USERS_BACKWARD.reset(token)
_FURTHER: ContextVar[bool] = ContextVar("gradcheck_further", default=True)


@contextmanager
def _further(allowed: bool):
    """Whether, inside, :func:`_entry` checks a disagreement or kink further (stairs, a
    point nearby): not where a smaller, relative step will judge the entry again."""
    token = _FURTHER.set(allowed)
    try:
        yield
    finally:
        _FURTHER.reset(token)


@contextmanager
def _kink_sides():
    """A list that :func:`_at_step` fills, inside, with each kink's one-sided derivatives
    (right, left) along the step's direction."""
    sides: list = []
    token = _SIDES.set(sides)
    try:
        yield sides
    finally:
        _SIDES.reset(token)


SCALAR_V = -1.5  # a scalar output's incoming gradient at x' (exact; not 1: see _nearby)


def _nearby(replay, values: dict, name: str, u: torch.Tensor, v: torch.Tensor,
            tolerance: tuple) -> tuple[Agreement | None, float]:
    """The verdict along ``u`` at a point x' :data:`NEARBY` from x along random weights
    (times 1 + |x_i| per entry: ties broken, kinks left, small entries not carried across a
    branch by a large one's size): autograd's vᵀJu there against the finite differences,
    judged as at x (:func:`_judged`; a scalar output's gradient taken with v =
    :data:`SCALAR_V` and divided by it, as at x: with v = 1 a backward ignoring
    ``grad_output`` is right). Where x is a kink or a tie (no
    derivative to check), a backward wrong also where f has one (2 for max's slopes, a term
    detached, every entry 1 % off) disagrees at x'; a right one (a piece's slope at x,
    one-sided or between) does not. (None, 0) where it cannot tell; the error is at x'."""
    start = values[name]
    w = _weights(start.numel(), probe_generator(0, "gradcheck-nearby"))
    near = start + NEARBY * (1.0 + start.abs()) * w.reshape(start.shape).to(start.device)
    moved = {**values, name: near}
    try:
        leaf = near.detach().requires_grad_(True)
        with torch.enable_grad():
            out = replay.run({**values, name: leaf})
        w = v * SCALAR_V if v.numel() == 1 else v  # (a scalar's check divides by its v)
        (grad,) = materialized_grad(out, [leaf], w.to(out.dtype))
        grad = grad / SCALAR_V if v.numel() == 1 else grad
        base, noise = out.detach(), _Noise(v, out.detach(), grad, near)

        def along(h: float) -> tuple[float, float]:
            out = moved_output(replay, moved, name, h * u)
            return float(v.mul(out - base).sum()), noise(out, None, near + h * u, h * u)

        want = float(grad.mul(u).sum())
        found = _judged(along, want, *tolerance)
        if found[0] is Agreement.DISAGREE and unresolved(along, STEP, want, tolerance):
            return Agreement.UNRESOLVED, 0.0  # rounding stairs there too: cannot tell
        return found
    except Exception:  # noqa: BLE001 - cannot tell
        return None, 0.0


def _curved(along, h: float, up: float, down: float) -> bool:
    """Whether the one-sided slopes at step h differ as a smooth f's do, by f''·h: their gap
    halves with the step (sin(1000 x): a gap of 1 at h = 1e-6), where a kink's stays."""
    gap = (up + down) / h
    if not gap or not math.isfinite(gap):
        return False
    (half_up, _), (half_down, _) = along(h / 2), along(-h / 2)
    return 0.35 <= (half_up + half_down) / (h / 2) / gap <= 0.65


def _support(replay, values: dict, name: str, u: torch.Tensor,
             base: torch.Tensor) -> torch.Tensor:
    """The output entries that move when x moves along ``u`` by a large step, either way
    (two steps: an entry that returns to its value at one, as x² at ±a, moves at the other):
    the ones that depend on x there, whose rounding a difference may hold. Where none moves,
    every entry: even the large step is below their ulp (x² + 1e16), which cannot tell."""
    start = values[name]
    step = SUPPORT_STEP * (1.0 + float(start.abs().max()))
    moved = torch.zeros_like(base, dtype=torch.bool)
    for h in (step, -0.7 * step):
        moved |= moved_output(replay, values, name, h * u) != base  # NaN: moved
    return moved if moved.any() else torch.ones_like(moved)


class _Noise:
    """The rounding noise a difference vᵀ(f(x + h u) − f(x)) may hold: :data:`NOISE_ULPS`
    ulps of each output entry (at x and moved; only those in ``mask`` where given), plus
    |vᵀJ|ᵀ|off| where x is large enough for x + h u to round the step (``off``: the step as
    rounded into x minus as meant; x + h is x where h is below x's ulp)."""

    def __init__(self, v: torch.Tensor, base: torch.Tensor, analytic: torch.Tensor,
                 start: torch.Tensor):
        self.weights = v.abs()
        self.fixed = self.weights * base.abs()  # |v|·|f(x)|, the same in every difference
        self.analytic = analytic.abs()
        smallest = STEP * min(SMALLER)  # a step rounded by under 1e-4 of itself: not counted
        self.inexact = EPS * float(start.abs().max()) > 1e-4 * smallest if start.numel() \
            else False
        self.start = start

    def __call__(self, out: torch.Tensor, mask, moved: torch.Tensor, step) -> float:
        terms = torch.addcmul(self.fixed, self.weights, out.abs())
        noise = NOISE_ULPS * EPS * float((terms if mask is None else terms[mask]).sum())
        if self.inexact:
            noise += float(self.analytic.mul(((moved - self.start) - step).abs_()).sum())
        return noise


def _settles(along, h: float, numeric: float, noise: float = 0.0,
             atol: float = ATOL, rtol: float = RTOL) -> bool:
    """Whether the central difference at step h/2 agrees with ``numeric`` (at step h, of
    rounding ``noise``): it does where f is differentiable; across a jump it doubles."""
    (up, n_up), (down, n_down) = along(h / 2), along(-h / 2)
    return _close(numeric, (up - down) / h, noise + (n_up + n_down) / h, atol, rtol)


def _weights(count: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` random weights for a direction, float64 on the CPU: random signs times
    magnitudes in [1, 2). Not signs alone: an error of one size in every entry (a backward
    missing a term shared by all, x_i·Σv) sums to 0 along balanced signs, which half the
    groups of an even size have about 1 time in 10; with magnitudes it never does."""
    signs = torch.randint(0, 2, (count,), generator=generator).to(torch.float64).mul_(2).sub_(1)
    return signs.mul_(1 + torch.rand(count, generator=generator, dtype=torch.float64))


def _direction(tensor: torch.Tensor, k: int | None, seed: int) -> torch.Tensor:
    """The unit vector e_k, or (k None) a random unit direction (:func:`_weights`)."""
    if k is None:
        generator = probe_generator(seed, "gradcheck-direction")
        u = _weights(tensor.numel(), generator)
        return u.div_(u.norm()).reshape(tensor.shape).to(tensor.device)
    e = torch.zeros(tensor.numel(), dtype=torch.float64, device=tensor.device)
    e[k] = 1.0
    return e.reshape(tensor.shape)


__all__ = ["GradcheckReport", "custom_on_the_way", "gradcheck", "kinked_ops", "probe_v"]
