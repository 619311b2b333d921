"""Every dtype tolerance the package uses, in one table, with the purpose of each.

Three comparisons need a relative tolerance, and each has its own reason for its size:

- ``probe``: the probe rule (:func:`vjp_magic.core.structure.probe_mismatch`). One entry of
  vᵀJ from autograd is compared with vᵀD, relative to the magnitudes |v_i||J_ij| that sum
  into it. It only has to absorb autograd's own rounding: a few dozen eps (more for the half
  types, whose products are rounded at every step). Any coupling between points larger than
  this, relative to the entries it adds to, is seen.
- ``backward``: a user's own ``y.backward(...)`` result (``x.grad``) compared with the
  package's derivatives (the coaching of summed gradients). Both were computed by autograd
  but possibly along different paths (sums in another order): a little looser than the probe.
- ``symbolic``: SymPy's formula, evaluated in float64, compared with autograd's numbers in
  the input's dtype. The autograd side carries the dtype's rounding through every op of the
  cell, so this is the loosest.

A dtype not in the table (none of the floating types torch has today) uses float32's row.
"""
from __future__ import annotations

from typing import NamedTuple

import torch


class Tolerances(NamedTuple):
    """Relative tolerances for one dtype (see the module docstring for each purpose)."""

    probe: float
    backward: float
    symbolic: float


def _eps(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).eps


TOLERANCES: dict[torch.dtype, Tolerances] = {
    torch.float64: Tolerances(probe=256 * _eps(torch.float64), backward=1e-9, symbolic=1e-7),
    torch.float32: Tolerances(probe=64 * _eps(torch.float32), backward=1e-5, symbolic=1e-4),
    torch.float16: Tolerances(probe=16 * _eps(torch.float16), backward=2e-3, symbolic=1e-2),
    torch.bfloat16: Tolerances(probe=16 * _eps(torch.bfloat16), backward=2e-2, symbolic=5e-2),
}
# probe values: float64 5.7e-14, float32 7.6e-6, float16 1.6e-2, bfloat16 1.3e-1


# A proved pattern's probe that fails the probe tolerance is judged again per entry against
# this many times the rounding noise of its vᵀJ, measured (:mod:`.sparse_check`).
NOISE_MULTIPLE = 16


def tolerances(dtype: torch.dtype) -> Tolerances:
    """The row of :data:`TOLERANCES` for ``dtype`` (float32's for any other dtype)."""
    return TOLERANCES.get(dtype, TOLERANCES[torch.float32])
