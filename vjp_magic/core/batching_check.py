"""The check of a full Jacobian computed by vectorised backward passes against one plain pass,
where no structure is at stake (the exact path with proved pairings).

A batching rule that computes something else than the plain backward would go unseen by the
passes themselves, so one random probe v goes through a plain backward and vᵀJ is compared
with v times the vectorised result by the probe rule (:func:`.probes.probe_agrees`, entries
non-finite on both sides agreeing). Where no structure is probed, probe 0's vector
(:meth:`.probes.Probes.vector`) is not needed: :func:`batching_vector` draws one of the same
values (±2^k, :func:`.probes.probe_plan`) from the run's seed on a stream of its own, in a
few tensor operations. :func:`batching_agrees` gives the rule's verdict in fewer operations
where it accepts.
"""
from __future__ import annotations

import time

import torch

from .derivatives import plain_vjp
from .probes import probe_agrees, probe_generator, probe_values
from .tolerances import tolerances

_EXACT_DTYPES = (torch.float32, torch.float64)  # the rule computes in these themselves


def batching_vector(output: torch.Tensor, seed: int) -> torch.Tensor:
    """A random probe shaped like ``output`` (a tensor of its own), its entries drawn from the
    probe plan's values, from the run's ``seed`` (stream "batching")."""
    values = probe_values(output.dtype)
    codes = torch.randint(len(values), (output.numel(),),
                          generator=probe_generator(seed, "batching"))
    return values.index_select(0, codes).view(output.shape).to(output.device)


def plain_probe(output: torch.Tensor, inputs, vector: torch.Tensor) -> tuple[list, float]:
    """vᵀJ for every input from one plain backward, and the seconds it took."""
    began = time.perf_counter()
    grads = plain_vjp(output, inputs, vector)
    return grads, time.perf_counter() - began


def batching_agrees(flat: torch.Tensor, vector: torch.Tensor, vjp: torch.Tensor) -> bool:
    """``probe_agrees(flat, vector, vjp, (), nonfinite_agree=True)`` for a full Jacobian
    ``flat`` (output entries × input shape), in fewer operations where it accepts: the rule's
    own products (vᵀflat, |v|ᵀ|flat|, as :func:`.probes.predicted_probe` forms them) and its
    bound |vᵀJ − vᵀflat| ≤ tol · |v|ᵀ|flat| + tiny at every entry, by one comparison;
    anything else (a larger difference, a NaN or ±inf) is the rule's to judge."""
    dtype = flat.dtype
    if dtype in _EXACT_DTYPES and vector.dtype == dtype == vjp.dtype and flat.numel():
        m = vector.numel()
        d, v = flat.reshape(m, -1), vector.reshape(1, m)
        expected = (v @ d).reshape(vjp.shape)
        allowed = (v.abs() @ d.abs()).reshape(vjp.shape)
        allowed.mul_(tolerances(dtype).probe).add_(torch.finfo(dtype).tiny)
        if bool(torch.sub(vjp, expected).abs_().le_(allowed).all()):
            return True
    return probe_agrees(flat, vector, vjp, (), nonfinite_agree=True)
