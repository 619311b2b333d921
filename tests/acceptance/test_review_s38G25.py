"""Adversarial review, session 38 (G25): issue 23 as a practitioner at model scale would try
it, on models, batch sizes and leak kinds the issue and the s37 review do not list.

Strict xfails are findings (their reasons say what is wrong, ``G25-n``); unmarked tests are
quick probes that held and guard it. Expected values come from ``torch.autograd.grad`` of each
sample's loss in the batch's own graph (in float64 where rounding matters), from
``torch.autograd.functional.jacobian``'s pattern, or from mathematics.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import vjp_magic
from block_models import VectorCounter, ghost_batch, packed_attention


def _batch_graph(model, x, t) -> dict:
    """name → (B, *shape): torch.autograd.grad of each sample's loss in the batch graph."""
    losses = F.cross_entropy(model(x), t, reduction="none")
    names, params = zip(*[(k, p) for k, p in model.named_parameters() if p.requires_grad])
    rows = [torch.autograd.grad(losses[b], params, retain_graph=True) for b in range(len(x))]
    return {k: torch.stack([r[i] for r in rows]) for i, k in enumerate(names)}


def _per_sample(model, x, t) -> dict:
    return vjp_magic.differentiate(
        lambda: F.cross_entropy(model(x), t, reduction="none"), model).derivatives


def _assert_per_sample(got: dict, expected: dict, **tolerance):
    assert set(got) == set(expected), (set(got), set(expected))
    for k, v in expected.items():
        torch.testing.assert_close(got[k].to(v.dtype), v, msg=k, **tolerance)


# --------------------------------------------------------------------------------------------
# G25-1: a small coupling across the batch, read by the vectorised replay as another function
# --------------------------------------------------------------------------------------------

class _Coupled(nn.Module):
    """An MLP whose hidden layer reads the batch mean, weighted by ``eps``: sample b's loss
    reads every sample (a small batch coupling, as a ghost statistic or a centring term)."""

    def __init__(self, eps):
        super().__init__()
        self.eps, self.f, self.o = eps, nn.Linear(4, 5), nn.Linear(5, 3)

    def forward(self, x):
        h = self.f(x)
        return self.o(torch.tanh(h + self.eps * h.mean(0)))


def test_a_small_batch_coupling_gives_the_batch_graphs_per_sample_gradients():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    model = _Coupled(3e-5)
    x, t = torch.randn(64, 4, generator=g), torch.randint(0, 3, (64,), generator=g)
    got = _per_sample(model, x, t)
    expected = _batch_graph(model.double(), x.double(), t)
    model.float()
    plain = _batch_graph(model, x, t)  # what float32 rounding alone costs: < 5e-7 here
    for k, v in expected.items():
        assert (plain[k].double() - v).abs().max() < 5e-7, k
    _assert_per_sample(got, expected, atol=1.5e-6, rtol=0)


@pytest.mark.parametrize("eps", [1e-2, 1e-4])
def test_a_larger_batch_coupling_is_not_taken_for_independent_samples(eps):
    """Guard for what held: couplings of 1e-4 and more give the batch graph's answer."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    model = _Coupled(eps)
    x, t = torch.randn(64, 4, generator=g), torch.randint(0, 3, (64,), generator=g)
    _assert_per_sample(_per_sample(model, x, t), _batch_graph(model, x, t),
                       atol=1e-6, rtol=1e-4)


# --------------------------------------------------------------------------------------------
# Per-sample gradients that held: batch reorderings, parameter spellings, in-place layers
# --------------------------------------------------------------------------------------------

class _Reordered(nn.Module):
    """A Linear whose rows are not the samples in order: sorted and unsorted again (as
    length-sorted sequences are), the batch reversed, or two views stacked along the batch."""

    def __init__(self, how):
        super().__init__()
        self.how, self.f, self.o = how, nn.Linear(4, 5), nn.Linear(5, 3)

    def forward(self, x):
        if self.how == "sorted":
            order = torch.argsort(x[:, 0])
            return self.o(torch.tanh(self.f(x[order])))[torch.argsort(order)]
        if self.how == "flipped":
            return self.o(torch.tanh(self.f(x.flip(0)))).flip(0)
        h = torch.tanh(self.f(torch.cat([x, 2 * x.flip(1)], 0)))
        return self.o(h[:len(x)] - h[len(x):])


class _Spelled(nn.Module):
    """One weight W (4 × 5) read as a matrix product spelled in different ways."""

    def __init__(self, how):
        super().__init__()
        self.how = how
        self.w, self.b, self.o = nn.Parameter(torch.randn(4, 5)), nn.Parameter(torch.randn(5)), \
            nn.Linear(5, 3)

    def forward(self, x):
        w, b = self.w, self.b
        h = {"W.T @ x.T": lambda: (w.T @ x.T).T + b,
             "addmm": lambda: torch.addmm(b, x, w),
             "bmm": lambda: torch.bmm(x[:, None], w.expand(len(x), 4, 5))[:, 0] + b,
             "read twice": lambda: x @ w + (x * x) @ w + b}[self.how]()
        return self.o(torch.tanh(h))


MODELS = {
    "sorted and unsorted": lambda: _Reordered("sorted"),
    "batch reversed": lambda: _Reordered("flipped"),
    "two views along the batch": lambda: _Reordered("cat"),
    "W.T @ x.T": lambda: _Spelled("W.T @ x.T"),
    "addmm": lambda: _Spelled("addmm"),
    "bmm with an expanded weight": lambda: _Spelled("bmm"),
    "one weight read twice": lambda: _Spelled("read twice"),
    "LayerNorm then ReLU(inplace=True)": lambda: nn.Sequential(
        nn.Linear(4, 6), nn.LayerNorm(6), nn.ReLU(inplace=True), nn.Linear(6, 3)),
    "a shared submodule": lambda: nn.Sequential(*[nn.Linear(4, 4), nn.Tanh()] * 2,
                                                nn.Linear(4, 3)),
}


@pytest.mark.parametrize("name", MODELS)
def test_per_sample_gradients_where_rows_are_not_samples_in_order(name):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    model = MODELS[name]()
    x, t = torch.randn(8, 4, generator=g), torch.randint(0, 3, (8,), generator=g)
    _assert_per_sample(_per_sample(model, x, t), _batch_graph(model, x, t),
                       atol=1e-6, rtol=1e-4)


def test_channels_last_conv_with_groupnorm_and_inplace_relu():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"),
                          nn.GroupNorm(2, 4), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(4, 3)).to(memory_format=torch.channels_last)
    x = torch.randn(8, 3, 5, 5, generator=g).to(memory_format=torch.channels_last)
    t = torch.randint(0, 3, (8,), generator=g)
    _assert_per_sample(_per_sample(model, x, t), _batch_graph(model, x, t),
                       atol=1e-6, rtol=1e-4)


# --------------------------------------------------------------------------------------------
# G25-2: block-diagonal batches with blocks of 32 or more fall back to a probe per row
# --------------------------------------------------------------------------------------------

def test_ghost_batch_statistics_are_block_diagonal_with_their_groups():
    """Guard for what held: the verdict and blocks equal the Jacobian's own pattern."""
    f = ghost_batch(24, 8)
    x = torch.randn(24, 16, dtype=torch.float64, requires_grad=True)
    d = vjp_magic.dependency(f(x), x)
    jac = torch.autograd.functional.jacobian(f, x.detach())
    expected = (jac != 0).any(-1).any(1)
    assert torch.equal(d.pattern, expected)
    assert (d.kind, tuple(d.blocks), d.witness) == ("block-diagonal", (8, 8, 8), (0, 1))


def test_ghost_batch_statistics_cost_fewer_vectors_than_rows(monkeypatch):
    b, group = 512, 64
    x = torch.randn(b, 16, requires_grad=True)
    y = ghost_batch(b, group)(x)
    vectors = VectorCounter(monkeypatch)
    d = vjp_magic.dependency(y, x)
    assert (d.kind, tuple(d.blocks)) == ("block-diagonal", (group,) * (b // group))
    # 64 colours (index k of every block) decode it; a probe per row is what the issue fixes
    assert vectors.count < b, vectors.count


# --------------------------------------------------------------------------------------------
# G25-3: packed causal sequences at T = 1,024 read as one band that crosses the sequences
# --------------------------------------------------------------------------------------------

def test_packed_causal_sequences_at_1024_are_block_lower_triangular():
    torch.manual_seed(0)
    f, mask = packed_attention(1024, 256)
    x = torch.randn(1024, 8, requires_grad=True)
    d = vjp_magic.dependency(f(x), x)
    pattern = d.pattern.to_dense() if d.pattern.layout != torch.strided else d.pattern
    assert not bool(pattern[256, 1])  # token 0 of sequence 2 reads nothing of sequence 1
    assert (d.kind, tuple(d.blocks or ())) == ("block-lower-triangular", (256,) * 4)
    assert torch.equal(pattern, mask)
