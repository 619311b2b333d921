"""Adversarial review, session 30 (second pass): per-sample gradients (run/expanded.py's
routing of unbatched layers) where the layer's axis 0 is not the samples': transposed and
grouped convolutions, losses along positions or rows, InstanceNorm/GroupNorm, 1-D Linear and
Bilinear, unbatched attention and LSTM. Expected: a loop of torch.autograd.grad, one per loss.
All held in this review (guards)."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import vjp_magic


def _loop(fn, model) -> dict:
    losses = fn()
    params = {k: p for k, p in model.named_parameters() if p.requires_grad}
    rows = [torch.autograd.grad(losses[b], list(params.values()), retain_graph=True,
                                allow_unused=True) for b in range(losses.shape[0])]
    return {k: torch.stack([r[i] if r[i] is not None else torch.zeros_like(p) for r in rows])
            for i, (k, p) in enumerate(params.items())}


CASES = {
    "conv_transpose_1d": (lambda: nn.ConvTranspose1d(12, 12, 3), (12, 9),
                          lambda m, x: m(x).pow(2).sum(1)),
    "grouped_conv_1d": (lambda: nn.Conv1d(12, 12, 3, groups=4), (12, 9),
                        lambda m, x: m(x).pow(2).sum(1)),
    "conv_1d_losses_by_position": (lambda: nn.Conv1d(4, 6, 3), (4, 12),
                                   lambda m, x: m(x).pow(2).sum(0)),
    "conv_2d_losses_by_row": (lambda: nn.Conv2d(3, 5, 3, padding=1), (3, 6, 6),
                              lambda m, x: m(x).pow(2).sum((0, 2))),
    "instance_norm": (lambda: nn.InstanceNorm1d(10, affine=True), (10, 7),
                      lambda m, x: (m(x) * torch.arange(7.0)).sum(1)),
    "group_norm_batch_of_one": (lambda: nn.GroupNorm(2, 8), (1, 8, 5),
                                lambda m, x: m(x)[0].pow(3).sum(1)),
    "linear_1d": (lambda: nn.Linear(5, 7), (5,), lambda m, x: m(x).pow(2)),
    "bilinear_1d": (lambda: nn.Bilinear(4, 4, 6), (4,), lambda m, x: m(x, 2 * x).pow(2)),
    "attention_unbatched": (lambda: nn.MultiheadAttention(8, 2), (6, 8),
                            lambda m, x: m(x, x, x)[0].pow(2).sum(1)),
    "lstm_unbatched": (lambda: nn.LSTM(4, 5), (7, 4), lambda m, x: m(x)[0].pow(2).sum(1)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_unbatched_layers_give_a_loops_per_sample_gradients(name):
    make, shape, losses = CASES[name]
    torch.manual_seed(0)
    layer, x = make(), torch.randn(shape)

    def fn():
        return losses(layer, x)
    expected = _loop(fn, layer)
    r = vjp_magic.differentiate(fn, layer, names="m", seed=0)
    for key, rows in expected.items():
        torch.testing.assert_close(r.jacobian(f"m.{key}").reshape(rows.shape), rows,
                                   rtol=1e-4, atol=1e-5)
    assert all(p.grad is None for p in layer.parameters())
