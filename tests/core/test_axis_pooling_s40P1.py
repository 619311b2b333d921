"""The pooling axis rule (core/axisrules/reductions.pooling): max and average pooling, adaptive
or not, 1-, 2- and 3-d, batched or not, keep the leading (batch, channel) carries and claim
nothing of the pooled axes. Checked against the float64 Jacobian: every claimed carry holds
(zero wherever the paired indices differ), and each leading axis is claimed."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vjp_magic.core import axisflow

POOLS = {
    "max_pool1d": (1, lambda x: F.max_pool1d(x, 2)),
    "avg_pool1d": (1, lambda x: F.avg_pool1d(x, 3, stride=2, padding=1)),
    "max_pool2d": (2, lambda x: F.max_pool2d(x, 2)),
    "avg_pool2d": (2, lambda x: F.avg_pool2d(x, 2, stride=1)),
    "adaptive_max_pool2d": (2, lambda x: F.adaptive_max_pool2d(x, 3)),
    "adaptive_avg_pool2d": (2, lambda x: F.adaptive_avg_pool2d(x, 3)),
    "max_pool3d": (3, lambda x: F.max_pool3d(x, 2)),
    "avg_pool3d": (3, lambda x: F.avg_pool3d(x, 2)),
    "adaptive_max_pool3d": (3, lambda x: F.adaptive_max_pool3d(x, 2)),
    "adaptive_avg_pool3d": (3, lambda x: F.adaptive_avg_pool3d(x, 2)),
}


def _holds(jacobian: torch.Tensor, out_axis: int, in_axis: int, out_dims: int) -> bool:
    """Whether the Jacobian (out shape + in shape) is 0 wherever the output's index along
    ``out_axis`` differs from the input's along ``in_axis``."""
    moved = jacobian.movedim((out_axis, out_dims + in_axis), (0, 1))
    off = ~torch.eye(moved.shape[0], moved.shape[1], dtype=torch.bool)
    return bool((moved[off] == 0).all())


@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("name", sorted(POOLS))
def test_pooling_keeps_the_leading_carries_and_they_hold(name, batched):
    dims, pool = POOLS[name]
    shape = (3, 2) + (6,) * dims if batched else (3,) + (6,) * dims
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, dtype=torch.float64, generator=g, requires_grad=True)
    y = torch.tanh(pool(x))
    proof = axisflow.prove(y, x)
    lead = len(shape) - dims
    assert all(proof.carries.get(a) == (a,) for a in range(lead)), proof.carries
    jacobian = torch.autograd.functional.jacobian(lambda t: torch.tanh(pool(t)), x.detach())
    for out_axis, carry in proof.carries.items():
        assert len(carry) == 1 and _holds(jacobian, out_axis, carry[0], y.dim())
    assert not proof.exact  # the windows are not modelled
