"""Per-sample losses written ``-logp[torch.arange(B), t]`` (and ``logp[range(B), t]``,
``logp[torch.arange(B)[:, None], t2d]``) keep the vectorised per-sample replay: the index's
first item is proved the identity on the batch from its values, and at a batch of one the
sample's row is row 0. A permuted first index (``torch.randperm(B)``) makes loss b read
another sample: refused from the vectorised path, its gradients still exact.

Expected per-sample gradients: a float64 loop, sample b alone through the model and its own
loss ``-log_softmax(z_b)[t_b]`` (``torch.autograd.grad`` per sample); for the permuted index,
the float64 Jacobian of the B losses (``torch.autograd.functional.jacobian``).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import vjp_magic
from pass_counter import counted
from vjp_magic.run import persample
from vjp_magic.run.record import recording

B = 32  # from 32 samples the per-sample path is tried
G = torch.Generator().manual_seed(2)
X = torch.randn(B, 4, generator=G, dtype=torch.float64)
T = torch.randint(0, 3, (B,), generator=G)
T2 = torch.randint(0, 3, (B, 2), generator=G)  # two targets a sample, their losses summed

LOSSES = {  # (logits (B, 3)) -> per-sample losses (B,); targets (B, k): the ones each reads
    "-logp[torch.arange(B), t]": (lambda z: -F.log_softmax(z, 1)[torch.arange(B), T], T[:, None]),
    "-logp[range(B), t]": (lambda z: -F.log_softmax(z, 1)[range(B), T], T[:, None]),
    "-logp[torch.arange(z.shape[0]), t]": (
        lambda z: -F.log_softmax(z, 1)[torch.arange(z.shape[0]), T], T[:, None]),
    "-logp[torch.arange(B)[:, None], t2d].sum(1)": (
        lambda z: -F.log_softmax(z, 1)[torch.arange(B)[:, None], T2].sum(1), T2),
    "-logp[torch.arange(B), t[:, None]...] via t2d[:, :1]": (
        lambda z: -F.log_softmax(z, 1)[torch.arange(B)[:, None], T2[:, :1]][:, 0], T2[:, :1]),
}


class _Scaled(nn.Module):
    """An MLP whose logits are scaled through ``exp`` (no per-layer rule: the vmap replay)."""

    def __init__(self, loss):
        super().__init__()
        self.loss = loss
        self.m = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, 3))

    def forward(self, x):
        return self.loss(self.m(x) * self.scale.exp())


def _make(loss, dtype):
    torch.manual_seed(0)
    return _Scaled(loss).to(dtype)


def _loop(loss, targets) -> dict:
    """name -> (B, *shape): sample b alone (a batch of one) through the float64 model, its
    loss the negative log-probabilities of its own targets, differentiated one by one."""
    model = _make(loss, torch.float64)
    names, params = zip(*model.named_parameters())
    rows = []
    for b in range(B):
        z = model.m(X[b:b + 1]) * model.scale.exp()
        own = -F.log_softmax(z, 1)[0, targets[b]].sum()
        rows.append(torch.autograd.grad(own, params))
    return {name: torch.stack([row[i] for row in rows]) for i, name in enumerate(names)}


def _run(loss, dtype, monkeypatch):
    """(result, whether the vmap replay ran, backward passes)."""
    model = _make(loss, dtype)
    used = []
    original = persample._vectorised
    monkeypatch.setattr(persample, "_vectorised", lambda *a: used.append(1) or original(*a))
    x = X.to(dtype)
    r, passes = counted(lambda: vjp_magic.differentiate(lambda: model(x), model))
    return r, bool(used), passes


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", LOSSES)
def test_an_identity_index_keeps_the_vmap_replay(name, dtype, monkeypatch):
    loss, targets = LOSSES[name]
    r, used, passes = _run(loss, dtype, monkeypatch)
    expected = _loop(loss, targets)
    assert set(r.derivatives) == set(expected)
    atol = 1e-12 if dtype == torch.float64 else 2e-6
    for k, v in expected.items():
        torch.testing.assert_close(r.derivatives[k].double(), v, atol=atol, rtol=0, msg=k)
    assert used and passes <= 16, passes  # not one backward per sample (B = 32)


def _proved(model) -> bool:
    """Whether ``samples_apart`` proves the recorded losses' rows apart."""
    params = dict(model.named_parameters())
    with recording() as record:
        losses = model(X)
    replay, data = persample.sample_data(record, params, losses)
    samples = persample.per_sample_constants(replay, B, {**params, **data})
    return persample.samples_apart(replay, params, data, samples, B)


PERM = torch.randperm(B, generator=torch.Generator().manual_seed(4))


def test_a_permuted_index_is_not_per_sample(monkeypatch):
    """``-logp[perm, t]``: loss b reads sample perm[b]'s logits (a coupling the Jacobian
    shows), so the rows are not proved apart and no vmap replay runs; the gradients are
    still exact (the float64 Jacobian of the B losses)."""
    assert not torch.equal(PERM, torch.arange(B))

    def loss(z):
        return -F.log_softmax(z, 1)[PERM, T]

    model = _make(loss, torch.float64)
    reads = torch.autograd.functional.jacobian(model, X).ne(0).any(2)  # loss b reads x row c
    moved = PERM != torch.arange(B)
    assert reads[moved.nonzero().flatten(), PERM[moved]].all()  # another sample's row
    assert not reads[moved.nonzero().flatten(), moved.nonzero().flatten()].any()
    assert not _proved(model)
    r, used, _ = _run(loss, torch.float64, monkeypatch)
    assert not used
    names, params = zip(*model.named_parameters())

    def losses(*values):
        return torch.func.functional_call(model, dict(zip(names, values)), (X,))

    for k, v in zip(names, torch.autograd.functional.jacobian(losses, params)):
        torch.testing.assert_close(r.derivatives[k], v, atol=1e-12, rtol=0, msg=k)


def test_an_identity_index_is_proved_apart():
    model = _make(LOSSES["-logp[torch.arange(B), t]"][0], torch.float64)
    assert _proved(model)
