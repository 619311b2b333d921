"""Vectorised backward passes checked before they are trusted: the one owner of "is this
vectorised batch right?".

PyTorch's batching rules are not all right: under ``vmap`` the backward of ``torch.cdist``
(``_cdist_backward``) gives every vector the first one's answer, with no error. So every
vectorised result is compared with one plain backward of a random combination of its vectors:

- a full Jacobian (the exact path, vectors the identity, so the combination is the probe v
  itself): vᵀJ from one plain pass against v times the vectorised rows, by the probe rule
  (:func:`batching_verdict`; v from the run's seed, :func:`batching_vector`); a probe the rule
  fails is judged again against the measured rounding noise of vᵀJ (:func:`within_noise`, as
  :mod:`.sparse_check` does for a proved pattern): where per-sample rows cancel (BatchNorm in
  training mode), a loop and a vectorised pass differ by rounding at intermediate values that
  the rule's scale |v|ᵀ|D| does not see;
- every other batch V (k × output) whose VJPs G came from one vectorised pass (the exact
  sparse path, a pattern's grouped probes, dependency's group tests, the column, compressed
  and couplings passes, a Hessian's products): (wᵀV)ᵀJ from one plain pass must equal wᵀG
  (w's entries ±2^j, none 0) within the backward tolerance of |w|ᵀ|G| (:func:`verified`);
  where it does not, the batch is computed again by plain passes and the rest of that
  computation makes plain passes only (its :class:`.derivatives.Batching` forgets its
  vectorised methods). Nothing is said to the user: the numbers are then the plain passes'.
"""
from __future__ import annotations

import math
import threading
import time
from collections.abc import Sequence

import torch

from .derivatives import (Batching, PaidBatches, component_vjps, gradient_batch,
                          plain_components, plain_vjp, vjp_batch)
from .probes import predicted_probe, probe_agrees, probe_values, stream_seed
from .rounding import rounding_noise
from .tolerances import tolerances


# -- a full Jacobian (the exact path) --------------------------------------------------------
_EXACT_DTYPES = (torch.float32, torch.float64)  # the rule computes in these themselves

# PyTorch's own backward nodes whose batching rules under ``vmap`` over ``autograd.grad``
# are right: each is a pointwise formula, a broadcast reduced by ``sum_to_size``, a matrix
# product or a view, batched by functorch's core rules (no fallback, no ``as_strided``
# scatter, no per-op kernel like ``_cdist_backward``'s). Every one is checked against plain
# passes, in float32 and float64, by tests/core/test_trusted_batching_s37D9.py, which also
# fails if one is added here without a graph of its own there. A graph every node of which is
# one of these gets no batching probe: its vectorised Jacobian is the plain passes' own.
TRUSTED_BATCHING = frozenset({
    "AccumulateGrad",
    "TanhBackward0", "SigmoidBackward0", "ReluBackward0", "ExpBackward0", "LogBackward0",
    "SinBackward0", "CosBackward0", "NegBackward0", "PowBackward0",
    "AddBackward0", "SubBackward0", "RsubBackward1", "MulBackward0", "DivBackward0",
    "MvBackward0", "MmBackward0", "AddmmBackward0", "TBackward0", "ViewBackward0",
    "UnsqueezeBackward0",
})
_PLAIN = (torch.Tensor, torch.nn.Parameter)


def batching_trusted(kinds, output: torch.Tensor, inputs) -> bool:
    """Whether a vectorised backward of ``output``'s graph needs no batching probe: ``kinds``
    (the classes of every node of the graph, :attr:`.axisflow.GraphProof.kinds`) is not
    empty and each is PyTorch's own (a class of torch's C++ autograd, not a custom
    ``autograd.Function``'s) in :data:`TRUSTED_BATCHING`; the output and ``inputs`` are plain
    dense float32 or float64 tensors (no ``__torch_function__`` subclass, whose operations
    ``vmap`` would run through its own code)."""
    if not kinds or output.dtype not in _EXACT_DTYPES or output.layout != torch.strided:
        return False
    for tensor in (output, *inputs):
        if type(tensor) not in _PLAIN or tensor.dtype != output.dtype \
                or tensor.layout != torch.strided:
            return False
    custom = torch.autograd.function.BackwardCFunction
    return all(kind.__module__ == "builtins" and kind.__name__ in TRUSTED_BATCHING
               and not issubclass(kind, custom) for kind in kinds)


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
    ``flat`` for its notes).

    The bound's |v|ᵀ|flat| (a pass over |flat|, made whole) is formed only for the entries
    that fail half of it at |vᵀflat| first (:func:`_within_half`): |vᵀflat| ≤ |v|ᵀ|flat|,
    so an entry within half the rule's bound there is within the bound itself (the half
    covers the products' rounding, n·eps ≪ ½), and the verdict is the same entry by entry;
    most entries pass so, and the rest are judged by the rule's own bound."""
    dtype = flat.dtype
    if dtype in _EXACT_DTYPES and vector.dtype == dtype == vjp.dtype and flat.numel():
        m = vector.numel()
        d, v = flat.reshape(m, -1), vector.reshape(1, m)
        expected = torch.mm(v, d)
        error = torch.sub(vjp.reshape(expected.shape), expected).abs_()
        probe = tolerances(dtype).probe
        left = _within_half(error, expected, probe)
        if left is None or bool(error.index_select(1, left).lt_(torch.addmm(
                _tiny(dtype, d.device), v.abs(), d.index_select(1, left).abs_(),
                alpha=probe)).all()):  # tol·|v|ᵀ|D| + tiny, where half of it at |vᵀD| failed
            return True, bool(expected.any())
    return probe_agrees(flat, vector, vjp, (), nonfinite_agree=True), False


def _within_half(error: torch.Tensor, expected: torch.Tensor, probe: float):
    """The positions (of the one row of ``error``, |vᵀJ − vᵀflat|) not within half the rule's
    bound at |vᵀflat|, ``probe``/2 · |vᵀflat| (a NaN: not within); None where every one is."""
    within = error.lt(expected.abs().mul_(probe / 2))
    if bool(within.all()):
        return None
    return within.logical_not_().reshape(-1).nonzero().reshape(-1)


_TINY: dict = {}  # (dtype, device) → the dtype's smallest normal number, a 0-d tensor


def _tiny(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    tiny = _TINY.get((dtype, device))
    if tiny is None:
        tiny = _TINY[(dtype, device)] = torch.tensor(torch.finfo(dtype).tiny, dtype=dtype,
                                                     device=device)
    return tiny


def within_noise(output, named: dict, vector: torch.Tensor, vjps: dict, judged: dict) -> set:
    """The names of ``judged`` (name → (derivatives, pairing) that failed the batching probe
    ``vector``, ``vjps[name]`` its plain vᵀJ) whose every entry is within the rule's bound
    plus :func:`.rounding.rounding_noise` (two plain passes for all of them) times
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


# -- every other vectorised batch -----------------------------------------------------------
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
    expected, scale = _combined(stacked.reshape(w.numel(), -1), w, wide)
    got = plain.to(device=expected.device, dtype=wide).reshape(-1)
    both = ~torch.isfinite(got) & ~torch.isfinite(expected)
    rule = tolerances(stacked.dtype)
    floor = rule.probe * float(scale.nan_to_num(0.0, 0.0, 0.0).amax()) if scale.numel() else 0.0
    bound = scale.mul_(rule.backward).add_(floor + torch.finfo(torch.float64).tiny)
    near = (got - expected).abs() <= bound  # (False where one side alone is not finite)
    near &= torch.isfinite(got) & torch.isfinite(expected)
    return bool((near | both).all())


_WIDE_BLOCK = 2**18  # entries of G widened at a time: no float64 copy of a whole batch


def _combined(g: torch.Tensor, w: torch.Tensor, wide: torch.dtype):
    """(wᵀG, |w|ᵀ|G|) in ``wide``, G (count × n) widened a block of columns at a time."""
    count, n = g.shape
    ww = w.to(device=g.device, dtype=wide).reshape(1, count)
    magnitudes = ww.abs()
    expected = torch.empty(n, dtype=wide, device=g.device)
    scale = torch.empty(n, dtype=magnitudes.dtype, device=g.device)
    step = max(1, _WIDE_BLOCK // max(count, 1))
    for start in range(0, n, step):
        block = g[:, start:start + step].to(wide)
        expected[start:start + step] = (ww @ block).reshape(-1)
        scale[start:start + step] = (magnitudes @ block.abs()).reshape(-1)
    return expected, scale


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
