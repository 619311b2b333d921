"""A batch of one keeps the shapes of every other batch size (s34 U8, G10's s33 finding).

A size-1 output axis pairs with a size-1 input axis only where the graph carries one to the
other, as the same cell at B = 2 pairs them: the batch axis of per-sample losses is never a
points axis of a parameter whose own axis happens to be 1 (out_features = 1, out_channels =
1, a bias of one entry). Where nothing is known (no graph proof), any size-1 pair still holds
(a 1 × 1 block), so the numbers are right at every B; these tests fix the shapes.

Expected shapes: (B,) + p.shape for a parameter under per-sample losses (the rows of the
Jacobian, one per sample), the input's own shape for an elementwise map (points); the numbers
from torch.autograd.grad per sample.
"""
from __future__ import annotations

import pytest
import torch

import vjp_magic

nn = torch.nn


def _per_sample(losses_of, params: dict, batch: int) -> dict:
    """d losses[b] / d p for every b, stacked: the (B,) + p.shape truth."""
    out = {}
    losses = losses_of()
    for name, p in params.items():
        rows = [torch.autograd.grad(losses[b], p, retain_graph=True)[0] for b in range(batch)]
        out[name] = torch.stack(rows)
    return out


MODELS = {
    "linear out 1": lambda: nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)),
    "linear 1 in 1 out": lambda: nn.Sequential(nn.Linear(1, 1)),
    "conv out_channels 1": lambda: nn.Sequential(nn.Conv2d(2, 1, 3), nn.Flatten(),
                                                 nn.Linear(4, 1)),
}
INPUTS = {"linear out 1": (3,), "linear 1 in 1 out": (1,), "conv out_channels 1": (2, 4, 4)}


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("kind", list(MODELS))
def test_per_sample_losses_keep_their_batch_axis_at_every_size(kind, batch):
    torch.manual_seed(0)
    model = MODELS[kind]()
    xb = torch.randn(batch, *INPUTS[kind])
    params = dict(model.named_parameters())
    r = vjp_magic.differentiate(model(xb).squeeze(1) ** 2, params, seed=0)
    truth = _per_sample(lambda: model(xb).squeeze(1) ** 2, params, batch)
    for name, p in params.items():
        assert tuple(r.derivatives[name].shape) == (batch, *p.shape), name
        torch.testing.assert_close(r.derivatives[name], truth[name])


@pytest.mark.parametrize("batch", [1, 2])
def test_a_bias_of_one_entry_beside_a_batch_of_one(batch):
    torch.manual_seed(0)
    w = torch.randn(3, 1, requires_grad=True)
    b = torch.randn(1, requires_grad=True)
    xb = torch.randn(batch, 3)
    r = vjp_magic.differentiate(((xb @ w + b).squeeze(1)) ** 2, {"w": w, "b": b}, seed=0)
    assert tuple(r.derivatives["b"].shape) == (batch, 1)
    assert tuple(r.derivatives["w"].shape) == (batch, 3, 1)
    truth = _per_sample(lambda: ((xb @ w + b).squeeze(1)) ** 2, {"w": w, "b": b}, batch)
    torch.testing.assert_close(r.derivatives["b"], truth["b"])


POINTS = {  # a cell, and the shape of its x past the batch axis
    "elementwise": (lambda x: x ** 2, ()),  # points at every size
    "squeeze": (lambda x: (x * 2).squeeze(1), (1,)),  # (B, 1) -> (B,): a view keeps the batch
    "unsqueeze-sum": (lambda x: x.unsqueeze(0).sum(0) * 3, (1,)),
    "row sums": (lambda x: x.sum(1), (3,)),
}


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("kind", list(POINTS))
def test_a_points_axis_of_one_is_still_a_points_axis(kind, batch):
    cell, rest = POINTS[kind]
    x = torch.linspace(-1, 1, batch * torch.Size(rest).numel()).reshape(batch, *rest)
    x.requires_grad_(True)
    r = vjp_magic.differentiate(cell(x), x, seed=0)
    # output entry b reads row b of x only: the batch axis is a points axis
    assert (0, 0) in r.point_axes["x"], r.point_axes["x"]
    assert tuple(r.derivatives["x"].shape) == tuple(x.shape)
    j = torch.autograd.functional.jacobian(cell, x.detach())
    torch.testing.assert_close(r.jacobian("x"), j)
