"""A step reading across the batch never passes the vectorised per-sample replay (G25-1).

Under vmap a sample is a batch of one: ``h.mean(0)`` then reduces that sample alone, and the
replay computes another function than the cell's. At a coupling of 1e-5 the values agree
within any tolerance, so the refusal must come from the record's structure
(:func:`vjp_magic.run.persample.samples_apart`). Expected per-sample gradients: the float64
Jacobian of the B per-sample losses with respect to the parameters
(``torch.autograd.functional.jacobian``; row b is sample b's gradient).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from pass_counter import counted

import vjp_magic
from vjp_magic.run import persample
from vjp_magic.run.record import recording
from vjp_magic.run.replay import replayable

B, EPS = 32, 1e-5  # from 32 samples the per-sample path is tried (pipeline.PER_SAMPLE_FROM)
PERM = torch.randperm(B, generator=torch.Generator().manual_seed(3))

COUPLINGS = {  # h (B, 5) -> a (B, 5) term reading other samples' rows
    "mean over the batch": lambda h: h.mean(0),
    "sum over the batch": lambda h: h.sum(0),
    "amax over the batch": lambda h: h.amax(0),
    "var over the batch": lambda h: h.var(0),
    "std over the batch": lambda h: h.std(0),
    "norm over the batch": lambda h: h.norm(dim=0),
    "logsumexp over the batch": lambda h: h.logsumexp(0),
    "softmax over the batch": lambda h: h.softmax(0),
    "batch_norm in training mode": lambda h: F.batch_norm(h, None, None, training=True),
    "cumsum along the batch": lambda h: h.cumsum(0),
    "sort along the batch": lambda h: h.sort(0).values,
    "topk along the batch": lambda h: h.topk(2, dim=0).values.sum(0),
    "index along the batch": lambda h: h[PERM],
    "index_select along the batch": lambda h: h.index_select(0, PERM),
    "gather along the batch": lambda h: h.gather(0, PERM[:, None].expand(B, 5)),
    "matmul contracting the batch": lambda h: h @ (h.T @ h),
    "cat moving rows": lambda h: torch.cat([h[1:], h[:1]], 0),
    "stack then sum": lambda h: torch.stack([h, h.roll(1, 0)], 1).sum(1),
    "roll along the batch": lambda h: h.roll(1, 0),
    "reshape merging the batch": lambda h: h.reshape(-1).softmax(0).reshape(B, 5) * B,
}


class _Coupled(nn.Module):
    """An MLP whose hidden layer adds ``eps`` times a term reading across the batch. Its
    ``scale`` read through ``exp`` has no per-layer rule (``path="vmap"``: the vmap replay is
    what is tried); read by a product it has one (``"rules"``: the per-layer rules are)."""

    def __init__(self, coupling, path: str = "vmap", eps: float = EPS):
        super().__init__()
        self.coupling, self.eps, self.path = coupling, eps, path
        self.f, self.o = nn.Linear(4, 5), nn.Linear(5, 3)
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, 5))

    def forward(self, x):
        h = self.f(x) * (self.scale.exp() if self.path == "vmap" else self.scale)
        return self.o(torch.tanh(h if self.coupling is None else h + self.eps * self.coupling(h)))


def _data(dtype):
    g = torch.Generator().manual_seed(1)
    return torch.randn(B, 4, generator=g, dtype=dtype), torch.randint(0, 3, (B,), generator=g)


def _reference(model, x, t, dtype=torch.float64) -> dict:
    """name -> (B, *shape): the Jacobian (in float64 unless ``dtype``) of the per-sample
    losses (the true batch function, every sample reading the whole batch) with respect to
    each parameter."""
    model, x = model.to(dtype), x.to(dtype)
    names, params = zip(*model.named_parameters())

    def losses(*values):
        found = torch.func.functional_call(model, dict(zip(names, values)), (x,))
        return F.cross_entropy(found, t, reduction="none")

    rows = torch.autograd.functional.jacobian(losses, params)
    return dict(zip(names, rows))


def _model(coupling, dtype, path: str = "vmap"):
    torch.manual_seed(0)
    return _Coupled(coupling, path).to(dtype)


@pytest.mark.parametrize("path", ["vmap", "rules"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", COUPLINGS)
def test_a_tiny_batch_coupling_gives_the_batch_functions_per_sample_gradients(name, dtype, path):
    model = _model(COUPLINGS[name], dtype, path)
    x, t = _data(dtype)
    got = vjp_magic.differentiate(
        lambda: F.cross_entropy(model(x), t, reduction="none"), model).derivatives
    expected = _reference(_model(COUPLINGS[name], dtype, path), x, t)
    assert set(got) == set(expected)
    atol = 1e-12  # float32: twice what its rounding alone costs (the batch graph in float32)
    if dtype == torch.float32:  # (< 5e-7 for most; vmap's other function: up to 7e-6)
        plain = _reference(_model(COUPLINGS[name], dtype, path), x, t, torch.float32)
        atol = max(1e-6, 2 * max((plain[k].double() - v).abs().max().item()
                                 for k, v in expected.items()))
    for k, v in expected.items():
        torch.testing.assert_close(got[k].double(), v, atol=atol, rtol=0, msg=k)


def _replay_parts(model, x, t):
    params = dict(model.named_parameters())
    with recording() as rec:
        losses = F.cross_entropy(model(x), t, reduction="none")
    replay, data = persample.sample_data(rec, params, losses)
    samples = persample.per_sample_constants(replay, B, {**params, **data})
    return replay, params, data, samples


@pytest.mark.parametrize("name", COUPLINGS)
def test_the_record_says_the_samples_are_coupled(name):
    replay, params, data, samples = _replay_parts(_model(COUPLINGS[name], torch.float32),
                                                  *_data(torch.float32))
    assert replay is not None
    assert not persample.samples_apart(replay, params, data, samples, B)


def test_an_uncoupled_model_keeps_the_vectorised_path(monkeypatch):
    model = _model(None, torch.float32)
    x, t = _data(torch.float32)
    replay, params, data, samples = _replay_parts(model, x, t)
    assert persample.samples_apart(replay, params, data, samples, B)

    def run():
        return vjp_magic.differentiate(
            lambda: F.cross_entropy(model(x), t, reduction="none"), model).derivatives

    got, passes = counted(run)
    monkeypatch.setattr(persample, "samples_apart", lambda *args: True)  # as before the check
    before, passes_before = counted(run)
    assert passes == passes_before
    expected = _reference(_model(None, torch.float32), x, t)
    for k, v in expected.items():
        torch.testing.assert_close(got[k].double(), v, atol=1e-6, rtol=0, msg=k)
        assert torch.equal(got[k], before[k]), k


def test_replayable_is_the_record_of_the_cell():
    """The replay the structure is read from computes the cell's losses."""
    model = _model(COUPLINGS["mean over the batch"], torch.float64)
    x, t = _data(torch.float64)
    params = dict(model.named_parameters())
    with recording() as rec:
        losses = F.cross_entropy(model(x), t, reduction="none")
    replay = replayable(rec, params, losses)
    torch.testing.assert_close(replay(**params), losses, atol=0, rtol=0)
