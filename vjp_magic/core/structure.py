"""Structure inference: which output axes are "points" for which input axes.

The graph analysis (:mod:`.axisflow`) proves what it can; shapes propose larger pairings
(:class:`.pairing.Pairing`), and random probes vᵀJ on the autograd graph decide those.
"""
from __future__ import annotations

import hashlib
import itertools
import math
import secrets
from collections.abc import Sequence
from typing import NamedTuple

import torch

from .pairing import Pairing
from .tolerances import tolerances

PER_SIZE = 3  # candidate pairings tried per number of point axes (probe path)



def row_major_strides(shape) -> list[int]:
    """How far one step along each axis moves in the flattened (row-major) tensor."""
    return [math.prod(shape[a + 1:]) for a in range(len(shape))]

def _size_one_pairs(out_shape: Sequence[int], in_shape: Sequence[int]) -> Pairing:
    """Size-1 output axes paired in order with size-1 input axes (always valid)."""
    out_ones = [a for a, n in enumerate(out_shape) if n == 1]
    in_ones = [b for b, n in enumerate(in_shape) if n == 1]
    return Pairing(zip(out_ones, in_ones))


def candidate_pairings(
    out_shape: Sequence[int], in_shape: Sequence[int], per_size: int | None = PER_SIZE
) -> list[Pairing]:
    """Pairings to try, most point axes first; the size-1 pairing (full Jacobian) comes last.

    Among pairings of equal size, order-preserving ones and ones that keep axes aligned
    (batch axes usually lead) come first. At most ``per_size`` of each size are kept (None:
    all), so a batch axis is still tried when many axes share a size (``x @ x`` on
    (B, n, n)).
    """
    ones = _size_one_pairs(out_shape, in_shape)
    out_axes = [a for a, n in enumerate(out_shape) if n > 1]
    in_axes = [b for b, n in enumerate(in_shape) if n > 1]
    proposals: list[Pairing] = []
    for size in range(min(len(out_axes), len(in_axes)), 0, -1):
        same_size: list[Pairing] = []
        for outs in itertools.combinations(out_axes, size):
            for ins in itertools.permutations(in_axes, size):
                if all(out_shape[a] == in_shape[b] for a, b in zip(outs, ins)):
                    same_size.append(Pairing(zip(outs, ins)))
        same_size.sort(key=_preference)
        proposals.extend(same_size if per_size is None else same_size[:per_size])
    proposals = [(p + ones).sorted() for p in proposals]
    proposals.append(ones)
    # The size-1 pairing alone is always valid, so nothing after it is needed.
    return list(dict.fromkeys(proposals))


def consistent_pairing(out_shape: Sequence[int], in_shape: Sequence[int], rows) -> Pairing:
    """The pairing that a few rows of the Jacobian suggest, whatever the axes' order.

    ``rows`` holds ``(output index, support)``: the multi-index of an output entry, and the
    multi-indices (k × input ndim) of the input entries its row of J is nonzero at. A pair
    (a, b) is kept when, in every row, every nonzero entry sits at index ``output index[a]``
    along ``b``; an axis claimed twice is ambiguous and dropped. Only a proposal: the probe
    still decides.
    """
    broken = broken_pairs(out_shape, in_shape, rows)
    pairs = Pairing((a, b) for a, m in enumerate(out_shape) for b, n in enumerate(in_shape)
                    if m == n > 1 and (a, b) not in broken)
    outs, ins = pairs.out_axes, pairs.in_axes
    unique = Pairing(p for p in pairs if outs.count(p.out) == 1 and ins.count(p.in_) == 1)
    return (unique + _size_one_pairs(out_shape, in_shape)).sorted()


def broken_pairs(out_shape: Sequence[int], in_shape: Sequence[int], rows) -> set[tuple[int, int]]:
    """The pairs (a, b) of equal size that some row of the Jacobian breaks: a non-zero entry
    at an index along ``b`` other than the row's index along ``a`` (``rows`` as for
    :func:`consistent_pairing`). A pairing holding such a pair is not the structure."""
    return {(a, b) for a, m in enumerate(out_shape) for b, n in enumerate(in_shape)
            if m == n > 1 and not all(bool((support[:, b] == index[a]).all())
                                      for index, support in rows)}


def row_indices(out_shape: Sequence[int], seed: int, count: int = 4) -> list[tuple[int, ...]]:
    """Which output entries' rows to read for :func:`consistent_pairing`: random multi-indices
    drawn from the run's ``seed``, so that axes of equal size get different indices (which
    tells them apart)."""
    if math.prod(out_shape) <= 1:
        return []
    generator = probe_generator(seed, "rows")
    picks = torch.stack([torch.randint(0, n, (count,), generator=generator) for n in out_shape], 1)
    return list(dict.fromkeys(tuple(int(i) for i in row) for row in picks))


def _preference(pairing: Pairing) -> tuple[int, int]:
    ins = pairing.in_axes
    monotone = all(x < y for x, y in zip(ins, ins[1:]))
    offset = sum(abs(a - b) for a, b in pairing)
    return (0 if monotone else 1, offset)


def component_shape(out_shape: Sequence[int], pairing: Pairing) -> tuple[int, ...]:
    """Shape of the non-point output axes: one gradient argument per entry."""
    return Pairing(pairing).component_shape(out_shape)


# -- the probes ---------------------------------------------------------------------------------
# Probe entries are ±2^k, k uniform in -K … K (K per dtype below), signs uniform: 2(2K+1)
# equally likely values. Where a coupling J[j, i] (j at another point than i) exists, the
# mismatch vᵀJ − vᵀD at input entry i is a linear form in v with coefficient J[j, i] on v_j;
# with every other entry fixed, the rule's tolerance there does not depend on v_j, so v_j
# must fall in one interval for the probe to miss. When |J[j, i]| ≥ 2^(2K+1) · tol · M_i (M_i:
# the magnitudes of i's own derivatives, tol: the probe rule's tolerance; ``threshold``), that
# interval is shorter than the smallest gap between two values and holds at most one of them:
# one probe misses with probability ≤ 1/(2(2K+1)), n independent ones with ≤ (2(2K+1))^(−n).
# n is the smallest count for which that is ≤ MISS_BOUND. A wider K would make each probe
# likelier to catch an exact cancellation but raise the threshold: v's own dynamic range,
# 2^(2K), times tol is how small a coupling can hide next to a large own term.
MISS_BOUND = 1e-9
PROBE_EXPONENTS = {torch.float64: 16, torch.float32: 5, torch.float16: 2, torch.bfloat16: 1}


class ProbePlan(NamedTuple):
    """How one verification probes, for one dtype (see the table above)."""

    exponents: int  # K: probe entries are ±2^k, |k| ≤ K
    values: int  # 2(2K+1) equally likely values
    probes: int  # n: probe 0 and the confirming ones
    threshold: float  # couplings this large, relative to M_i, are missed with ≤ miss
    miss: float  # (2(2K+1))^(−n) ≤ MISS_BOUND

    @property
    def confirming(self) -> int:
        """Probes after probe 0: plain backward passes on the large path
        (CONFIRMING_PROBES), products with a checked Jacobian on the small one
        (EXACT_PROBES)."""
        return self.probes - 1


def probe_plan(dtype: torch.dtype) -> ProbePlan:
    """The :class:`ProbePlan` for ``dtype`` (float32's exponent span for any other dtype)."""
    span = PROBE_EXPONENTS.get(dtype, PROBE_EXPONENTS[torch.float32])
    values = 2 * (2 * span + 1)
    count = 1
    while values ** count < 1 / MISS_BOUND:
        count += 1
    return ProbePlan(span, values, count, 2.0 ** (2 * span + 1) * tolerances(dtype).probe,
                     float(values) ** -count)


CONFIRMING_PROBES = {dtype: probe_plan(dtype).confirming for dtype in PROBE_EXPONENTS}
EXACT_PROBES = CONFIRMING_PROBES  # the same bound on both paths: the same count


def new_seed() -> int:
    """A fresh seed for one run, from the operating system (torch's global RNG is left alone)."""
    return secrets.randbits(63)


def probe_generator(seed: int, purpose: str, draw: int = 0) -> torch.Generator:
    """A CPU generator for one independent stream of a run: ``purpose`` and ``draw`` select
    it, ``seed`` (the run's, kept on its result) makes the run reproducible."""
    digest = hashlib.blake2b(f"{seed}/{purpose}/{draw}".encode(), digest_size=8).digest()
    return torch.Generator(device="cpu").manual_seed(int.from_bytes(digest, "little") >> 1)


def probe_vector(output: torch.Tensor, seed: int, draw: int = 0) -> torch.Tensor:
    """A random zero-mean probe shaped like the output (``draw``: 0, 1, … independent ones),
    drawn from the run's ``seed``: the same seed gives the same probes.

    Entries are random signed powers of two (:func:`probe_plan`). Scaling by a power of two
    commutes with rounding, so along a point's own paths the backward with v rounds exactly
    as v times the backward with a one-hot vector: whatever cancels inside one derivative
    cancels the same way in both, and only the sum over a point's components can round
    differently. That is what lets :func:`probe_mismatch` judge each entry by |v|ᵀ|D| alone.
    """
    plan = probe_plan(output.dtype)
    magnitudes = torch.exp2(torch.arange(-plan.exponents, plan.exponents + 1,
                                         dtype=torch.float64))  # exact: powers of two
    table = torch.stack([magnitudes, -magnitudes], 1).reshape(-1).to(output.dtype)
    generator = probe_generator(seed, "probe", draw)
    probe = torch.empty(output.numel(), dtype=output.dtype)
    for start in range(0, output.numel(), _DRAW_CHUNK):  # no index array as large as v
        part = probe[start:start + _DRAW_CHUNK]
        codes = torch.randint(0, plan.values, part.shape, dtype=torch.int32, generator=generator)
        torch.index_select(table, 0, codes, out=part)
    return probe.to(output.device).view(output.shape)


_DRAW_CHUNK = 2**15


def predicted_probe(derivatives: torch.Tensor, probe: torch.Tensor,
                    pairing: Pairing) -> torch.Tensor:
    """vᵀD for the block-diagonal Jacobian that ``derivatives`` stand for under ``pairing``.

    ``derivatives`` has shape ``component_shape + input_shape``; the result is shaped like
    the input: at each input entry, the probe's components at that entry's point times the
    derivatives there, summed over components.
    """
    pairing = Pairing(pairing)
    point_out = pairing.out_axes
    k = probe.dim() - len(point_out)
    in_shape = derivatives.shape[k:]
    by_input_axis = sorted(pairing, key=lambda pair: pair.in_)
    order = [a for a in range(probe.dim()) if a not in point_out] + [p.out for p in by_input_axis]
    paired_inputs = set(pairing.in_axes)
    count = math.prod(probe.shape[a] for a in order[:k])
    v = probe.permute(order).reshape(
        (count,) + tuple(n if b in paired_inputs else 1 for b, n in enumerate(in_shape))
    )
    d = derivatives.reshape((count,) + tuple(in_shape))
    if not pairing or all(in_shape[b] == 1 for b in pairing.in_axes):  # one row times a matrix
        return (v.reshape(1, count) @ d.reshape(count, -1)).reshape(in_shape)
    if count > 64:
        return (v * d).sum(dim=0)
    expected = d[0] * v[0]
    for r in range(1, count):
        expected.addcmul_(d[r], v[r])
    return expected


def probe_mismatch(
    derivatives: torch.Tensor, probe: torch.Tensor, probe_vjp: torch.Tensor, pairing: Pairing,
    *, nonfinite_agree: bool = False,
) -> float:
    """How far vᵀJ (from autograd) is from vᵀD, in units of its tolerance (≤ 1: agrees).

    D is the block-diagonal Jacobian that ``derivatives`` stand for under ``pairing``. Each
    entry of vᵀJ is judged against the magnitudes that sum into it, (|v|ᵀ|D|)_j — never
    against the largest entry overall — so the verdict is the same at every size and every
    dynamic range. Any dependence across points adds terms that D lacks; they show unless
    they are below the working precision of the entries they add to.

    Non-finite entries never agree: where vᵀJ or vᵀD is NaN or ±inf (sqrt at 0; 0·∞), that
    entry cannot tell a coupling from no coupling, so the pairing is not verified (inf).
    ``nonfinite_agree`` is for comparing two computations of the same Jacobian (a batching
    rule, forward against reverse mode), where no structure is at stake: there entries
    non-finite on both sides count as agreeing.
    """
    if derivatives.numel() == 0:
        return 0.0
    dtype = derivatives.dtype
    compute = _compute_dtype(dtype)
    derivatives, probe, probe_vjp = (t.to(compute) for t in (derivatives, probe, probe_vjp))
    expected = predicted_probe(derivatives, probe, pairing)
    if not nonfinite_agree and first_nonfinite(probe_vjp, expected) is not None:
        return math.inf
    if torch.equal(probe_vjp, expected):  # the common case for a true structure: bit-exact
        return 0.0
    scale = predicted_probe(derivatives.abs(), probe.abs(), pairing)
    return _judged(probe_vjp, expected, scale, dtype, nonfinite_agree)


def first_nonfinite(*tensors: torch.Tensor) -> int | None:
    """The flat index of the first NaN or ±inf entry of the first of ``tensors`` that has
    one (None: all finite)."""
    for tensor in tensors:
        if tensor.numel() == 0 or math.isfinite(float(tensor.sum())):
            continue  # a finite sum: every entry is finite (NaN and ±inf carry through sums)
        finite = torch.isfinite(tensor)  # the sum overflowed, or some entry is not finite
        if not bool(finite.all()):
            return int((~finite).reshape(-1).nonzero()[0])
    return None


def _judged(probe_vjp, expected, scale, dtype, nonfinite_agree: bool = False) -> float:
    """:func:`probe_mismatch` once vᵀD (``expected``) and |v|ᵀ|D| (``scale``, overwritten)
    are known, all in the compute dtype."""
    allowed = scale.mul_(tolerances(dtype).probe).add_(torch.finfo(scale.dtype).tiny)
    ratio = torch.sub(probe_vjp, expected).abs_().div_(allowed)
    worst = float(ratio.max())
    if worst <= 1.0:  # NaN compares False: the non-finite entries are looked at below
        return worst
    if not nonfinite_agree:  # (callers have turned non-finite entries away already)
        return float(ratio.nan_to_num_(nan=math.inf).max())
    both_nonfinite = ~torch.isfinite(probe_vjp) & ~torch.isfinite(expected)
    ratio = ratio.masked_fill_(both_nonfinite | (probe_vjp == expected), 0.0)
    return float(ratio.nan_to_num_(nan=math.inf).max())


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _full_precision_products(compute: torch.dtype) -> bool:
    """Whether matrix products round in ``compute`` itself (not TF32 or bfloat16 inside)."""
    if compute != torch.float32:
        return True
    tf32 = torch.cuda.is_available() and torch.backends.cuda.matmul.allow_tf32
    return torch.get_float32_matmul_precision() == "highest" and not tf32


class FullProbes:
    """:func:`probe_mismatch` for the full pairing (``derivatives``: output shape + input
    shape), for several probes of one derivatives tensor at once: vᵀD of every probe as one
    product; |v|ᵀ|D| only where it is needed.

    Where |vᵀJ − vᵀD| ≤ tol · |vᵀD| · (1 − 2γ) the rule accepts for sure: |vᵀD| ≤ |v|ᵀ|D|,
    and γ = m·u/(1 − m·u) bounds the rounding of both computed sums of m terms (u: the unit
    roundoff; products underflowing are far below the ``tiny`` the rule adds). |v|ᵀ|D| is
    computed for the other columns alone (all columns when many are left), so the verdict
    is the rule's own."""

    def __init__(self, derivatives: torch.Tensor, probes) -> None:
        self.dtype = derivatives.dtype
        compute = _compute_dtype(self.dtype)
        self.empty = derivatives.numel() == 0
        self.ordinary = self.finite = False
        if self.empty:
            return
        m = probes[0].numel()
        self.d = derivatives.to(compute).reshape(m, -1)
        self.v = torch.stack([p.reshape(-1) for p in probes]).to(compute)
        self.expected = self.v @ self.d
        mu = m * torch.finfo(compute).eps / 2
        sure = tolerances(self.dtype).probe * (1 - 2 * mu / (1 - mu)) \
            if mu < 0.25 and _full_precision_products(compute) else 0.0
        finite = bool(torch.isfinite(self.expected).all())
        self.finite = finite
        self.sure = self.expected.abs().mul_(sure) if finite and sure > 0 else None
        # every vᵀD finite: D is (v has no zero); one non-zero: D has one
        self.ordinary = finite and bool(self.expected.any())

    def mismatch(self, probe_vjps) -> float:
        """At most 1 where every probe agrees, else the largest :func:`probe_mismatch` over
        the probes, given each one's vᵀJ."""
        if self.empty:
            return 0.0
        vjps = torch.stack([g.reshape(-1) for g in probe_vjps]).to(self.expected.dtype)
        if not self.finite or first_nonfinite(vjps) is not None:
            return math.inf
        if torch.equal(vjps, self.expected):
            return 0.0
        if self.sure is None:
            return _judged(vjps, self.expected, self._scale(), self.dtype)
        left = (torch.sub(vjps, self.expected).abs_() > self.sure).any(0).nonzero().flatten()
        if len(left) == 0:
            return 1.0
        if 4 * len(left) > self.d.shape[1]:
            return _judged(vjps, self.expected, self._scale(), self.dtype)
        return _judged(vjps[:, left], self.expected[:, left],
                       self._scale(self.d.index_select(1, left)), self.dtype)

    def _scale(self, d: torch.Tensor | None = None) -> torch.Tensor:
        """|v|ᵀ|D| for every probe (columns ``d`` of D, else all), a block of rows at a time."""
        d = self.d if d is None else d
        v = self.v.abs()
        step = max(1, 2**17 // max(d.shape[1], 1))
        scale = v[:, :step] @ d[:step].abs()
        for start in range(step, d.shape[0], step):
            scale.addmm_(v[:, start:start + step], d[start:start + step].abs())
        return scale


def probe_agrees(
    derivatives: torch.Tensor, probe: torch.Tensor, probe_vjp: torch.Tensor, pairing: Pairing,
    *, nonfinite_agree: bool = False,
) -> bool:
    """True when vᵀJ equals vᵀD within :func:`probe_mismatch`'s tolerance."""
    return probe_mismatch(derivatives, probe, probe_vjp, pairing,
                          nonfinite_agree=nonfinite_agree) <= 1.0


def gather_derivatives(jacobian: torch.Tensor, out_ndim: int, pairing: Pairing) -> torch.Tensor:
    """The derivatives (component shape + input shape) read off the pairing's support."""
    if not pairing:
        return jacobian
    pairing = Pairing(pairing)
    out_shape, in_shape = jacobian.shape[:out_ndim], jacobian.shape[out_ndim:]
    comp_axes = [a for a in range(out_ndim) if a not in pairing.out_axes]
    result_ndim = len(comp_axes) + len(in_shape)

    def axis_range(size: int, position: int) -> torch.Tensor:
        shape = [1] * result_ndim
        shape[position] = size
        return torch.arange(size, device=jacobian.device).reshape(shape)

    paired = pairing.out_to_in()
    index = []
    for a in range(out_ndim):
        if a in paired:
            index.append(axis_range(out_shape[a], len(comp_axes) + paired[a]))
        else:
            index.append(axis_range(out_shape[a], comp_axes.index(a)))
    index.extend(axis_range(n, len(comp_axes) + b) for b, n in enumerate(in_shape))
    if not index:
        return jacobian
    shape = tuple(out_shape[a] for a in comp_axes) + tuple(in_shape)
    return jacobian[tuple(index)].expand(shape).clone() if shape else jacobian[tuple(index)]
