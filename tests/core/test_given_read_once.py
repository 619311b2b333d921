"""Probe 0 for a large given Jacobian without magnitudes (``core/given.py``: ``read_once``):
vᵀD and |v|ᵀ|D| block by block, D read from memory once, |D| never made whole. Expected
values from the mathematics (``v @ d`` and ``v.abs() @ d.abs()``) and from
``torch.func.vmap(grad(...))``."""
from __future__ import annotations

import pytest
from per_sample_reference import vmap_grad
import torch
import torch.nn.functional as F

from vjp_magic.core import analysis
from vjp_magic.core import given as given_jacobians
from vjp_magic.core.given import READ_BLOCK, read_once
from vjp_magic.core.probes import Probes
from vjp_magic.run import persample
from vjp_magic.run.expanded import FACTORED_POSITIONS
from vjp_magic.run.record import recording


@pytest.mark.parametrize("shape", [(64, 3 * READ_BLOCK // 64 + 5), (7, READ_BLOCK * 2 + 1),
                                   (5000, 100), (3, 10)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_blocks_give_the_whole_products(shape, dtype):
    torch.manual_seed(shape[0])
    d = torch.randn(shape, dtype=dtype)
    d[1, 2] = -7.0  # signs matter to |D| only
    v = torch.randn(1, shape[0], dtype=dtype)
    found, scale = read_once(v, v.abs(), d)
    exact = v.double() @ d.double()  # the sums in float64; the rounding bound m·eps·|v|ᵀ|D|
    sizes = v.double().abs() @ d.double().abs()
    bound = shape[0] * torch.finfo(dtype).eps * sizes
    assert found.dtype == scale.dtype == dtype and found.shape == scale.shape == (1, shape[1])
    assert bool(((found.double() - exact).abs() <= bound).all())
    assert bool(((scale.double() - sizes).abs() <= bound).all())


class Tokens(torch.nn.Module):
    """A wide Linear over more positions than are factored: judged by |v|ᵀ|D| itself."""

    def __init__(self):
        super().__init__()
        self.inner = torch.nn.Linear(64, 128)
        self.head = torch.nn.Linear(128, 3)

    def forward(self, x):
        return self.head(torch.tanh(self.inner(x)).mean(1))


def _case(seed: int):
    torch.manual_seed(seed)
    model = Tokens()
    x = torch.randn(48, FACTORED_POSITIONS + 2, 64)
    targets = torch.randint(0, 3, (48,))
    with recording() as record:
        losses = F.cross_entropy(model(x), targets, reduction="none")
    params = dict(model.named_parameters())
    return model, x, targets, losses, params, persample.per_sample_given(record, params, losses)


def test_a_large_jacobian_is_accepted_and_a_wrong_entry_refused():
    model, x, targets, losses, params, given = _case(0)
    name = "inner.weight"
    assert given[name].weighted_magnitudes is None and given[name].magnitudes is None
    assert given[name].jacobian.numel() > 2 * READ_BLOCK  # judged block by block
    j, m, s = given_jacobians.split(given)
    assert given_jacobians.at_once(Probes(losses, params, 0), j, m) == set(params)
    r = analysis.differentiate(losses, params, given=given, seed=0)
    for key, value in vmap_grad(model, x, targets).items():
        torch.testing.assert_close(r.derivatives[key], value, rtol=1e-4, atol=1e-5)
    wrong = given[name].jacobian.clone()
    wrong[47, 127, 63] += 0.02 * float(wrong[:, 127, 63].abs().sum()) + 1e-3  # last block
    j, m, s = given_jacobians.split({**given, name: given[name]._replace(jacobian=wrong)})
    assert given_jacobians.at_once(Probes(losses, params, 0), j, m) == set()
    assert name not in given_jacobians.agreed(Probes(losses, params, 0), j, m, s)
