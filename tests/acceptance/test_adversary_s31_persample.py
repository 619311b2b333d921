"""Adversarial review, session 31 (issue 23, item 4): per-sample gradients where the per-layer
rules (Linear, Conv, LayerNorm: Opacus / BackPACK style) could take a layer's row b for
sample b's: the batch permuted, rolled or pair-swapped after a layer, a layer applied to a
shared input (a constant row, the batch's first row) besides the batch, a 3-d input, a
non-contiguous (transposed twice) batch, a LayerNorm without affine; and BatchNorm in eval mode
without running statistics (it still uses the batch's statistics: it mixes samples).

Expected values: a loop of ``torch.autograd.grad`` over each sample's loss. All of this held
in this review: these tests guard it.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import vjp_magic

B = 8
PERMUTATION = torch.tensor([3, 1, 2, 0, 7, 5, 6, 4])


class Model(nn.Module):
    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind
        self.l1, self.l2 = nn.Linear(4, 6), nn.Linear(6, 3)
        self.conv = nn.Conv1d(2, 3, 3, padding=1)
        self.ln, self.ln0 = nn.LayerNorm(6), nn.LayerNorm(6, elementwise_affine=False)
        self.bn = nn.BatchNorm1d(6, track_running_stats=False)

    def forward(self, x):
        h = torch.tanh(self.l1(x))
        kind = self.kind
        if kind == "flipped after a layer":
            return self.l2(h.flip(0))
        if kind == "rolled after the last layer":
            return self.l2(h).roll(1, 0)
        if kind == "permuted by an index":
            return self.l2(h[PERMUTATION])
        if kind == "pairs swapped":
            return self.l2(h.reshape(B // 2, 2, 6).flip(1).reshape(B, 6))
        if kind == "a layer on a shared constant row":
            return self.l2(h + self.l1(torch.ones(1, 4)).expand(B, 6))
        if kind == "a layer on the batch's first row":
            return self.l2(h + self.l1(x[:1]))
        if kind == "3-d input":
            steps = torch.arange(1., 6.)[None, :, None]
            return self.l2(torch.tanh(self.l1(x.unsqueeze(1).expand(B, 5, 4) * steps)).mean(1))
        if kind == "a batch transposed twice":
            return self.l2(torch.tanh(self.l1(x.t().contiguous().t())))
        if kind == "a convolution, then flipped":
            return self.l2(self.conv(x.reshape(B, 2, 2)).flatten(1).reshape(B, 6).flip(0))
        if kind == "LayerNorm, then flipped":
            return self.l2(self.ln(self.l1(x)).flip(0))
        if kind == "LayerNorm without affine":
            return self.l2(self.ln0(self.l1(x)))
        if kind == "BatchNorm in eval mode without running statistics":
            return self.l2(self.bn(self.l1(x)))
        raise ValueError(kind)


KINDS = ["flipped after a layer", "rolled after the last layer", "permuted by an index",
         "pairs swapped", "a layer on a shared constant row", "a layer on the batch's first row",
         "3-d input", "a batch transposed twice", "a convolution, then flipped",
         "LayerNorm, then flipped", "LayerNorm without affine",
         "BatchNorm in eval mode without running statistics"]


@pytest.mark.parametrize("kind", KINDS)
def test_per_sample_gradients_equal_a_loop(kind):
    torch.manual_seed(0)
    model = Model(kind).eval() if "eval" in kind else Model(kind)
    x, t = torch.randn(B, 4), torch.randint(0, 3, (B,))

    def fn():
        return F.cross_entropy(model(x), t, reduction="none")
    losses = fn()
    params = dict(model.named_parameters())
    rows = [torch.autograd.grad(losses[b], list(params.values()), retain_graph=True,
                                allow_unused=True, materialize_grads=True) for b in range(B)]
    r = vjp_magic.differentiate(fn, model, names="m", seed=0)
    for i, name in enumerate(params):
        expected = torch.stack([row[i] for row in rows])
        torch.testing.assert_close(r.jacobian(f"m.{name}").reshape(expected.shape), expected,
                                   rtol=1e-4, atol=1e-5, msg=name)
    assert all(p.grad is None for p in model.parameters())
