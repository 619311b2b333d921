"""Batch couplings of the conv, normalisation and attention kind (G25-1's class): each is
refused by the vectorised per-sample replay (and computed by the exact path) or exact, never
vmap's batch of one shown as the cell's gradients; and the models that merge the batch with
another axis legitimately (InstanceNorm's ``(1, B*C, L)``, GroupNorm, batch-first
MultiheadAttention's ``(B*heads, L, d)``, einops' ``'b c l -> (b c) l'``) keep the vectorised
path, the batch read as the outer factor of the merged axis.

Expected per-sample gradients: the float64 Jacobian of the B per-sample losses of the true
batch function with respect to the parameters (``torch.autograd.functional.jacobian``; row b
is sample b's gradient).
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

B, C, L, EPS = 32, 4, 6, 1e-5  # from 32 samples the per-sample path is tried


def _merged(y, step):
    """``step`` applied to ``y`` (B, C, L) viewed as (B*C, L), viewed back."""
    return step(y.reshape(B * C, L)).reshape(B, C, L)


COUPLINGS = {  # y (B, C, L) -> a term reading other samples
    "sum over the batch in a conv net": lambda y: y.sum(0),
    "batch statistics by hand": lambda y: (y - y.mean((0, 2), keepdim=True))
    / y.var((0, 2), keepdim=True).add(1e-5).sqrt(),
    "mean along the merged batch-channel axis": lambda y: _merged(y, lambda z: z - z.mean(0)),
    "roll along the merged batch-channel axis": lambda y: _merged(y, lambda z: z.roll(1, 0)),
    "cumsum after an einops-style merge": lambda y: y.reshape(B * C, L).cumsum(0)
    .reshape(B, C, L),
    "batch_norm across the merged axis": lambda y: F.batch_norm(
        y.reshape(1, B * C, L).transpose(1, 2), None, None, training=True)
    .transpose(1, 2).reshape(B, C, L),
    "reshape instead of permute": lambda y: y.permute(1, 0, 2).reshape(B, C, L),
    "split inside the merged axis": lambda y: y.reshape(B * C, L).reshape(C, B, L)
    .flip(0).reshape(B, C, L),
}


class _Conv(nn.Module):
    """Conv1d, then ``norm()`` (or ``eps`` times a coupling added), tanh, a linear head. The
    channel ``scale`` read through ``exp`` has no per-layer rule (``path="vmap"``: the vmap
    replay is what is tried); read by a product it has one (``"rules"``)."""

    def __init__(self, coupling=None, norm=None, path: str = "vmap"):
        super().__init__()
        self.coupling, self.path = coupling, path
        self.norm = None if norm is None else norm()
        self.c, self.o = nn.Conv1d(2, C, 3, padding=1), nn.Linear(C * L, 3)
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, C)[:, None])

    def forward(self, x):
        y = self.c(x) * (self.scale.exp() if self.path == "vmap" else self.scale)
        if self.coupling is not None:
            y = y + EPS * self.coupling(y)
        if self.norm is not None:
            y = self.norm(y)
        return self.o(torch.tanh(y).flatten(1))


class _Attention(nn.Module):
    """Batch-first self-attention; ``coupled``: key row 0 of each sample also reads row 0 of
    the previous sample (times ``EPS``)."""

    def __init__(self, coupled: bool = False, need_weights: bool = True):
        super().__init__()
        self.coupled, self.need_weights = coupled, need_weights
        self.f = nn.Linear(2, 8)
        self.a, self.o = nn.MultiheadAttention(8, 2, batch_first=True), nn.Linear(8, 3)
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, 8))

    def forward(self, x):
        h = self.f(x.transpose(1, 2)) * self.scale.exp()  # (B, L, 8)
        k = h
        if self.coupled:
            shifted = h.roll(1, 0)[:, :1]
            k = torch.cat([h[:, :1] + EPS * shifted, h[:, 1:]], 1)
        out, _ = self.a(h, k, h, need_weights=self.need_weights)
        return self.o(out.mean(1))


class _Rearranged(nn.Module):
    """einops' ``'b c l -> (b c) l'`` (the reshape it makes on torch tensors), a LayerNorm
    and an elementwise map per row, and back as ``'(b c) l -> b (c l)'``."""

    def __init__(self):
        super().__init__()
        self.c, self.n, self.o = nn.Conv1d(2, C, 3, padding=1), nn.LayerNorm(L), nn.Linear(C * L, 3)
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, L))

    def forward(self, x):
        h = self.c(x)
        b, c, length = h.shape  # the sizes einops reads off the tensor and passes on
        z = self.n(h.reshape([b * c, length])) * self.scale.exp()  # b c l -> (b c) l
        # (b c) l -> b (c l), in the two reshapes einops makes of it
        return self.o(torch.tanh(z.reshape([b, c, length]).reshape([b, c * length])))


def _data(dtype):
    g = torch.Generator().manual_seed(1)
    return torch.randn(B, 2, L, generator=g, dtype=dtype), torch.randint(0, 3, (B,), generator=g)


def _reference(make, x, t) -> dict:
    """name -> (B, *shape): the float64 Jacobian of the per-sample losses (every sample
    reading the whole batch) with respect to each parameter."""
    model = make().double()
    names, params = zip(*model.named_parameters())
    x = x.double() if x.is_floating_point() else x  # (token ids stay ids)

    def losses(*values):
        found = torch.func.functional_call(model, dict(zip(names, values)), (x,))
        return F.cross_entropy(found, t, reduction="none")

    return dict(zip(names, torch.autograd.functional.jacobian(losses, params)))


def _maker(cls, *args, **kwargs):
    def make():
        torch.manual_seed(0)
        return cls(*args, **kwargs)
    return make


def _differentiate(make, dtype, monkeypatch):
    """(per-sample gradients of the cell, whether the vmap replay was tried, the backward
    passes made, the data, the targets)."""
    model = make().to(dtype)
    x, t = _data(dtype)
    used = []
    original = persample._vectorised
    monkeypatch.setattr(persample, "_vectorised", lambda *a: used.append(1) or original(*a))
    r, passes = counted(lambda: vjp_magic.differentiate(
        lambda: F.cross_entropy(model(x), t, reduction="none"), model))
    return r.derivatives, bool(used), passes, x, t


def _float32_atol(make, x, t, expected) -> float:
    """Twice what float32 rounding alone costs the batch graph (its own Jacobian in float32
    against float64), at least 1e-6."""
    model = make()
    names, params = zip(*model.named_parameters())

    def losses(*values):
        return F.cross_entropy(torch.func.functional_call(model, dict(zip(names, values)),
                                                          (x.float(),)), t, reduction="none")

    plain = torch.autograd.functional.jacobian(losses, params)
    return max(1e-6, 2 * max((p.double() - expected[k]).abs().max().item()
                             for k, p in zip(names, plain)))


def _check(make, dtype, monkeypatch) -> tuple[bool, int]:
    """(whether the vmap replay was tried, the backward passes); asserts the values against
    the float64 Jacobian."""
    got, used, passes, x, t = _differentiate(make, dtype, monkeypatch)
    expected = _reference(make, x, t)
    assert set(got) == set(expected)
    atol = 1e-12 if dtype == torch.float64 else _float32_atol(make, x, t, expected)
    for k, v in expected.items():
        torch.testing.assert_close(got[k].double(), v, atol=atol, rtol=0, msg=k)
    return used, passes


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", COUPLINGS)
def test_a_conv_net_coupling_is_refused_by_the_vmap_replay(name, dtype, monkeypatch):
    used, _ = _check(_maker(_Conv, COUPLINGS[name]), dtype, monkeypatch)
    assert not used  # refused by the record's structure, before any values


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", ["sum over the batch in a conv net", "batch statistics by hand"])
def test_a_conv_net_coupling_by_the_rules_path(name, dtype, monkeypatch):
    _check(_maker(_Conv, COUPLINGS[name], path="rules"), dtype, monkeypatch)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_key_row_from_another_sample_is_refused(dtype, monkeypatch):
    used, _ = _check(_maker(_Attention, coupled=True), dtype, monkeypatch)
    assert not used


LEGIT = {
    "InstanceNorm": _maker(_Conv, norm=lambda: nn.InstanceNorm1d(C, affine=True)),
    "GroupNorm": _maker(_Conv, norm=lambda: nn.GroupNorm(2, C)),
    "batch-first attention, weights averaged": _maker(_Attention),
    "batch-first attention, fused kernel": _maker(_Attention, need_weights=False),
    "einops (b c) l": _maker(_Rearranged),
}


@pytest.mark.filterwarnings("ignore::UserWarning")  # vmap's fallback for attention kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", LEGIT)
def test_a_batch_merged_with_another_axis_keeps_the_vmap_replay(name, dtype, monkeypatch):
    used, passes = _check(LEGIT[name], dtype, monkeypatch)
    assert used and passes <= 16, passes  # not one backward per sample (B = 32)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("name", LEGIT)
def test_the_record_proves_the_merged_models_samples_apart(name):
    model = LEGIT[name]()
    x, t = _data(torch.float32)
    params = dict(model.named_parameters())
    with recording() as rec:
        losses = F.cross_entropy(model(x), t, reduction="none")
    replay, data = persample.sample_data(rec, params, losses)
    samples = persample.per_sample_constants(replay, B, {**params, **data})
    assert persample.samples_apart(replay, params, data, samples, B)


class _Embedded(nn.Module):
    """Token ids (integer data) through an Embedding; ``coupling``: a term of ``EPS`` times 3
    reading other samples, on the floating features the ids select (``"features"``) or on
    the ids themselves (``"ids"``: the previous sample's tokens)."""

    def __init__(self, coupling=None):
        super().__init__()
        self.coupling = coupling
        self.e, self.o = nn.Embedding(10, 5), nn.Linear(5, 3)
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, 5))

    def forward(self, ids):
        h = self.e(ids).mean(1) * self.scale.exp()
        if self.coupling == "features":
            h = h + 3 * EPS * h.mean(0)
        elif self.coupling == "ids":
            h = h + 3 * EPS * self.e(ids.roll(1, 0)).mean(1)
        return self.o(torch.tanh(h))


def _ids_and_targets():
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 10, (B, 4), generator=g), torch.randint(0, 3, (B,), generator=g)


@pytest.mark.parametrize("coupling", [None, "features", "ids"])
def test_token_ids_are_followed_through_the_embedding(coupling):
    """Integer data: the features an Embedding makes of them are proved apart like the
    floating data's (a coupling after them refused), an integer step along the batch (a roll
    of the ids) is refused, and the uncoupled model keeps the vmap replay."""
    make = _maker(_Embedded, coupling)
    model = make()
    ids, t = _ids_and_targets()
    params = dict(model.named_parameters())
    with recording() as record:
        losses = F.cross_entropy(model(ids), t, reduction="none")
    replay, data = persample.sample_data(record, params, losses)
    samples = persample.per_sample_constants(replay, B, {**params, **data})
    assert persample.samples_apart(replay, params, data, samples, B) == (coupling is None)
    got = persample.per_sample_jacobians(record, params, losses)  # (no timed choice of path)
    assert (got is not None) == (coupling is None)
    if got is not None:
        expected = _reference(make, ids, t)
        for k, v in expected.items():
            torch.testing.assert_close(got[k].double(), v, atol=1e-6, rtol=0, msg=k)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_key_padding_mask_keeps_the_vmap_replay(monkeypatch):
    """A batch-first encoder layer with a boolean key padding mask (per-sample data made
    into a float mask, merged with the heads inside the attention; softmax by
    ``_safe_softmax``), the per-layer rules off: proved apart, computed by vmap, exact."""
    torch.manual_seed(7)
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True).double()
    head = nn.Linear(8, 3).double()
    x = torch.randn(B, 6, 8, dtype=torch.float64)
    mask = torch.zeros(B, 6, dtype=torch.bool)
    mask[1, 4:] = mask[3, 2:] = True
    t = torch.randint(0, 3, (B,))
    params = {**{f"layer.{k}": v for k, v in layer.named_parameters()},
              **{f"head.{k}": v for k, v in head.named_parameters()}}
    with recording() as record:
        losses = F.cross_entropy(head(layer(x, src_key_padding_mask=mask)[:, 0]), t,
                                 reduction="none")
    used = []
    original = persample._vectorised
    monkeypatch.setattr(persample, "_vectorised", lambda *a: used.append(1) or original(*a))
    monkeypatch.setattr(persample, "per_sample_by_rules", lambda *a, **k: None)
    got = persample.per_sample_jacobians(record, params, losses)
    assert got is not None and used
    for b in (0, 1, 3):
        rows = torch.autograd.grad(losses[b], list(params.values()), retain_graph=True)
        for (name, _), row in zip(params.items(), rows):
            torch.testing.assert_close(got[name][b], row, rtol=1e-9, atol=1e-11, msg=name)
