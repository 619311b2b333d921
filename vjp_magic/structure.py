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

Pairing = tuple[tuple[int, int], ...]

MAX_PAIRINGS = 8


def _size_one_pairs(out_shape: Sequence[int], in_shape: Sequence[int]) -> Pairing:
    """Size-1 output axes paired in order with size-1 input axes (always valid)."""
    out_ones = [a for a, n in enumerate(out_shape) if n == 1]
    in_ones = [b for b, n in enumerate(in_shape) if n == 1]
    return tuple(zip(out_ones, in_ones))


def candidate_pairings(
    out_shape: Sequence[int], in_shape: Sequence[int], limit: int = MAX_PAIRINGS
) -> list[Pairing]:
    """Pairings to try, most point axes first; the empty pairing (full Jacobian) comes last.

    Among pairings of equal size, order-preserving ones and ones that keep axes aligned
    (batch axes usually lead) come first. At most ``limit`` non-empty pairings.
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
        proposals.extend(same_size)
        if len(proposals) >= limit:
            break
    proposals = [tuple(sorted(p + ones)) for p in proposals[:limit]]
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


def probe_vector(output: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """A random zero-mean probe shaped like the output (seeded: results are reproducible)."""
    if generator is None:
        generator = torch.Generator(device="cpu").manual_seed(20240229)
    v = torch.randn(output.shape, generator=generator, dtype=torch.float64)
    return v.to(dtype=output.dtype, device=output.device)


def predicted_probe(
    derivatives: torch.Tensor, probe: torch.Tensor, pairing: Pairing
) -> tuple[torch.Tensor, torch.Tensor]:
    """vᵀD for the block-diagonal Jacobian that ``derivatives`` stand for under ``pairing``.

    ``derivatives`` has shape ``component_shape + input_shape``. Returns the prediction and
    the scale (sum of absolute terms) used for the tolerance, both shaped like the input.
    """
    point_out = [a for a, _ in pairing]
    k = probe.dim() - len(point_out)
    in_shape = derivatives.shape[k:]
    by_input_axis = sorted(pairing, key=lambda ab: ab[1])
    order = [a for a in range(probe.dim()) if a not in point_out] + [a for a, _ in by_input_axis]
    paired_inputs = {b for _, b in pairing}
    v = probe.permute(order).reshape(
        tuple(probe.shape[a] for a in order[:k])
        + tuple(n if b in paired_inputs else 1 for b, n in enumerate(in_shape))
    )
    dims = tuple(range(k))
    terms = v * derivatives
    scale = (v.abs() * derivatives.abs()).sum(dim=dims) if k else (v * derivatives).abs()
    return (terms.sum(dim=dims) if k else terms), scale


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
    """True when vᵀJ (from autograd) equals vᵀD, i.e. the Jacobian has the pairing's structure."""
    if derivatives.numel() == 0:
        return True
    expected, scale = predicted_probe(derivatives.double(), probe.double(), pairing)
    actual = probe_vjp.double()
    rtol = tolerance(derivatives.dtype)
    finite_scale = scale[torch.isfinite(scale)]
    floor = 0.1 * float(finite_scale.max()) if finite_scale.numel() else 0.0
    close = (actual - expected).abs() <= rtol * (scale + floor) + 1e-300
    same = (actual == expected) | (actual.isnan() & expected.isnan())
    return bool((close | same).all())
