"""The check of a full Jacobian computed by vectorised backward passes against one plain pass,
where no structure is at stake (the exact path with proved pairings).

A batching rule that computes something else than the plain backward would go unseen by the
passes themselves, so one random probe v goes through a plain backward and vᵀJ is compared
with v times the vectorised result by the probe rule (:func:`.probes.probe_agrees`, entries
non-finite on both sides agreeing). Where no structure is probed, probe 0's vector
(:meth:`.probes.Probes.vector`) is not needed: :func:`batching_vector` draws one of the same
values (±2^k, :func:`.probes.probe_plan`) from the run's seed on a stream of its own, in a
few tensor operations. :func:`batching_agrees` gives the rule's verdict in fewer operations
where it accepts. A probe the rule fails is judged again against the measured rounding noise
of vᵀJ (:func:`within_noise`, as :mod:`.sparse_check` does for a proved pattern): where
per-sample rows cancel (BatchNorm in training mode), a loop and a vectorised pass differ by
rounding at intermediate values that the rule's scale |v|ᵀ|D| does not see.
"""
from __future__ import annotations

import math
import threading
import time

import torch

from .derivatives import plain_vjp
from .probes import predicted_probe, probe_agrees, probe_values, stream_seed
from .sparse_check import rounding_noise
from .tolerances import tolerances

_EXACT_DTYPES = (torch.float32, torch.float64)  # the rule computes in these themselves


def batching_vector(output: torch.Tensor, seed: int) -> torch.Tensor:
    """A random probe shaped like ``output`` (a tensor of its own), its entries drawn from the
    probe plan's values, from the run's ``seed`` (stream "batching": the draws of
    :func:`.probes.probe_generator`'s generator, from one CPU generator per thread seeded
    afresh, as a new one would be)."""
    values = probe_values(output.dtype)
    generator = getattr(_THREAD, "generator", None)
    if generator is None:
        generator = _THREAD.generator = torch.Generator(device="cpu")
    generator.manual_seed(stream_seed(seed, "batching"))
    codes = torch.randint(len(values), (output.numel(),), generator=generator)
    vector = values.index_select(0, codes)
    if vector.shape != output.shape:  # (a view has a base: a plain pass copies it first)
        vector = vector.view(output.shape)
    return vector if vector.device == output.device else vector.to(output.device)


_THREAD = threading.local()


def plain_probe(output: torch.Tensor, inputs, vector: torch.Tensor) -> tuple[list, float]:
    """vᵀJ for every input from one plain backward, and the seconds it took."""
    began = time.perf_counter()
    grads = plain_vjp(output, inputs, vector)
    return grads, time.perf_counter() - began


def batching_agrees(flat: torch.Tensor, vector: torch.Tensor, vjp: torch.Tensor) -> bool:
    """``probe_agrees(flat, vector, vjp, (), nonfinite_agree=True)`` for a full Jacobian
    ``flat`` (output entries × input shape), in fewer operations where it accepts
    (:func:`batching_verdict`)."""
    return batching_verdict(flat, vector, vjp)[0]


def batching_verdict(flat: torch.Tensor, vector: torch.Tensor,
                     vjp: torch.Tensor) -> tuple[bool, bool]:
    """(:func:`batching_agrees`'s verdict, whether ``flat`` is known finite and not all 0).

    Where it accepts, in fewer operations: the rule's own products (vᵀflat, |v|ᵀ|flat|, as
    :func:`.probes.predicted_probe` forms them) and its bound |vᵀJ − vᵀflat| < tol ·
    |v|ᵀ|flat| + tiny at every entry, by one comparison; anything else (a larger difference,
    a NaN or ±inf on either side, which no entry of that comparison passes) is the rule's to
    judge. Accepted so, every vᵀflat is finite: so is every entry of ``flat`` (v has no 0
    entry, an infinite or NaN one would make its column's sum infinite or NaN), and one
    non-zero vᵀflat shows a non-zero entry (the analysis then needs no pass of its own over
    ``flat`` for its notes)."""
    dtype = flat.dtype
    if dtype in _EXACT_DTYPES and vector.dtype == dtype == vjp.dtype and flat.numel():
        m = vector.numel()
        d, v = flat.reshape(m, -1), vector.reshape(1, m)
        expected = (v @ d).reshape(vjp.shape)
        allowed = (v.abs() @ d.abs()).reshape(vjp.shape)
        allowed.mul_(tolerances(dtype).probe).add_(torch.finfo(dtype).tiny)
        if bool(torch.sub(vjp, expected).abs_().lt_(allowed).all()):
            return True, bool(expected.any())
    return probe_agrees(flat, vector, vjp, (), nonfinite_agree=True), False


def within_noise(output, named: dict, vector: torch.Tensor, vjps: dict, judged: dict) -> set:
    """The names of ``judged`` (name → (derivatives, pairing) that failed the batching probe
    ``vector``, ``vjps[name]`` its plain vᵀJ) whose every entry is within the rule's bound
    plus :func:`.sparse_check.rounding_noise` (two plain passes for all of them) times
    :func:`_rows`: the batched derivatives differ from a plain pass by rounding only.
    Float32 and float64 (the rule computes in those); a NaN or ±inf not on both sides is
    never within noise."""
    excess, scales = {}, {}
    for name, (derivatives, pairing) in judged.items():
        if derivatives.dtype in _EXACT_DTYPES and vector.dtype == derivatives.dtype == \
                vjps[name].dtype:
            excess[name], scales[name] = _excess(derivatives, vector, vjps[name], pairing)
    if not excess:
        return set()
    v = vector.reshape(output.shape)
    noise = rounding_noise(output, [named[n] for n in excess], v,
                           [vjps[n].detach() for n in excess])
    kept = set()
    for (name, over), bound in zip(excess.items(), noise):
        bound = bound.to(over.device).mul_(_rows(judged[name][0], over))
        scale, tolerance = scales[name], tolerances(over.dtype).probe
        cap = scale.mul(CAP_MULTIPLE * tolerance).add_(tolerance * float(scale.amax()))
        tiny = torch.finfo(over.dtype).tiny
        excused = (over <= tiny) | (bound <= cap)  # noise small beside |v|ᵀ|D| where needed
        if bool(excused.all()) and bool(over.sub_(bound).amax() <= tiny):  # NaN: never
            kept.add(name)
    return kept


# Rounding accepted as such only where the excess over the tolerance is small beside the
# derivatives themselves: at most this many times the probe's own tolerance of |v|ᵀ|D| (plus
# that tolerance of its largest entry, for entries where D is 0 and a plain pass rounds). Where
# the plain passes' noise is larger (cancellation at large intermediate values: u·3e5 −
# u·(3e5 − 1)), it could hide a batching rule percents off: recomputed by plain passes.
CAP_MULTIPLE = 16


def _rows(derivatives: torch.Tensor, vjp: torch.Tensor) -> float:
    """√(rows of D summed into each entry of vᵀD): each row is computed on its own (a
    vectorised pass rounds it as a plain pass would, which the noise measures), its
    rounding independent of the others'."""
    return math.sqrt(max(derivatives.numel() // max(vjp.numel(), 1), 1))


def _excess(derivatives: torch.Tensor, vector: torch.Tensor, vjp: torch.Tensor, pairing):
    """(|vᵀJ − vᵀD| − tol·|v|ᵀ|D| at each entry: 0 where both sides are equal or both not
    finite, NaN where one side is not finite or the bound is infinite; |v|ᵀ|D|)."""
    expected = predicted_probe(derivatives, vector, pairing).reshape(vjp.shape)
    scale = predicted_probe(derivatives.abs(), vector.abs(), pairing).reshape(vjp.shape)
    tolerance = tolerances(derivatives.dtype).probe
    excess = torch.sub(vjp, expected).abs_().sub_(scale, alpha=tolerance)
    excess.masked_fill_(torch.isinf(scale), math.nan)
    agreed = (vjp == expected) | (~torch.isfinite(vjp) & ~torch.isfinite(expected))
    return excess.masked_fill_(agreed, 0.0), scale
