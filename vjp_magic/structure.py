"""Stage 3 — structure inference: which output axes are "points" for which input axes.

Shapes propose pairings; one random probe vᵀJ on the autograd graph decides.
A pairing ``((a, b), ...)`` says output axis ``a`` and input axis ``b`` index the same
points, i.e. the Jacobian is zero unless ``y_index[a] == x_index[b]``.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch

from .tagging import walk_graph

Pairing = tuple[tuple[int, int], ...]

PER_SIZE = 3  # candidate pairings tried per number of point axes (probe path)


def _size_one_pairs(out_shape: Sequence[int], in_shape: Sequence[int]) -> Pairing:
    """Size-1 output axes paired in order with size-1 input axes (always valid)."""
    out_ones = [a for a, n in enumerate(out_shape) if n == 1]
    in_ones = [b for b, n in enumerate(in_shape) if n == 1]
    return tuple(zip(out_ones, in_ones))


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
                    same_size.append(tuple(zip(outs, ins)))
        same_size.sort(key=_preference)
        proposals.extend(same_size if per_size is None else same_size[:per_size])
    proposals = [tuple(sorted(p + ones)) for p in proposals]
    proposals.append(ones)
    # The size-1 pairing alone is always valid, so nothing after it is needed.
    return list(dict.fromkeys(proposals))


def _preference(pairing: Pairing) -> tuple[int, int]:
    ins = [b for _, b in pairing]
    monotone = all(x < y for x, y in zip(ins, ins[1:]))
    offset = sum(abs(a - b) for a, b in pairing)
    return (0 if monotone else 1, offset)


def component_shape(out_shape: Sequence[int], pairing: Pairing) -> tuple[int, ...]:
    """Shape of the non-point output axes: one gradient argument per entry."""
    point_axes = {a for a, _ in pairing}
    return tuple(n for a, n in enumerate(out_shape) if a not in point_axes)


def component_count(out_shape: Sequence[int], pairing: Pairing) -> int:
    return math.prod(component_shape(out_shape, pairing))


_PROBE_SEED = 20240229
_probe_cache: dict[tuple[torch.dtype, str], torch.Tensor] = {}


def probe_vector(output: torch.Tensor) -> torch.Tensor:
    """A random zero-mean probe shaped like the output.

    The draw is seeded, so it is a fixed function of the output's size: the first
    ``numel`` entries of one cached standard-normal sequence per dtype and device (a prefix
    of an i.i.d. sequence is i.i.d.), so repeated analyses do not pay for the draw again.
    """
    key = (output.dtype, str(output.device))
    cached = _probe_cache.get(key)
    numel = output.numel()
    if cached is None or cached.numel() < numel:
        generator = torch.Generator(device="cpu").manual_seed(_PROBE_SEED)
        size = max(numel, 1024)
        fresh = torch.randn(size, generator=generator, dtype=torch.float32)
        cached = fresh.to(dtype=output.dtype, device=output.device)
        _probe_cache.clear() if sum(t.numel() for t in _probe_cache.values()) > 2**26 else None
        _probe_cache[key] = cached
    return cached[:numel].view(output.shape)


def predicted_probe(derivatives: torch.Tensor, probe: torch.Tensor, pairing: Pairing) -> torch.Tensor:
    """vᵀD for the block-diagonal Jacobian that ``derivatives`` stand for under ``pairing``.

    ``derivatives`` has shape ``component_shape + input_shape``; the result is shaped like
    the input: at each input entry, the probe's components at that entry's point times the
    derivatives there, summed over components.
    """
    point_out = [a for a, _ in pairing]
    k = probe.dim() - len(point_out)
    in_shape = derivatives.shape[k:]
    by_input_axis = sorted(pairing, key=lambda ab: ab[1])
    order = [a for a in range(probe.dim()) if a not in point_out] + [a for a, _ in by_input_axis]
    paired_inputs = {b for _, b in pairing}
    count = math.prod(probe.shape[a] for a in order[:k])
    v = probe.permute(order).reshape(
        (count,) + tuple(n if b in paired_inputs else 1 for b, n in enumerate(in_shape))
    )
    d = derivatives.reshape((count,) + tuple(in_shape))
    if count > 64:
        return (v * d).sum(dim=0)
    expected = d[0] * v[0]
    for r in range(1, count):
        expected.addcmul_(d[r], v[r])
    return expected


def tolerance(dtype: torch.dtype) -> float:
    """Relative tolerance of the probe comparison: about sqrt(eps) of the dtype."""
    return {
        torch.float64: 1e-7,
        torch.float32: 2e-4,
        torch.float16: 2e-2,
        torch.bfloat16: 6e-2,
    }.get(dtype, 2e-4)


def probe_agrees(
    derivatives: torch.Tensor, probe: torch.Tensor, probe_vjp: torch.Tensor, pairing: Pairing
) -> bool:
    """True when vᵀJ (from autograd) equals vᵀD, i.e. the Jacobian has the pairing's structure.

    Entries are compared one by one, each within about sqrt(eps) of the dtype relative to
    itself, plus a floor of 10% of that relative to the largest entry (for rounding where
    terms cancel: still ~100× the rounding error of float32). Any cross-point dependence
    changes vᵀJ by about v times the error it would cause in D, so it shows at once.
    Non-finite entries must match exactly.
    """
    if derivatives.numel() == 0:
        return True
    eps = torch.finfo(derivatives.dtype).eps
    compute = torch.float32 if derivatives.dtype in (torch.float16, torch.bfloat16) else None
    if compute is not None:
        derivatives, probe, probe_vjp = (t.to(compute) for t in (derivatives, probe, probe_vjp))
    expected = predicted_probe(derivatives, probe, pairing)
    rtol = tolerance(derivatives.dtype if compute is None else torch.float16)
    scale = probe_vjp.abs()
    # the floor is at most ~1000 eps of the largest entry (float32's 0.1 rtol is ~170 eps):
    # for float64, 0.1 rtol (1e-8) would hide real cross-point terms (found by the fuzz)
    floor = min(0.1 * rtol, 1e3 * eps) * _finite_max(scale) + 1e-30
    # |vᵀJ - vᵀD| - (rtol |vᵀJ| + floor) <= 0 everywhere, in place after the first pass
    excess = torch.sub(probe_vjp, expected).abs_().sub_(scale.mul_(rtol)).sub_(floor)
    if bool(excess.max() <= 0):
        return True
    close = excess <= 0
    # Where a derivative is infinite or NaN (sqrt at 0; 0·∞ in one-hot products), the
    # entries cannot be compared: both non-finite counts as agreement.
    same = (probe_vjp == expected) | (~torch.isfinite(probe_vjp) & ~torch.isfinite(expected))
    return bool((close | same).all())


def _finite_max(values: torch.Tensor) -> float:
    largest = float(values.max())
    if math.isfinite(largest):
        return largest
    finite = values[torch.isfinite(values)]
    return float(finite.max()) if finite.numel() else 0.0


_eyes: dict[tuple[int, str], torch.Tensor] = {}


def _eye(size: int, device: torch.device) -> torch.Tensor:
    key = (size, str(device))
    if key not in _eyes:
        if len(_eyes) > 64:
            _eyes.clear()
        _eyes[key] = torch.eye(size, dtype=torch.bool, device=device)
    return _eyes[key]


def _pair_mask(out_shape, in_shape, pairing: Pairing, device) -> torch.Tensor | bool:
    """Boolean mask over ``out_shape + in_shape``: True where every paired index agrees."""
    mask: torch.Tensor | bool = True
    ndim = len(out_shape) + len(in_shape)
    for a, b in pairing:
        size = out_shape[a]
        shape = [1] * ndim
        shape[a] = size
        shape[len(out_shape) + b] = size
        eye = _eye(size, device).reshape(shape)
        mask = eye if mask is True else mask & eye
    return mask


def supported_on(jacobian: torch.Tensor, out_ndim: int, pairing: Pairing) -> bool:
    """True when the Jacobian is zero wherever the pairing's indices disagree (NaN from 0·∞
    in one-hot products counts as zero)."""
    if not any(jacobian.shape[a] > 1 for a, _ in pairing):
        return True
    out_shape, in_shape = jacobian.shape[:out_ndim], jacobian.shape[out_ndim:]
    mask = _pair_mask(out_shape, in_shape, pairing, jacobian.device)
    return not bool(jacobian.masked_fill(mask, 0).nan_to_num_(nan=0.0).any())


def gather_derivatives(jacobian: torch.Tensor, out_ndim: int, pairing: Pairing) -> torch.Tensor:
    """The derivatives (component shape + input shape) read off the pairing's support."""
    if not pairing:
        return jacobian
    out_shape, in_shape = jacobian.shape[:out_ndim], jacobian.shape[out_ndim:]
    comp_axes = [a for a in range(out_ndim) if a not in {p for p, _ in pairing}]
    result_ndim = len(comp_axes) + len(in_shape)

    def axis_range(size: int, position: int) -> torch.Tensor:
        shape = [1] * result_ndim
        shape[position] = size
        return torch.arange(size, device=jacobian.device).reshape(shape)

    paired = dict(pairing)
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


# Backward nodes of elementwise operations: output entry i depends on input entries i only
# (broadcasting can only enlarge shapes, so along a path of these from x to an output of
# x's own shape, every tensor that depends on x has x's shape).
POINTWISE_NODES = frozenset(
    name + suffix
    for name in (
        "Add Sub Rsub Mul Div Neg Pow Abs Sign Sin Cos Tan Asin Acos Atan Atan2 Sinh Cosh Tanh "
        "Asinh Acosh Atanh Exp Exp2 Expm1 Log Log1P Log2 Log10 Sqrt Rsqrt Reciprocal Sigmoid "
        "Logit Erf Erfc Erfinv Relu Elu Gelu Silu Mish Softplus LeakyRelu Hardtanh Hardsigmoid "
        "Hardswish Clamp ClampMin ClampMax Where Maximum Minimum Fmax Fmin Hypot Lerp Addcmul "
        "Addcdiv Floor Ceil Round Trunc Frac Sinc Copysign Clone ToCopy Xlogy"
    ).split()
    for suffix in ("Backward0", "Backward1", "Backward2")
) | {"AccumulateGrad"}


def provably_elementwise(output: torch.Tensor, tensor: torch.Tensor) -> bool:
    """True when the autograd graph itself proves ``output`` elementwise in ``tensor``.

    Every node reachable from the output must be an elementwise backward node (and the
    shapes equal); then no probe is needed. Anything else returns False and the random
    probe decides.
    """
    if tuple(output.shape) != tuple(tensor.shape) or output.grad_fn is None:
        return False
    return all(type(node).__name__ in POINTWISE_NODES for node in walk_graph(output))


def identity_pairing(ndim: int) -> Pairing:
    return tuple((a, a) for a in range(ndim))
