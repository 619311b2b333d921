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
"""
from __future__ import annotations

import math

import torch

from .derivatives import plain_vjp
from .probes import FullProbes, Probes, first_nonfinite
from .tolerances import tolerances


def split(given: dict) -> tuple[dict, dict]:
    """``given`` (name -> Jacobian, or (Jacobian, magnitudes or None)) as two dicts."""
    jacobians, magnitudes = {}, {}
    for name, value in given.items():
        if isinstance(value, (tuple, list)):
            value, scale = value
            if scale is not None:
                magnitudes[name] = scale
        jacobians[name] = value
    return jacobians, magnitudes


def agreed(probes: Probes, jacobians: dict, magnitudes: dict) -> set[str]:
    """The names whose Jacobian (``output.shape + input.shape``) the probe rule accepts, with
    ``magnitudes`` (same shape, where known) as the terms' sizes; the probes are those of
    :meth:`.probes.Probes.agree_full`, one backward per draw for all. Accepted ones known
    finite and not all 0 go to ``probes.ordinary``; a non-finite entry to ``probes.nonfinite``."""
    scaled = {n for n in jacobians if n in magnitudes
              and tuple(magnitudes[n].shape) == tuple(jacobians[n].shape)}
    plain = {n: j for n, j in jacobians.items() if n not in scaled}
    if not scaled:
        return probes.agree_full(plain) if plain else set()
    names = list(jacobians)
    vectors = [probes.vector(draw) for draw in range(probes.plan.probes)]
    draws = [[probes.vjp(n) for n in names]]
    draws += [plain_vjp(probes.output, [probes.named[n] for n in names], v) for v in vectors[1:]]
    found = set()
    for i, name in enumerate(names):
        vjps = [d[i] for d in draws]
        index = first_nonfinite(*vjps, jacobians[name])
        if index is not None:
            probes.nonfinite.setdefault(name, index % vjps[0].numel())
            continue
        judge = ScaledProbes(jacobians[name], vectors, magnitudes.get(name))
        if judge.mismatch(vjps) <= 1.0:
            found.add(name)
            if judge.ordinary:
                probes.ordinary.add(name)
    return found


class ScaledProbes(FullProbes):
    """:class:`.probes.FullProbes` judging each entry against |v|ᵀ·max(M, |D|) where the
    terms' magnitudes M are given and finite (|v|ᵀ|D| where not)."""

    def __init__(self, derivatives: torch.Tensor, probes, magnitudes=None) -> None:
        super().__init__(derivatives, probes)
        usable = magnitudes is not None and not self.empty \
            and first_nonfinite(magnitudes) is None  # an infinite scale would pass anything
        self.magnitudes = None if not usable else \
            torch.maximum(magnitudes.to(self.d.dtype).reshape(self.d.shape), self.d.abs())

    def mismatch(self, probe_vjps) -> float:
        if self.magnitudes is None or self.empty:
            return super().mismatch(probe_vjps)
        vjps = torch.stack([g.reshape(-1) for g in probe_vjps]).to(self.expected.dtype)
        if not self.finite:
            return math.inf
        if torch.equal(vjps, self.expected):
            return 0.0
        allowed = (self.v.abs() @ self.magnitudes).mul_(tolerances(self.dtype).probe)
        allowed.add_(torch.finfo(allowed.dtype).tiny)
        return float(vjps.sub_(self.expected).abs_().div_(allowed).max())


__all__ = ["ScaledProbes", "agreed", "split"]
