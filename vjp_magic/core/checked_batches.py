"""Vectorised backward passes checked before they are trusted, for every batched pass outside
the dense Jacobian's components (those are checked by :mod:`.batching_check`): the exact
sparse path, a pattern's grouped probes, dependency's group tests, the column passes, the
compressed passes, the couplings' sets, a Hessian's products.

PyTorch's batching rules are not all right: under ``vmap`` the backward of ``torch.cdist``
(``_cdist_backward``) gives every vector the first one's answer, with no error. A batch of
vectors V (k × output) whose VJPs G came from one vectorised pass is checked by one plain
pass of a random combination wᵀV (w's entries ±2^j, none 0): (wᵀV)ᵀJ must equal wᵀG at every
input entry within the backward tolerance of |w|ᵀ|G| (entries non-finite on both sides
agree). Where it does not, the batch is computed again by plain passes and the rest of that
computation makes plain passes only (its :class:`.derivatives.Batching` forgets its vectorised
methods). Nothing is said to the user: the numbers are then the plain passes' own.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from .derivatives import (Batching, PaidBatches, component_vjps, gradient_batch,
                          plain_components, plain_vjp, vjp_batch)
from .probes import probe_values, stream_seed
from .tolerances import tolerances

_SEED = stream_seed(0, "batched passes")  # w's stream: fixed, the user's RNG untouched


def checked_batch(output: torch.Tensor, inputs: Sequence[torch.Tensor],
                  grad_outputs: torch.Tensor, batched: bool = True,
                  log: Batching | None = None) -> list[torch.Tensor]:
    """:func:`.derivatives.vjp_batch`, its vectorised result checked (:func:`verified`)."""
    log = Batching() if log is None else log
    grads = vjp_batch(output, inputs, grad_outputs, batched=batched, log=log)
    return verified(output, inputs, grad_outputs, grads, log)


def verified(output: torch.Tensor, inputs: Sequence[torch.Tensor], grad_outputs: torch.Tensor,
             grads: list[torch.Tensor], log: Batching) -> list[torch.Tensor]:
    """``grads`` (vᵀJ for each v in ``grad_outputs``, from :func:`.derivatives.vjp_batch` with
    ``log``) where they came from plain passes or agree with one plain pass of a random
    combination of the vectors; else the plain passes' own (and ``log`` vectorises no more).
    Of one computation's vectorised batches (one ``log``) the 1st, 2nd, 4th, 8th … are
    checked, and the first of each batch size (the last, smaller chunk): a batching rule acts
    per op whatever the vectors, so a wrong one shows in the first batch (cdist's in every
    one), unless it depends on the batch's size; the checks cost log₂ of the batches' count.
    (:meth:`~.derivatives.Batching.new_set`: other vectors, checked afresh.)"""
    if not log.vectorised:
        return grads
    log.vectorised_batches += 1
    made, size = log.vectorised_batches, grad_outputs.shape[0]
    if made & (made - 1) and size in log.checked_sizes:
        return grads
    log.checked_sizes.add(size)
    if agree(output, inputs, grad_outputs, grads):
        return grads
    log.methods.clear()
    log.vectorised = False
    return vjp_batch(output, inputs, grad_outputs, batched=False)


def agree(output: torch.Tensor, inputs: Sequence[torch.Tensor], grad_outputs: torch.Tensor,
          grads: Sequence[torch.Tensor]) -> bool:
    """Whether one plain pass of wᵀV (w random ±2^j) gives wᵀG for every input."""
    count = grad_outputs.shape[0]
    if count == 0:
        return True
    w = _weights(count, grad_outputs.dtype)
    combined = torch.tensordot(w.to(grad_outputs.device), grad_outputs.detach(), 1)
    plain = plain_vjp(output, inputs, combined.reshape(output.shape))
    return all(_close(g.detach(), w, p.detach()) for g, p in zip(grads, plain))


def _weights(count: int, dtype: torch.dtype) -> torch.Tensor:
    values = probe_values(dtype if dtype.is_floating_point else torch.float64)
    codes = torch.randint(len(values), (count,), generator=torch.Generator().manual_seed(_SEED))
    return values.index_select(0, codes).to(dtype)


def _close(stacked: torch.Tensor, w: torch.Tensor, plain: torch.Tensor) -> bool:
    """|plain − wᵀG| ≤ tol·|w|ᵀ|G| + floor at every entry, non-finite entries on both sides
    agreeing (in float64, or complex128); tol the backward tolerance, the floor the probe
    tolerance of the largest |w|ᵀ|G| (a plain pass leaves rounding residue where the batched
    one is exactly 0: float32 attention, a mixing MLP, a scaled cumsum)."""
    if stacked.numel() == 0:
        return True
    wide = torch.complex128 if stacked.is_complex() else torch.float64
    count = w.numel()
    g = stacked.to(wide).reshape(count, -1)
    ww = w.to(device=g.device, dtype=wide).reshape(1, count)
    expected = (ww @ g).reshape(-1)
    scale = (ww.abs() @ g.abs()).reshape(-1)
    got = plain.to(device=g.device, dtype=wide).reshape(-1)
    both = ~torch.isfinite(got) & ~torch.isfinite(expected)
    rule = tolerances(stacked.dtype)
    floor = rule.probe * float(scale.nan_to_num(0.0, 0.0, 0.0).amax()) if scale.numel() else 0.0
    bound = scale * rule.backward + (floor + torch.finfo(torch.float64).tiny)
    near = (got - expected).abs() <= bound  # (False where one side alone is not finite)
    near &= torch.isfinite(got) & torch.isfinite(expected)
    return bool((near | both).all())


class CheckedBatches(PaidBatches):
    """:class:`.derivatives.PaidBatches` (vectorised while that pays), each call's batch
    checked (:func:`verified`) where a vectorised pass computed part of it."""

    def __call__(self, output: torch.Tensor, inputs: Sequence[torch.Tensor],
                 grad_outputs: torch.Tensor) -> list[torch.Tensor]:
        if getattr(self, "_inside", False):  # (PaidBatches' own call for the rest)
            return super().__call__(output, inputs, grad_outputs)
        self._inside, self.log.vectorised = True, False
        try:
            grads = super().__call__(output, inputs, grad_outputs)
        finally:
            self._inside = False
        return verified(output, inputs, grad_outputs, grads, self.log)


def checked_components(output: torch.Tensor, inputs: Sequence[torch.Tensor],
                       point_out_axes: Sequence[int], budget: int) -> list[torch.Tensor]:
    """:func:`.derivatives.component_vjps`'s stacked VJPs, each vectorised chunk checked
    (:func:`agree`) and computed again by plain passes where it fails."""
    stacked, vectorised = component_vjps(output, inputs, point_out_axes, budget)
    copied = False
    for start, stop in vectorised:
        vectors = gradient_batch(output, point_out_axes, start, stop)
        if not agree(output, inputs, vectors, [s[start:stop] for s in stacked]):
            if not copied:  # (a pass's result may be a view of another tensor)
                stacked, copied = [s.clone() for s in stacked], True
            plain = plain_components(output, inputs, point_out_axes, start, stop)
            for s, p in zip(stacked, plain):
                s[start:stop] = p
    return stacked
