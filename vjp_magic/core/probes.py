"""Random probes vᵀJ: how they are drawn (the plan and counts per dtype, the run's seed), how
vᵀJ is judged against the vᵀD a structure predicts (the probe rule), and :class:`Probes`, which
runs them for one analysis.

Probes come from plain (unbatched) backward passes: comparing them with results of batched
ones also catches a batching rule that computes something else than the plain backward does.
Probe entries are discrete (signed powers of two), so one probe can cancel a coupling exactly
by chance; a structure is accepted only when further independent probes agree too: read off a
checked Jacobian where there is one (:meth:`Probes.use_jacobian`), else from more plain
backward passes (:func:`probe_plan` says how many, and the bound they give). Every random draw
of a run, these probes and the set probes of :mod:`.grouptest` alike, comes from the run's
seed (:func:`new_seed`, kept on the result as ``r.seed``) through :func:`stream_seed`
(:func:`probe_generator`; the probes' codes: :class:`ProbeDraws`, all drawn at once).
Where vᵀJ or vᵀD is not finite, no pairing is verified: the entry is kept in
:attr:`Probes.nonfinite` for the result's note.
"""
from __future__ import annotations

import functools
import hashlib
import math
import secrets
import threading
import time
from typing import NamedTuple

import numpy
import torch

from .derivatives import plain_vjp
from .pairing import Pairing
from .tolerances import tolerances


# -- how probes are drawn: the plan per dtype, the seed -------------------------------------
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


@functools.lru_cache(maxsize=None)
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
    return torch.Generator(device="cpu").manual_seed(stream_seed(seed, purpose, draw))


def stream_seed(seed: int, purpose: str, draw: int = 0) -> int:
    """The seed (63 bits) of one independent stream of a run (:func:`probe_generator`)."""
    digest = hashlib.blake2b(f"{seed}/{purpose}/{draw}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def probe_vector(output: torch.Tensor, seed: int, draw: int = 0) -> torch.Tensor:
    """A random zero-mean probe shaped like the output (``draw``: 0, 1, … independent ones),
    drawn from the run's ``seed``: the same seed gives the same probes.

    Entries are random signed powers of two (:func:`probe_plan`). Scaling by a power of two
    commutes with rounding, so along a point's own paths the backward with v rounds exactly
    as v times the backward with a one-hot vector: whatever cancels inside one derivative
    cancels the same way in both, and only the sum over a point's components can round
    differently. That is what lets :func:`probe_mismatch` judge each entry by |v|ᵀ|D| alone.
    Several probes of one run: :class:`ProbeDraws` (this draws them all for one).
    """
    return ProbeDraws(output, seed).vector(draw)


class ProbeDraws:
    """The codes of every probe of one run (:func:`probe_plan`'s count): per output entry one
    tuple of codes, exactly uniform over all ``values ** probes`` tuples (the probes' entries
    independent, each exactly uniform over the ``values`` values), so ``(values ** probes)⁻¹``
    bounds the chance that every probe misses (see the plan).

    Per entry two independent parts, A uniform in [0, values^a) and B in [0, values^b)
    (a + b = probes), each one bounded draw of numpy's PCG64 generator (Lemire's method:
    exactly uniform; two draws per entry, where one per probe and entry took seven), each
    part from the run's seed on a stream of its own (:func:`_stream_generator`). Probe k's
    entry is the k-th digit of A (or of B) in base ``values``, as a probe value: one gather
    from a table of that digit's value for every part (below a table's size, the digit
    computed in numpy). A part is drawn when its first probe is asked for and let go after
    its last (probes asked for in order: one part alive at a time; B never drawn where an
    early probe already disagreed)."""

    def __init__(self, output: torch.Tensor, seed: int) -> None:
        self.shape, self.dtype, self.device = output.shape, output.dtype, output.device
        self.seed, self.plan = seed, probe_plan(output.dtype)
        self.first = self.plan.probes // 2  # probes 0 … first-1 read A, the others B
        self.digits = (self.first, self.plan.probes - self.first)
        self._parts: list[numpy.ndarray | None] = [None, None]

    def part(self, part: int) -> numpy.ndarray:
        """Part A (0) or B (1): one int32 per output entry, drawn when first needed."""
        if self._parts[part] is None:
            self._parts[part] = _stream_generator(self.seed, "probes", part).integers(
                0, self.plan.values ** self.digits[part], math.prod(self.shape),
                dtype=numpy.int32)
        return self._parts[part]

    def vector(self, draw: int) -> torch.Tensor:
        """Probe ``draw`` (0 … probes-1), a tensor of its own shaped like the output."""
        if not 0 <= draw < self.plan.probes:
            raise ValueError(f"probe {draw} of a plan of {self.plan.probes}")
        part, digit = (0, draw) if draw < self.first else (1, draw - self.first)
        values, codes = self.plan.values, self.part(part)
        inner = values ** (self.digits[part] - 1 - digit)  # the digit's place value
        if codes.size < values ** self.digits[part]:  # fewer entries than a table has
            probe = _digit_probe(codes, inner, values, self.dtype, self.shape)
        else:  # one gather from the table of this digit's value for every part
            probe = torch.empty(self.shape, dtype=self.dtype)
            table = probe_values(self.dtype)[None, :, None].expand(
                values ** digit, values, inner).reshape(-1)
            torch.index_select(table, 0, torch.from_numpy(codes), out=probe.view(-1))
        if digit == self.digits[part] - 1:  # the part's last probe: drawn again if needed
            self._parts[part] = None
        return probe if self.device.type == "cpu" else probe.to(self.device)


def _digit_probe(codes: numpy.ndarray, inner: int, values: int, dtype: torch.dtype,
                 shape) -> torch.Tensor:
    """The probe values of one digit (place value ``inner``) of ``codes``, a tensor of its
    own shaped ``shape``, computed digit by digit (in numpy: cheaper than torch's
    operations at these sizes)."""
    digits = (codes // inner) % values
    table = _numpy_table(dtype)
    if table is None:  # a dtype numpy lacks (bfloat16)
        probe = torch.empty(shape, dtype=dtype)
        torch.index_select(probe_values(dtype), 0, torch.from_numpy(digits), out=probe.view(-1))
        return probe
    return torch.from_numpy(table[digits].reshape(tuple(shape)))


def fresh_stream(purpose: str) -> numpy.random.Generator:
    """numpy's PCG64 on a stream of its own from a fresh seed of the operating system (not
    reproducible from the run's seed: for draws an adversary must not predict, such as the
    per-layer rules' check weights). Use it at once: the thread's one generator is set to
    another stream by the next draw."""
    return _stream_generator(secrets.randbits(63), purpose)


_GENERATORS = threading.local()  # one numpy generator per thread, set to each stream in turn


def _stream_generator(seed: int, purpose: str, draw: int = 0) -> numpy.random.Generator:
    """numpy's PCG64 on one independent stream of a run (named by seed, purpose and draw,
    as in :func:`stream_seed`): its 128-bit state and odd increment come straight from the
    name's 256-bit hash, as SeedSequence would hash a seed into them, but no generator is
    built per stream (7 µs warm, up to 50 µs cold: more than drawing a 256-entry probe):
    one per thread is set to each stream in turn."""
    digest = hashlib.blake2b(f"{seed}/{purpose}/{draw}".encode(), digest_size=32).digest()
    generator = getattr(_GENERATORS, "pcg64", None)
    if generator is None:
        generator = _GENERATORS.pcg64 = numpy.random.Generator(numpy.random.PCG64(0))
    generator.bit_generator.state = {
        "bit_generator": "PCG64", "has_uint32": 0, "uinteger": 0,
        "state": {"state": int.from_bytes(digest[:16], "little"),
                  "inc": int.from_bytes(digest[16:], "little") | 1}}
    return generator


@functools.lru_cache(maxsize=None)
def probe_values(dtype: torch.dtype) -> torch.Tensor:
    """The values a probe entry takes, ±2^k (:func:`probe_plan`), on the CPU (never written)."""
    return signed_powers(probe_plan(dtype).exponents, dtype)


@functools.lru_cache(maxsize=16)
def signed_powers(span: int, dtype: torch.dtype, device=None) -> torch.Tensor:
    """The 2(2·span + 1) values ±2^k, |k| ≤ span, by code d: (−1)^d · 2^(⌊d/2⌋ − span)
    (never written)."""
    magnitudes = torch.exp2(torch.arange(-span, span + 1, dtype=torch.float64))  # exact
    return torch.stack([magnitudes, -magnitudes], 1).reshape(-1).to(dtype=dtype, device=device)


@functools.lru_cache(maxsize=None)
def _numpy_table(dtype: torch.dtype) -> numpy.ndarray | None:
    """:func:`probe_values` as a numpy array (never written; None where numpy lacks the dtype)."""
    try:
        return probe_values(dtype).numpy()
    except TypeError:
        return None


def set_probe_values(like: torch.Tensor, seed: int, purpose: str, stream: int = 0) -> torch.Tensor:
    """Random values ±(1 to 2) shaped like ``like`` (none near 0, so a probe restricted to a set
    of entries reaches every index its set reaches), drawn from the run's ``seed``. A draw of
    exactly 0 (torch.rand gives it with a chance of 2⁻²⁴ an entry: about once in 170 calls at
    10⁵ entries) is +1, never 0: a weight of 0 would hide its entry's dependence."""
    r = torch.rand(tuple(like.shape), generator=probe_generator(seed, purpose, stream),
                   dtype=torch.float32) * 2 - 1  # the same draws whatever the default dtype
    return torch.where(r < 0, r - 1, r + 1).to(dtype=like.dtype, device=like.device)


# -- the probe rule: vᵀJ judged against vᵀD ------------------------------------------------
def predicted_probe(derivatives: torch.Tensor, probe: torch.Tensor,
                    pairing: Pairing) -> torch.Tensor:
    """vᵀD for the block-diagonal Jacobian that ``derivatives`` stand for under ``pairing``.

    ``derivatives`` has shape ``component_shape + input_shape``; the result is shaped like
    the input: at each input entry, the probe's components at that entry's point times the
    derivatives there, summed over components. An output of another dtype than the input
    (a float32 x copied into a float64 buffer): both in the wider one.
    """
    if probe.dtype != derivatives.dtype:
        wider = torch.promote_types(probe.dtype, derivatives.dtype)
        probe, derivatives = probe.to(wider), derivatives.to(wider)
    if not pairing:  # the full Jacobian: one row times a matrix
        count = probe.numel()
        return (probe.reshape(1, count) @ derivatives.reshape(count, -1)).reshape(
            derivatives.shape[probe.dim():])
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
    *, nonfinite_agree: bool = False, finite_products: bool = False,
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
    non-finite on both sides count as agreeing. ``finite_products``: vᵀD is known finite
    (:func:`products_finite`), so a bit-exact vᵀJ needs no scan of its own.
    """
    if derivatives.numel() == 0:
        return 0.0
    dtype = derivatives.dtype
    compute = _compute_dtype(dtype)
    derivatives, probe, probe_vjp = (t.to(compute) for t in (derivatives, probe, probe_vjp))
    expected = predicted_probe(derivatives, probe, pairing)
    if torch.equal(probe_vjp, expected):  # the common case for a true structure: bit-exact
        # (no NaN on either side then, and ±inf at the same entries: one side says it all)
        known = nonfinite_agree or finite_products
        return 0.0 if known or first_nonfinite(probe_vjp) is None else math.inf
    if not nonfinite_agree and first_nonfinite(probe_vjp, expected) is not None:
        return math.inf
    scale = predicted_probe(derivatives.abs(), probe.abs(), pairing)
    return _judged(probe_vjp, expected, scale, dtype, nonfinite_agree)


def products_finite(derivatives: torch.Tensor, components: int) -> bool:
    """Whether vᵀD is finite for every probe v of the plan, where each entry of vᵀD sums
    ``components`` products v·D: every D finite, and the sum bounded by components · 2^K ·
    max |D| (with room for rounding) below the compute dtype's largest number."""
    if derivatives.numel() == 0:
        return True
    compute = _compute_dtype(derivatives.dtype)
    largest = float(torch.linalg.vector_norm(derivatives, ord=math.inf, dtype=compute))
    terms = max(components, 1)
    bound = largest * 2.0 ** probe_plan(derivatives.dtype).exponents * terms
    bound *= 2 + terms * torch.finfo(compute).eps  # a sum's rounding: at most a factor 1 + mu
    return math.isfinite(bound) and bound < torch.finfo(compute).max


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
        sure = _sure_factor(self.dtype, m)
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
    *, nonfinite_agree: bool = False, finite_products: bool = False,
) -> bool:
    """True when vᵀJ equals vᵀD within :func:`probe_mismatch`'s tolerance."""
    return probe_mismatch(derivatives, probe, probe_vjp, pairing, nonfinite_agree=nonfinite_agree,
                          finite_products=finite_products) <= 1.0


def _sure_factor(dtype: torch.dtype, terms: int) -> float:
    """tol · (1 − 2γ) for sums of at most ``terms`` products (0: no such bound holds)."""
    compute = _compute_dtype(dtype)
    mu = terms * torch.finfo(compute).eps / 2
    if mu >= 0.25 or not _full_precision_products(compute):
        return 0.0
    return tolerances(dtype).probe * (1 - 2 * mu / (1 - mu))


# -- the probes of one analysis ---------------------------------------------------------------
class Probes:
    """Random probes vᵀJ drawn from ``seed``, made when first needed. ``seconds``: how long
    probe 0's backward took; ``nonfinite``: name → the flat index of an input entry where a
    probe met a non-finite vᵀJ or vᵀD (the pairing could not be verified there)."""

    def __init__(self, output, named, seed: int):
        self.output, self.named, self.seed = output, named, seed
        self.plan = probe_plan(output.dtype)
        self._plain: dict[str, torch.Tensor] | None = None
        self._jacobians: dict[str, torch.Tensor] = {}
        self._vectors: dict[int, torch.Tensor] = {}
        self._draws: ProbeDraws | None = None
        self.seconds: float | None = None
        self.ordinary: set[str] = set()  # accepted derivatives known finite, not all 0
        self.nonfinite: dict[str, int] = {}

    def vector(self, draw: int = 0) -> torch.Tensor:
        """Probe ``draw`` (0, 1, …) of this run; probe 0, asked for again and again, is kept.
        The codes of all probes are drawn once, kept until :meth:`release`."""
        if draw in self._vectors:
            return self._vectors[draw]
        if self._draws is None:
            self._draws = ProbeDraws(self.output, self.seed)
        vector = self._draws.vector(draw)
        if draw == 0:
            self._vectors[0] = vector
        if draw == self.plan.probes - 1:  # the last one: drawn in order, the codes are done
            self.release()
        return vector

    def release(self) -> None:
        """Forget the probes' codes (drawn again, the same, when next needed): they are as
        large as the output, twice over."""
        self._draws = None

    def vjp(self, name: str) -> torch.Tensor:
        """Probe 0's vᵀJ from a plain backward (one for all inputs, kept)."""
        if self._plain is None:
            names = list(self.named)
            began = time.perf_counter()
            grads = plain_vjp(self.output, [self.named[n] for n in names], self.vector())
            self.seconds = time.perf_counter() - began
            self._plain = dict(zip(names, grads))
        return self._plain[name]

    def use_jacobian(self, name: str, flat: torch.Tensor) -> None:
        """A checked Jacobian (output entries × input shape): more probes cost no backward."""
        self._jacobians[name] = flat

    def _confirming(self, names, draw: int):
        """(v, name → vᵀJ) for confirming probe ``draw``: a product with the checked Jacobian
        where there is one, else one plain backward for all the others (not kept)."""
        v = self.vector(draw)
        vjps = {n: predicted_probe(self._jacobians[n], v.reshape(-1), ())
                for n in names if n in self._jacobians}
        rest = [n for n in names if n not in vjps]
        if rest:
            vjps.update(zip(rest, plain_vjp(self.output, [self.named[n] for n in rest], v)))
        return v, vjps

    def agree(self, name: str, derivatives, pairing, batching: bool = False) -> bool:
        """The probe rule: probe 0, then every confirming probe, must find vᵀJ = vᵀD. With
        ``batching`` (a proved structure, batched derivatives) probe 0 alone checks the
        batching rule, and entries non-finite on both sides agree."""
        if batching:
            return probe_agrees(derivatives, self.vector(), self.vjp(name), pairing,
                                          nonfinite_agree=True)
        return name in self.agree_many({name: (derivatives, pairing)})

    def agree_many(self, judged: dict) -> set[str]:
        """The names of ``judged`` (name → (derivatives, pairing)) that :meth:`agree` accepts,
        judged together: each probe's vᵀJ comes from one plain backward for every input still
        in the running (one whose probe disagrees drops out; the others go on)."""
        full = {n: d for n, (d, pairing) in judged.items()
                if not pairing and n not in self._jacobians}  # full Jacobians: all probes at once
        agreed = self.agree_full(full) if full else set()
        running = [n for n in judged if n not in full]
        finite = {n: products_finite(judged[n][0], judged[n][0].numel()
                                     // max(self.named[n].numel(), 1)) for n in running}
        for draw in range(self.plan.probes):  # one draw at a time, each freed before the next
            if not running:
                break
            v, vjps = (self.vector(), {n: self.vjp(n) for n in running}) if draw == 0 \
                else self._confirming(running, draw)
            for name in list(running):
                derivatives, pairing = judged[name]
                if not probe_agrees(derivatives, v, vjps[name], pairing,
                                    finite_products=finite[name]):
                    self._finite(name, vjps[name], derivatives)  # keeps a non-finite entry
                    running.remove(name)
            del v, vjps
        self.release()
        return agreed | set(running)

    def _finite(self, name: str, vjp: torch.Tensor, derivatives=None) -> bool:
        """Whether vᵀJ (and the derivatives, whose non-finite entries make vᵀD non-finite:
        v has no zero entry) are finite; where not, the input entry is kept for the note."""
        index = first_nonfinite(vjp, *(() if derivatives is None else (derivatives,)))
        if index is not None:  # derivatives end with the input's axes
            self.nonfinite.setdefault(name, index % vjp.numel())
        return index is None

    def agree_full(self, jacobians: dict[str, torch.Tensor]) -> set[str]:
        """The inputs whose full Jacobian (``output.shape + input.shape``) the probe rule
        accepts: the same probes as :meth:`agree` (probe 0, then the confirming ones from
        plain backward passes), but one backward per draw serves every input, and each
        input's vᵀD for all draws is one product (see :class:`FullProbes`).
        Accepted ones known finite and not all 0 go to :attr:`ordinary`."""
        names = list(jacobians)
        vectors = [self.vector(draw) for draw in range(self.plan.probes)]
        self.release()
        tensors = [self.named[n] for n in names]
        draws = [[self.vjp(n) for n in names]]
        draws += [plain_vjp(self.output, tensors, v) for v in vectors[1:]]
        agreed = set()
        for i, name in enumerate(names):
            if not all(self._finite(name, vjps[i]) for vjps in draws) \
                    or not self._finite(name, draws[0][i], jacobians[name]):
                continue
            judge = FullProbes(jacobians[name], vectors)
            if judge.mismatch([vjps[i] for vjps in draws]) <= 1.0:
                agreed.add(name)
                if judge.ordinary:
                    self.ordinary.add(name)
        return agreed

    def seconds_per_vector(self) -> float:
        """How long one backward pass takes (probe 0's, made now if it was not yet)."""
        self.vjp(next(iter(self.named)))
        return self.seconds
