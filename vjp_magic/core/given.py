"""Full Jacobians computed another way (``differentiate(..., given=...)``: the per-sample
gradients of the vectorised replay or of the per-layer rules), accepted only where the probe
rule agrees with the graph's own vector-Jacobian products.

A given Jacobian is judged as the analysis judges its own full Jacobians
(:meth:`.probes.Probes.agree_full`): probe 0 and the confirming probes, each vᵀJ from one plain
backward for every given input, each entry of vᵀJ within the probe tolerance of the
magnitudes that sum into it. Those magnitudes are |v|ᵀ|D| — unless the method that computed D
says what summed into each entry of D itself (``magnitudes``: the sums of the absolute terms).
That matters where the terms cancel: the key projection's bias in self-attention has a true
gradient of exactly 0 (softmax ignores a constant added to every score of a query), so both
D and the backward's vᵀJ are float32 rounding noise of the size of those terms, two different
noises, which |v|ᵀ|D| (the noise's own size) cannot tell from a wrong value. Judged against
|v|ᵀ·max(M, |D|) it is still never silently wrong: an accepted entry differs from vᵀJ by less
than the tolerance times the terms' magnitudes, which is the rounding any computation of that
sum has; and M is not taken on trust from nowhere: the per-layer rules make it from the same
layer-output gradients whose products with the layer's inputs are the weight's entries, and
those are judged at their own magnitudes by the same probes.

How many probes. The probe plan (:mod:`.probes`: 7 probes in float32) bounds the chance that
every probe misses an error of at least its threshold (2^(2K+1)·tol, 1.6 % in float32) times
M_i, the magnitudes Σ_b |D_bi| of the column it is in (or the given ones). An error confined
to one sample's row b is caught by every single probe: |v_b·E_bi| ≥ 2^(−K)·2^(2K+1)·tol·M_i
exceeds the tolerance tol·(|v|ᵀ|D|)_i ≤ tol·2^K·M_i whatever v is. What one probe can miss,
with probability 1/22, is an error that moves a term between two samples' rows (E_b = −E_c:
missed when v_b = v_c) — exactly what a loss reading another sample's rows does to per-layer
rules. (Smaller errors, below the threshold, are caught by chance: more often by seven
probes.) A Jacobian marked ``samples_separated`` comes with a check that rules this out: the
per-layer rules weight the losses by ±2^k in passes where any two samples get different
weights at least once, and refuse unless each layer's output gradient, divided by its
sample's weight, is the unweighted one — so a term of sample c's loss in sample b's rows
shows (times w_c/w_b − 1, never below 1/2; above 1e-5 of the row's largest entry) in a pass
that tells them apart, for every pair, not with a probability. Where the graph's structure
proves that no loss reads another sample's rows of any layer output
(:func:`vjp_magic.run.expanded.proved_apart`), those terms are zero by construction and the
rules skip the weighted passes: one backward, weighted by probe 0, gives the layer-output
gradients and probe 0's vᵀJ; the mark means the same. What is left for the probes
is the arithmetic of exact formulas (the rows are then each sample's own gradient), which
probe 0, judged entry by entry, checks as it checks a batched derivative of a proved
structure (and as the sparse path's one probe checks a proved pattern). Terms from several
samples that cancel exactly in every weighted pass would still have to meet a probe that
misses them. Anything unmarked (the vmap path) gets the full plan.

Where M would be as large as D itself (a Linear weight: one product per sample and entry, or
a sum over positions), the method may give |v|ᵀM directly instead (``weighted_magnitudes``: a
function of the rows |v|, computed from the factors whose products are D's terms, |g|ᵀ|a|
weighted by |v|: one small product, where |v|ᵀ|D| reads all of D a second time). That
function may also offer ``product(v, D)``: vᵀD as it read it from that very D just after
writing it (in cache then), or None where D was written since (its version counter) or is
another tensor or v another row. That scale
is the terms' own, never above |v|ᵀ·max(M, |D|): judged against it alone, the rule is at
least as strict as with M given entry by entry.

Why vᵀD itself is still read from D (most of the check's time where D is large).
For a Linear weight vᵀD = (v⊙g)ᵀa too, a product as small as its scale; but that is the
very product the probe-weighted backward computes for the weight (autograd's linear
backward), so comparing the two would check the factors g and a — which the per-sample
passes and the replay's comparison with the output already check — and never the tensor
handed over. Read from D, probe 0 checks what the rules do after the factors: the outer
products written out (broadcast, out × in), the reshape to ``output.shape + input.shape``,
the sum over the uses of a parameter read twice, the name each Jacobian is given. Only the
scale comes from the factors: a tolerance, never above |v|ᵀ·max(M, |D|).

Except where D is not written yet (:class:`.outer.OuterProducts`: a Linear weight at one
position per sample, kept as its factors until read, the per-sample result built directly
only): there vᵀD = (v⊙g)ᵀa comes from the factors at the cell, and the check on D itself is
deferred, not dropped: the D written on first read is held to the same bound entry by entry
(vᵀD read from the written tensor, against the same vᵀJ), and raises where it fails, before
any of its numbers is seen.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import torch

from .derivatives import plain_vjp
from .outer import OuterProducts, written
from .probes import FullProbes, Probes, first_nonfinite
from .tolerances import tolerances


class GivenJacobian(NamedTuple):
    """A Jacobian computed another way, with what its method knows about it."""

    jacobian: torch.Tensor  # output.shape + input.shape
    # the sums of |terms| adding up to each entry (or a Deferred making them where needed)
    magnitudes: torch.Tensor | Deferred | None = None
    samples_separated: bool = False  # per-sample rows, every pair proved or checked apart
    # |v| rows (k, *output.shape) -> |v|ᵀM (k, input entries): M made from its factors
    weighted_magnitudes: Callable | None = None
    # (seed, v, vᵀJ): probe 0 of that seed (the analysis' when the seeds match) and its vᵀJ
    # from a plain backward of the graph the analysis reads (the per-sample rules' pass)
    probe_vjp: tuple | None = None


class Deferred:
    """Magnitudes M made only where needed: by ``make()`` (None where it cannot), once, the
    first time :func:`agreed` refuses a Jacobian at its own scale |v|ᵀ|D|. With M the scale
    is |v|ᵀ·max(M, |D|), never below that, so whatever |D| accepts M accepts too: the
    verdicts are those of M made up front, without its cost (the per-layer rules' backward
    passes, for the vectorised path) where no entry needs it."""

    def __init__(self, make: Callable) -> None:
        self.make, self.done, self.value = make, False, None

    def resolved(self):
        if not self.done:
            self.value, self.done = self.make(), True
        return self.value

    def then(self, change: Callable) -> Deferred:
        """M changed by ``change`` (a reshape), made when this one is."""
        return Deferred(lambda: None if self.resolved() is None else change(self.resolved()))


class Separated(set):
    """The names whose rows were checked per sample for every pair, with ``probe``: name ->
    (seed, v, vᵀJ) where the method computing the Jacobian also ran a plain backward of the
    same graph with probe 0 of a seed (the per-layer rules weight a check pass by it): used
    as probe 0 and its vᵀJ where that seed is the analysis' own."""

    def __init__(self, names=(), probe: dict | None = None):
        super().__init__(names)
        self.probe = probe or {}


def split(given: dict, lazy: bool = False) -> tuple[dict, dict, set]:
    """``given`` (name -> Jacobian, a (Jacobian, magnitudes) pair or a
    :class:`GivenJacobian`) as the Jacobians, the magnitudes where known (a tensor shaped
    like the Jacobian, or the function giving |v|ᵀM), and the names whose rows were checked
    per sample for every pair (all of a dict marked ``separated``, with its ``magnitudes``
    and ``weighted``: the per-layer rules' :class:`~vjp_magic.run.expanded.PerSampleGradients`).
    A Jacobian given as :class:`.outer.OuterProducts` is written here unless ``lazy`` (then
    :func:`agreed` judges it from its factors, and it is checked again when written)."""
    jacobians, magnitudes, separated = {}, {}, Separated()
    rows = bool(getattr(given, "separated", False))  # per-sample rules' own dict: all checked
    for name, value in given.items():
        if rows and isinstance(value, torch.Tensor):
            value = GivenJacobian(value, getattr(given, "magnitudes", {}).get(name), True,
                                  getattr(given, "weighted", {}).get(name))
        if isinstance(value, (tuple, list)):
            value = GivenJacobian(*value)
            if value.magnitudes is not None:
                magnitudes[name] = value.magnitudes
            elif value.weighted_magnitudes is not None:
                magnitudes[name] = value.weighted_magnitudes
            if value.samples_separated:
                separated.add(name)
            if value.probe_vjp is not None:
                separated.probe[name] = value.probe_vjp
            value = value.jacobian
        jacobians[name] = value if lazy else written(value)
    return jacobians, magnitudes, separated


def agreed(probes: Probes, jacobians: dict, magnitudes: dict,
           separated: set | frozenset = frozenset()) -> set[str]:
    """The names whose Jacobian (``output.shape + input.shape``) the probe rule accepts, with
    ``magnitudes`` (same shape, where known) as the terms' sizes; the probes are those of
    :meth:`.probes.Probes.agree_full`, one backward per draw for all — probe 0 alone where
    every one is ``separated`` (see the module's docstring). Accepted ones known finite and
    not all 0 go to ``probes.ordinary``; a non-finite entry to ``probes.nonfinite``.
    A :class:`Deferred` M is made only for a Jacobian its own scale refuses (all of them
    up front where probe 0 judges alone). An :class:`.outer.OuterProducts` is judged from
    its factors at once (and checked again when written), else written in ``jacobians``
    itself before it is judged: the caller hands on the tensor judged."""
    one = bool(jacobians) and set(jacobians) <= set(separated)
    if not one:
        jacobians.update({n: written(j) for n, j in jacobians.items()})
    magnitudes, later = _undeferred(magnitudes, one)
    scaled = {n for n in jacobians if _fits(magnitudes.get(n), jacobians[n])}
    if not scaled and not one and not set(later) & set(jacobians):
        return probes.agree_full(jacobians) if jacobians else set()
    names, found = list(jacobians), set()
    given = {n: (v, vjp) for n, (seed, v, vjp) in getattr(separated, "probe", {}).items()
             if n in jacobians and seed == probes.seed}  # probe 0 of this run, and its vᵀJ
    if one:  # probe 0 alone: every Jacobian that can be, judged at once
        found = at_once(probes, {n: jacobians[n] for n in names
                                 if _at_once_suits(jacobians[n], magnitudes.get(n))},
                        magnitudes, given)
        names = [n for n in names if n not in found]
        if not names:
            return found
        jacobians.update({n: written(jacobians[n]) for n in names})
    vectors = [probes.vector(draw) for draw in range(1 if one else probes.plan.probes)]
    draws = [[given[n][1] if n in given else probes.vjp(n) for n in names]]
    draws += [plain_vjp(probes.output, [probes.named[n] for n in names], v) for v in vectors[1:]]
    for i, name in enumerate(names):
        vjps = [d[i] for d in draws]
        judge = ScaledProbes(jacobians[name], vectors, magnitudes.get(name))
        # vᵀD finite for a v without zeros (signed powers of two): every entry of D is
        scan = vjps if judge.finite else vjps + [jacobians[name]]
        index = first_nonfinite(*scan)
        if index is not None:
            probes.nonfinite.setdefault(name, index % vjps[0].numel())
            continue
        mismatch = judge.mismatch(vjps)
        if mismatch > 1.0 and name in later and _fits(later[name].resolved(), jacobians[name]):
            judge = ScaledProbes(jacobians[name], vectors, later[name].resolved())
            mismatch = judge.mismatch(vjps)
        if mismatch <= 1.0:
            found.add(name)
            if judge.ordinary:
                probes.ordinary.add(name)
    return found


def _undeferred(magnitudes: dict, made: bool) -> tuple[dict, dict]:
    """(the magnitudes there now, name -> :class:`Deferred` M): all made where ``made``."""
    later = {n: m for n, m in magnitudes.items() if isinstance(m, Deferred)}
    now = {n: m for n, m in magnitudes.items() if n not in later}
    if made:
        now.update({n: m.resolved() for n, m in later.items() if m.resolved() is not None})
        later = {}
    return now, later


def _fits(magnitudes, jacobian: torch.Tensor) -> bool:
    """M as a function, or a tensor shaped like the Jacobian."""
    return magnitudes is not None and (callable(magnitudes) or isinstance(
        magnitudes, torch.Tensor) and tuple(magnitudes.shape) == tuple(jacobian.shape))


AT_ONCE_ENTRIES = 2**20  # a Jacobian without its |v|ᵀM this large: judged alone (FullProbes)


def _at_once_suits(jacobian: torch.Tensor, magnitudes) -> bool:
    return jacobian.numel() > 0 and (callable(magnitudes) or jacobian.numel() <= AT_ONCE_ENTRIES)


def at_once(probes: Probes, jacobians: dict, magnitudes: dict,
            given: dict | None = None) -> set[str]:
    """All of ``jacobians`` where probe 0 accepts every one by :class:`ScaledProbes`' rule,
    judged together: vᵀD and its scale per Jacobian (one product with D each), then one
    comparison over all their entries; else none (each is then judged alone, as
    :func:`agreed` does, which also says where an entry is not finite). The rule is the same
    entry by entry: vᵀJ within tol·|v|ᵀ·max(M, |D|) of vᵀD (|v|ᵀM where given as a
    function; |v|ᵀ|D| with no M). ``given``: name -> (probe 0, its vᵀJ) where already
    computed (else ``probes.vjp``)."""
    if not jacobians:
        return set()
    ready = [given[n][0] for n in jacobians if given and n in given]
    v = (ready[0] if len(ready) == len(jacobians) else probes.vector(0)).reshape(1, -1)
    rows: dict = {}  # compute dtype -> (v, |v|) in it
    expected, vjps, allowed, limits, lazy = [], [], [], [], {}
    for name, jacobian in jacobians.items():
        compute = torch.float32 if jacobian.dtype in (torch.float16, torch.bfloat16) \
            else jacobian.dtype  # as FullProbes computes
        if compute not in rows:
            row = v if v.dtype == compute else v.to(compute)
            rows[compute] = row, row.abs()
        row, size = rows[compute]
        vjp = given[name][1] if given and name in given else probes.vjp(name)
        vjps.append(_as(vjp.reshape(1, -1), compute))
        read = _read_row(jacobian, row, size, magnitudes.get(name), compute, vjps[-1])
        if read is None or read[1] is None or read[1].numel() != read[0].numel():
            return set()
        found, scale = read
        if isinstance(jacobian, OuterProducts):
            lazy[len(expected)] = jacobian, row, size, magnitudes.get(name)
        expected.append(found)  # all as rows (1, n): joined along the entries
        allowed.append(scale if scale.dim() == 2 and scale.shape[0] == 1
                       else scale.reshape(1, -1))
        limits.append(tolerances(jacobian.dtype).probe)
    if len(rows) > 1 or len(set(limits)) > 1:  # mixed precisions: each judged in its own
        gaps = [g.sub(e).abs_() for g, e in zip(vjps, expected)]
        bounds = [a.mul(t).add_(torch.finfo(a.dtype).tiny) for a, t in zip(allowed, limits)]
        passed = all(math.isfinite(float(b.sum())) and bool((g <= b).all())
                     for g, b in zip(gaps, bounds))
    else:
        found = _joined(expected)
        gaps = _joined(vjps).sub(found).abs_()
        bound = _joined(allowed).mul(limits[0]).add_(torch.finfo(gaps.dtype).tiny)
        # a finite bound (a sum of non-negative terms, finite unless one is not or it
        # overflows): a gap within it is finite too, and a NaN gap is never within it
        passed = math.isfinite(float(bound.sum())) and bool((gaps <= bound).all())
    if not passed:
        return set()
    for i, (jacobian, row, size, weighted) in lazy.items():  # for the D written: its
        jacobian.accepted = (row, vjps[i], functools.partial(  # bound, made then
            _bound, size, weighted, limits[i], vjps[i].dtype))
    counts = torch.stack([e.count_nonzero() for e in expected]).tolist()
    probes.ordinary.update(n for n, count in zip(jacobians, counts) if count)
    return set(jacobians)  # (vᵀD finite and not all 0: D is too)


def _read_row(jacobian, row: torch.Tensor, size: torch.Tensor, given_scale,
              compute: torch.dtype, vjp: torch.Tensor) -> tuple | None:
    """(vᵀD, its scale) as rows (1, n) for :func:`at_once`: from the very tensor handed over
    (where its method read it just written: the same product), or from an
    :class:`.outer.OuterProducts`' factors with |v|ᵀM given as a function (checked again
    on the tensor when written; a scale of 0 where vᵀD is finite and equals ``vjp`` bit for
    bit, within any bound: the real one is made for the written D); None where that
    function is missing."""
    if isinstance(jacobian, OuterProducts):
        if not callable(given_scale):
            return None
        found = jacobian.product(row)
        if torch.equal(found, vjp) and first_nonfinite(found) is None:  # (a sum: cheap)
            return found, torch.zeros_like(found)
        return found, _scale(size, None, given_scale, compute)
    d = _as(jacobian.reshape(row.shape[1], -1), compute)
    if given_scale is None and d.device.type == "cpu" and d.numel() > 2 * READ_BLOCK:
        return read_once(row, size, d)
    return _read(given_scale, row, d), _scale(size, d, given_scale)


def _bound(size: torch.Tensor, weighted, limit: float, dtype: torch.dtype) -> torch.Tensor:
    """tol·|v|ᵀM + tiny: :func:`at_once`'s bound on vᵀD for |v|ᵀM given as a function."""
    return _scale(size, None, weighted, dtype).reshape(1, -1).mul(limit).add_(
        torch.finfo(dtype).tiny)


# Entries of D per block in :func:`read_once`: 512 KB of float32, which stays in a CPU core's
# cache between the block's two products (measured 35-40 % faster than vᵀD, then |D| made
# whole and read again, for 1-13 M entries; more passes of Python below about 2^16).
READ_BLOCK = 2**17


def read_once(v: torch.Tensor, size: torch.Tensor, d: torch.Tensor) -> tuple:
    """(vᵀD, |v|ᵀ|D|) for ``v`` and ``size`` = |v| as rows (1, m) and D as m × n, reading D
    from memory once: block by block of rows, each block's |D| made while it is in cache
    and never the whole |D| (the same sums, added in another order: within rounding)."""
    step = max(1, READ_BLOCK // max(1, d.shape[1]))
    found, scale = v[:, :step] @ d[:step], size[:, :step] @ d[:step].abs()
    for start in range(step, d.shape[0], step):
        block = d[start:start + step]
        found.addmm_(v[:, start:start + step], block)
        scale.addmm_(size[:, start:start + step], block.abs())
    return found, scale


def _read(weighted, v: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """``v @ d``, as the ``weighted_magnitudes`` function's ``product`` kept it where it
    read that very D with that v while D was in cache (else computed now)."""
    product = getattr(weighted, "product", None)
    found = product(v, d) if product is not None else None
    return v @ d if found is None else found


def _as(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t if t.dtype == dtype else t.to(dtype)


def _joined(parts: list) -> torch.Tensor:
    return parts[0] if len(parts) == 1 else torch.cat(parts, 1)


def _scale(v: torch.Tensor, d: torch.Tensor | None, magnitudes,
           dtype: torch.dtype | None = None) -> torch.Tensor | None:
    """|v|ᵀ·max(M, |D|) (``v``: |v| as one row; ``d``: D as m × n), one row of n; where M
    comes as a function, |v|ᵀM (its own shape, in ``dtype`` or D's; a non-finite value
    fails the caller's bound)."""
    if callable(magnitudes):
        return _as(magnitudes(v), d.dtype if dtype is None else dtype)
    terms = d.abs() if magnitudes is None else torch.maximum(
        magnitudes.to(d.dtype).reshape(d.shape), d.abs())
    return v @ terms


class ScaledProbes(FullProbes):
    """:class:`.probes.FullProbes` judging each entry against |v|ᵀ·max(M, |D|) where the
    terms' magnitudes M are given and finite, or against |v|ᵀM where M comes as the
    function giving it (|v|ᵀ|D| where neither)."""

    def __init__(self, derivatives: torch.Tensor, probes, magnitudes=None) -> None:
        super().__init__(derivatives, probes)
        self.magnitudes = self.weighted = None
        if magnitudes is None or self.empty:
            return
        if callable(magnitudes):  # |v|ᵀM itself, from M's factors: D is not read again
            weighted = magnitudes(self.v.abs())
            if tuple(weighted.shape) == tuple(self.expected.shape) \
                    and first_nonfinite(weighted) is None:  # an infinite scale passes anything
                self.weighted = weighted.to(self.expected.dtype)
        elif first_nonfinite(magnitudes) is None:
            self.magnitudes = \
                torch.maximum(magnitudes.to(self.d.dtype).reshape(self.d.shape), self.d.abs())

    def mismatch(self, probe_vjps) -> float:
        if (self.magnitudes is None and self.weighted is None) or self.empty:
            return super().mismatch(probe_vjps)
        vjps = torch.stack([g.reshape(-1) for g in probe_vjps]).to(self.expected.dtype)
        if not self.finite:
            return math.inf
        if torch.equal(vjps, self.expected):
            return 0.0
        allowed = (self.v.abs() @ self.magnitudes) if self.weighted is None \
            else self.weighted.clone()
        allowed.mul_(tolerances(self.dtype).probe).add_(torch.finfo(allowed.dtype).tiny)
        return float(vjps.sub_(self.expected).abs_().div_(allowed).max())


__all__ = ["Deferred", "GivenJacobian", "ScaledProbes", "Separated", "agreed", "at_once",
           "read_once", "split"]
