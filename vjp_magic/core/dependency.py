"""Dependency patterns: which entries along an output axis read which entries along an input
axis, and a verdict on the pattern's shape.

``pattern[i, j]`` is True when some entry of the output with index ``i`` along ``out_axis``
has a non-zero derivative with respect to some entry of the input with index ``j`` along
``in_axis`` (exact zeros only: the structure at the evaluated point). Two ways to get it:

- :func:`from_result`: exact, from a result's structured derivatives (no graph needed);
- :func:`probe_pattern` (and :func:`dependency`): from a live graph, without the Jacobian, by
  batched random probes vᵀJ supported on sets of output indices (the group test of
  :mod:`.grouptest`), drawn from a seed kept on the answer; where the graph proves the axes
  paired, only the diagonal is probed.

:func:`verdict` names the smallest band of diagonals that holds every dependence (a
:class:`Kind`); :func:`verdict_on_refusal` makes a memory refusal say where a structure broke.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from . import axisflow, memory, structure
from .errors import VJPUsageError
from .grouptest import OverTime, probed_pattern
from .pairing import Evidence
from .probes import new_seed
from .textenum import TextEnum
from .torch_api import TorchError, torch_error


class Kind(TextEnum):
    """The smallest band of diagonals holding every dependence (see :func:`verdict`)."""

    INDEPENDENT = "independent"
    LOWER_TRIANGULAR = "lower-triangular"
    UPPER_TRIANGULAR = "upper-triangular"
    BAND = "band"
    DENSE = "dense"


KINDS = tuple(Kind)


@dataclass(frozen=True)
class Dependency:
    """The pattern of dependences between two axes, and its verdict.

    ``kind``: a :class:`Kind` (equal to its word, ``"band"``); ``witness``: the first
    dependence (row-major) that the nearest simpler kind forbids, as (output index, input
    index), None for "independent";
    ``offsets``: lowest and highest j − i over the dependences, for a band or a triangle;
    ``pattern``: bool, (output axis size × input axis size); ``evidence``: an
    :class:`.pairing.Evidence`, "proved" or "observed" (read off a result, as its pairing is
    known) or "probed" (random probes);
    ``seed``: the seed the probes were drawn from (``dependency(..., seed=d.seed)`` again).
    """

    kind: Kind
    witness: tuple[int, int] | None
    offsets: tuple[int, int] | None
    pattern: torch.Tensor = field(repr=False, compare=False)
    out_axis: int = 0
    in_axis: int = 0
    evidence: Evidence = Evidence.PROBED
    seed: int | None = field(default=None, compare=False)

    def describe(self, output_name: str = "y", input_name: str = "x") -> str:
        """The witness as indexing: ``y[1] ← x[0]`` (``y[:, 2] ← x[:, 3]`` on axis 1)."""
        if self.witness is None:
            return (f"{_index(output_name, self.out_axis, 'i')} ← "
                    f"{_index(input_name, self.in_axis, 'i')} only")
        i, j = self.witness
        return f"{_index(output_name, self.out_axis, i)} ← {_index(input_name, self.in_axis, j)}"

    def summary(self) -> str:
        """``band, offsets −1..0`` (the kind, and the offsets where it has them)."""
        if self.offsets is None:
            return self.kind
        lo, hi = (str(o).replace("-", "−") for o in self.offsets)
        return f"{self.kind}, offsets {lo}..{hi}"

    def leaking(self) -> list[int]:
        """The output indices that read an input index other than their own (``pattern[i, j]``
        with j ≠ i): where the structure "index i reads index i only" breaks, in order."""
        pattern = self.pattern.to(torch.bool)
        m, n = pattern.shape
        own = torch.eye(m, n, dtype=torch.bool, device=pattern.device)
        return (pattern & ~own).any(1).nonzero().flatten().tolist()

    def reads(self, i: int) -> list[int]:
        """The input indices other than ``i`` that output index ``i`` reads."""
        row = self.pattern[i].to(torch.bool).clone()
        if i < row.numel():
            row[i] = False
        return row.nonzero().flatten().tolist()

    def fills_band(self) -> bool:
        """Whether every dependence the verdict's band allows is there, so that the kind
        describes every output index (a leak from one row is a band −1..0 it does not fill)."""
        pattern = self.pattern.to(torch.bool)
        m, n = pattern.shape
        offset = torch.arange(n)[None, :] - torch.arange(m)[:, None]
        if self.kind == Kind.INDEPENDENT:
            band = offset == 0
        elif self.offsets is None:  # dense
            band = torch.ones(m, n, dtype=torch.bool)
        else:
            band = (offset >= self.offsets[0]) & (offset <= self.offsets[1])
        return bool(torch.equal(pattern.cpu(), band))


def _index(name: str, axis: int, index) -> str:
    return f"{name}[{':, ' * axis}{index}]"


# -- the verdict ----------------------------------------------------------------------------
def verdict(pattern: torch.Tensor) -> tuple[Kind, tuple[int, int] | None, tuple[int, int] | None]:
    """``(kind, witness, offsets)`` of an (m × n) boolean pattern.

    With lo..hi the offsets j − i of the dependences, the kind is the smallest band of
    diagonals holding them all, named by the corners it reaches (the lower one, (m−1, 0), is
    offset −(m−1); the upper one, (0, n−1), offset n−1):

    - "independent": only i == j (or nothing at all);
    - "dense": both corners;
    - "lower-triangular": the lower corner and hi ≤ 0 (causal: y[t] reads x[s], s ≤ t, back
      to the first); "upper-triangular" mirrors it;
    - "band" otherwise (a leak y[1] ← x[0] alone is the band −1..0, not "causal"; a mask that
      also lets t see t + 1 is the band −(m−1)..1).

    The witness is the first dependence (row-major) the nearest simpler kind forbids: for a
    triangle or a band reaching no corner, the first off the diagonal; for a band reaching the
    lower corner, or dense, the first above it (j > i); for a band reaching the upper corner,
    the first below it. Offsets are given for triangles and bands.
    """
    pattern = pattern.to(torch.bool)
    m, n = pattern.shape
    rows, cols = pattern.nonzero(as_tuple=True)  # row-major order
    offset = cols - rows
    if offset.numel() == 0 or bool((offset == 0).all()):
        return Kind.INDEPENDENT, None, None
    lo, hi = int(offset.min()), int(offset.max())
    low, high = lo == -(m - 1), hi == n - 1
    if low and high:
        kind, forbidden = Kind.DENSE, offset > 0
    elif low and hi <= 0:
        kind, forbidden = Kind.LOWER_TRIANGULAR, offset != 0
    elif high and lo >= 0:
        kind, forbidden = Kind.UPPER_TRIANGULAR, offset != 0
    else:
        kind = Kind.BAND
        forbidden = offset > 0 if low else offset < 0 if high else offset != 0
    if not bool(forbidden.any()):  # degenerate shapes (one column): off the diagonal
        forbidden = offset != 0
    first = int(forbidden.nonzero()[0])
    witness = (int(rows[first]), int(cols[first]))
    return kind, witness, (None if kind == Kind.DENSE else (lo, hi))


def _dependency(pattern, out_axis, in_axis, evidence, seed=None) -> Dependency:
    kind, witness, offsets = verdict(pattern)
    return Dependency(kind, witness, offsets, pattern, out_axis, in_axis, evidence, seed)


def _axis(axis, ndim: int, what: str) -> int:
    if not isinstance(axis, int) or isinstance(axis, bool) or not -ndim <= axis < ndim:
        raise VJPUsageError(f"No axis {axis!r} in the {what}: it has {ndim} "
                            f"axis{'' if ndim == 1 else 'es'} (0 to {ndim - 1}, or negative).")
    return axis % ndim


# -- exact, from a result -------------------------------------------------------------------
def from_result(result, name: str, out_axis: int, in_axis: int) -> Dependency:
    """The exact pattern, read off ``result.inputs[name]`` (pairing and derivatives)."""
    item = result.inputs[name]
    out_shape, in_shape = tuple(result.output.shape), tuple(item.tensor.shape)
    a = _axis(out_axis, len(out_shape), f"output ({len(out_shape)}-d)")
    b = _axis(in_axis, len(in_shape), f"input {name} ({len(in_shape)}-d)")
    m, n = out_shape[a], in_shape[b]
    budget = result.memory_budget or memory.resolve_budget(None, result.output.device)
    memory.refuse_if_over(m * n, budget, f"The dependency pattern ({m:,} × {n:,})",
                          advice="Take a smaller slice")
    nonzero = item.derivatives != 0  # component shape + input shape
    paired = item.pairing.out_to_in()
    components = [c for c in range(len(out_shape)) if c not in paired]
    k = len(components)
    if a not in paired:  # a component axis: its index is D's
        pattern = _plane(nonzero, components.index(a), k + b)
    elif paired[a] == b:  # the same points: dependences on the diagonal only
        pattern = _plane(nonzero, k + b, k + b)
    else:  # y's index along a is x's index along the axis paired with a
        pattern = _plane(nonzero, k + paired[a], k + b)
    return _dependency(pattern.cpu(), a, b, Evidence(item.evidence),
                       getattr(result, "seed", None))


def _plane(nonzero: torch.Tensor, first: int, second: int) -> torch.Tensor:
    """Any non-zero, reduced onto the (first, second) axes (the same axis twice: a diagonal)."""
    if first == second:
        keep = [d for d in range(nonzero.dim()) if d != first]
        line = nonzero.permute(first, *keep).reshape(nonzero.shape[first], -1).any(1)
        return torch.diag(line)
    keep = [d for d in range(nonzero.dim()) if d not in (first, second)]
    m, n = nonzero.shape[first], nonzero.shape[second]
    return nonzero.permute(first, second, *keep).reshape(m, n, -1).any(2)


# -- from a live graph, by probes -----------------------------------------------------------
def probe_pattern(output: torch.Tensor, x: torch.Tensor, out_axis: int, in_axis: int,
                  budget: int | float | None = None, max_seconds: float | None = None,
                  seed: int | None = None) -> Dependency:
    """The pattern from a live graph, without the Jacobian (``budget``: bytes, a fraction of
    free memory, or the default): the group test of :func:`.grouptest.probed_pattern`. Where
    the graph proves the two axes paired (axisflow), dependences off the diagonal are ruled out
    ("proved"). ``seed``: the probes' seed (a fresh one unless given)."""
    a = _axis(out_axis, output.dim(), f"output ({output.dim()}-d)")
    b = _axis(in_axis, x.dim(), f"input ({x.dim()}-d)")
    budget = memory.resolve_budget(budget, output.device)
    m, n = output.shape[a], x.shape[b]
    memory.refuse_if_over(2 * m * n, budget, f"The dependency pattern ({m:,} × {n:,})",
                          advice="Take a smaller slice")
    seed = new_seed() if seed is None else int(seed)
    proof = axisflow.prove(output, x)
    pattern = probed_pattern(output, x, a, b, budget, seed, max_seconds, proof.workspace)
    paired = m == n > 1 and tuple(proof.carries.get(a, ())) == (b,)
    if paired:  # y's index i along a reads x's index i along b only, for every x
        pattern &= torch.eye(m, dtype=torch.bool)
    return _dependency(pattern, a, b, Evidence.PROVED if paired else Evidence.PROBED, seed)


# -- a memory refusal that says where the structure broke ------------------------------------
REFUSAL_SECONDS = 5.0  # a refusal waits at most about this long for its verdict


@contextmanager
def verdict_on_refusal(context, named: dict, point_out=()):
    """Around the analysis's memory refusal: when a larger pairing was rejected (or, with
    none tried, the shapes propose one), re-raise it saying where the structure breaks, with
    the :class:`Dependency` as ``error.dependency``. ``context`` has ``output``,
    ``output_name``, ``rejected`` (name → pairings), ``budget`` and ``probes`` (its
    ``seed``); ``named``: the inputs
    refused; ``point_out``: the output axes already taken as points."""
    try:
        yield
    except VJPUsageError as error:
        found = _refusal_dependency(context, named, point_out)
        if found is None:
            raise
        name, dep = found
        y = context.output_name
        refusal = VJPUsageError(
            f"{error} {y} is not independent of {name} along axis {dep.out_axis}: "
            f"{dep.describe(y, name)} (pattern: {dep.summary()}).")
        refusal.dependency = dep
        raise refusal from None


def _refusal_dependency(context, named, point_out):
    """(name, the first non-independent pattern) over the suspect axis pairs, or None."""
    for name, x in named.items():
        rejected = list(context.rejected.get(name, ()))[:1]
        proposed = rejected or structure.candidate_pairings(context.output.shape, x.shape, 1)[:1]
        pairs = [(a, b) for a, b in (proposed[0] if proposed else ())
                 if a not in point_out and x.shape[b] > 1][:2]
        for a, b in pairs:
            try:
                dep = probe_pattern(context.output, x, a, b, context.budget, REFUSAL_SECONDS,
                                    seed=context.probes.seed)
            except (OverTime, VJPUsageError):  # too long to wait for, or too large
                return None
            if dep.kind != Kind.INDEPENDENT:
                return name, dep
    return None


def dependency(output: torch.Tensor, x: torch.Tensor, out_axis: int = 0, in_axis: int = 0,
               memory_budget: int | float | None = None, seed: int | None = None) -> Dependency:
    """Which indices of ``output`` along ``out_axis`` read which of ``x`` along ``in_axis``,
    with a verdict, from the live autograd graph without computing the Jacobian.

    Batched random probes vᵀJ supported on sets of output indices (a group test), checked
    with fresh probes; a NaN or ±inf in a probe is never read as a dependence. Where the
    graph proves the two axes paired, only the diagonal is probed. ``x.grad`` is never
    changed. ``r.dependency(name, out_axis, in_axis)`` reads the same off a result.

    Args:
        output (Tensor): computed from ``x`` with autograd on.
        x (Tensor): a tensor with ``requires_grad=True``.
        out_axis, in_axis (int): the axes compared. Default: 0 and 0.
        memory_budget (int or float, optional): what the pattern (m × n bools) may take: a
            fraction (< 1) of free memory, or bytes.
        seed (int, optional): the probes' seed. Default: a fresh one, kept as ``.seed``.

    Returns:
        Dependency: ``.pattern``, bool (m × n): ``[i, j]`` is True when an output entry
        with index i along ``out_axis`` has a non-zero derivative with respect to an entry
        of x with index j along ``in_axis``; ``.kind``, the smallest band of diagonals
        holding every dependence: ``"independent"``, ``"lower-triangular"`` (causal),
        ``"upper-triangular"``, ``"band"`` or ``"dense"``; ``.witness``, the first
        dependence ``(i, j)`` the nearest simpler kind forbids; ``.offsets``, the lowest and
        highest ``j - i`` (bands and triangles); ``.evidence``; ``.describe("y", "x")``.

    Example::

        >>> x = torch.randn(5, 3, requires_grad=True)
        >>> d = vjp_magic.dependency(torch.cumsum(x, 0), x)   # y[t] reads x[s], s <= t
        >>> d.kind, d.witness, d.offsets, d.describe("y", "x")
        ('lower-triangular', (1, 0), (-4, 0), 'y[1] ← x[0]')
    """
    if not isinstance(output, torch.Tensor) or not isinstance(x, torch.Tensor):
        raise VJPUsageError("dependency(output, x, out_axis, in_axis) takes two tensors.")
    if output.grad_fn is None or not x.requires_grad:
        raise VJPUsageError("The output must be computed from x with autograd on: make x "
                            "with requires_grad=True and compute the output outside no_grad.")
    try:
        return probe_pattern(output, x, out_axis, in_axis, memory_budget, seed=seed)
    except RuntimeError as error:
        if torch_error(error) is not TorchError.SECOND_PASS:
            raise
        raise VJPUsageError("The output's graph was freed by a backward pass without "
                            "retain_graph=True: compute the output again.") from None
