"""Measured rounding noise: how far a product linear in v moves when v is scaled by a
non-dyadic factor c and the result divided by c again. The products round in other places
than v's, while anything the product owes to v (a coupling a sparse matrix lacks, an
asymmetric H read as symmetric) scales back exactly: it never shows as noise. One owner
for the sparse checks (:mod:`.sparse_check`, :mod:`.sparse_hessian`) and the batching
check (:mod:`.checked_batches`)."""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from .derivatives import plain_vjp
from .tolerances import NOISE_MULTIPLE

# Not dyadic: c·v rounds in other places than v (v holds powers of two).
NOISE_FACTORS = (1.3125 + 1 / 3, 0.7 + 1 / 7)


def measured_noise(products: Callable[[float], Sequence[torch.Tensor]],
                   observed: Sequence[torch.Tensor], dtype: torch.dtype) -> list:
    """:data:`.tolerances.NOISE_MULTIPLE` times max over c of :data:`NOISE_FACTORS` of
    |products(c)[k] / c - observed[k]|, entry by entry: ``products(c)`` recomputes each of
    ``observed`` with v times c (c rounded to v's ``dtype`` first, so c·v is exact: v's
    are powers of two), as new tensors shaped like them (they are divided in place)."""
    noise = [torch.zeros_like(o) for o in observed]
    for factor in NOISE_FACTORS:
        factor = torch.tensor(factor, dtype=dtype).item()
        again = products(factor)
        noise = [torch.maximum(z, a.div_(factor).sub_(o).abs_())
                 for z, a, o in zip(noise, again, observed)]
    return [z.mul_(NOISE_MULTIPLE) for z in noise]


def rounding_noise(output, inputs, v: torch.Tensor, observed) -> list:
    """:func:`measured_noise` of each input's vᵀJ (``observed``, from a plain pass of ``v``
    shaped like ``output``): (c·v)ᵀJ from one plain pass for all ``inputs``."""
    return measured_noise(
        lambda c: [a.detach().reshape(o.shape)
                   for a, o in zip(plain_vjp(output, inputs, v * c), observed)],
        observed, v.dtype)
