"""The vectorised path's Jacobians judged at their terms' scale where parameters are read by
calls linear in each tensor (``x @ w``, ``h + b``, ``h * s``: ``run/multilinear.py``), not
only by per-layer rules: a key bias added by hand before ``scaled_dot_product_attention``
has a true per-sample gradient of exactly 0, and its float32 noise no longer sends the batch
to one backward per sample (78 passes at B = 64 before). A bias whose true gradient is
small but not 0 (δ = 1e-6 of its terms in float64, 1e-3 in float32) is still shown as it is:
a Jacobian that says 0 there is refused. Expected values from torch.func.vmap(grad) in
float64."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

import vjp_magic
from pass_counter import counted
from vjp_magic.core import given
from vjp_magic.run import persample
from vjp_magic.run.expanded import per_sample_by_rules
from vjp_magic.run.record import recording


class HandAttention(nn.Module):
    """Attention written with ``@`` and ``+`` (no layer a rule knows but the head); the key
    bias also reaches the queries, ``small`` times (0: not at all)."""

    def __init__(self, small: float = 0.0, width: int = 4):
        super().__init__()
        self.small = small
        self.wq, self.wk, self.wv = (nn.Parameter(torch.randn(width, width) / 2)
                                     for _ in range(3))
        self.bk, self.l = nn.Parameter(torch.randn(width)), nn.Linear(width, 3)

    def forward(self, x):
        k = x @ self.wk + self.bk
        q = x @ self.wq
        if self.small:
            q = q + self.small * (torch.ones_like(x) * self.bk)
        o = F.scaled_dot_product_attention(q[:, None], k[:, None], (x @ self.wv)[:, None])
        return self.l(o[:, 0].mean(1))


def _data(batch: int, dtype, small: float = 0.0):
    torch.manual_seed(0)
    model = HandAttention(small).to(dtype)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 5, 4, generator=g).to(dtype)
    return model, x, torch.randint(0, 3, (batch,), generator=g)


def _expected(model, x, t) -> dict:
    model = copy.deepcopy(model).double()
    params = {k: v.detach() for k, v in model.named_parameters()}

    def one(p, xi, ti):
        return F.cross_entropy(functional_call(model, p, (xi[None],)), ti[None])
    return vmap(grad(one), in_dims=(None, 0, 0))(params, x.double(), t)


def _key_terms(model, x, t) -> torch.Tensor:
    """(B, 4): Σ over positions of |∂loss_b/∂k| (+ small · |∂loss_b/∂q|), float64: the
    sums of the absolute terms of the key bias's per-sample entries. Row b of the batch's
    gradient at k is sample b's own: each loss reads its own rows."""
    model = copy.deepcopy(model).double()
    x = x.double()
    k = (x @ model.wk + model.bk).detach().requires_grad_()
    q = (x @ model.wq).detach().requires_grad_()
    shifted = q + model.small * model.bk.detach() if model.small else q
    o = F.scaled_dot_product_attention(shifted[:, None], k[:, None], (x @ model.wv)[:, None])
    F.cross_entropy(model.l(o[:, 0].mean(1)), t, reduction="sum").backward()
    return k.grad.abs().sum(1) + model.small * q.grad.abs().sum(1)


def _run(model, x, t):
    return counted(lambda: vjp_magic.differentiate(
        lambda: F.cross_entropy(model(x), t, reduction="none"), model, seed=5))


@pytest.mark.filterwarnings("ignore::UserWarning")  # vmap's fallback for attention kernels
@pytest.mark.parametrize("small", [0.0, 1e-6])
def test_the_linear_calls_give_per_sample_gradients_and_their_terms(small):
    """float64: each parameter's per-sample gradient from the linear calls equals
    vmap(grad)'s, and the key bias's magnitudes are the sums of its absolute terms."""
    model, x, t = _data(8, torch.float64, small)
    with recording() as record:
        losses = F.cross_entropy(model(x), t, reduction="none")
    params = dict(model.named_parameters())
    replay, data = persample.sample_data(record, params, losses)
    found = per_sample_by_rules(replay, params, data, losses, linear=True)
    assert found is not None and found.separated
    for name, value in _expected(model, x, t).items():
        torch.testing.assert_close(found[name], value, rtol=1e-9, atol=1e-12, msg=name)
    torch.testing.assert_close(found.magnitudes["bk"], _key_terms(model, x, t),
                               rtol=1e-9, atol=1e-12)


@pytest.mark.filterwarnings("ignore::UserWarning")  # vmap's fallback for attention kernels
@pytest.mark.parametrize("batch", [32, 64])
def test_a_hand_written_key_bias_keeps_the_vectorised_path(batch):
    model, x, t = _data(batch, torch.float32)
    expected = _expected(model, x, t)
    assert expected["bk"].abs().max() < 1e-12  # (the mathematics: exactly 0)
    r, passes = _run(model, x, t)
    assert passes <= 16, passes  # (46 at B = 32, 78 at B = 64 before)
    for name, value in expected.items():
        torch.testing.assert_close(r.derivatives[name].double(), value, rtol=1e-4, atol=2e-6,
                                   msg=name)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("dtype, small", [(torch.float64, 1e-6), (torch.float32, 1e-3)])
@pytest.mark.parametrize("wrong", [False, True])
def test_a_small_gradient_is_shown_and_a_zero_in_its_place_refused(monkeypatch, dtype, small,
                                                                   wrong):
    """The key bias's true per-sample gradient is ``small`` (relative to its terms), not 0:
    shown as vmap(grad) in float64 gives it (to the dtype's rounding of the terms); with
    vmap's Jacobian saying 0 there (``wrong``), that Jacobian is refused and recomputed."""
    model, x, t = _data(32, dtype, small)
    expected = _expected(model, x, t)
    terms = _key_terms(model, x, t)
    assert (expected["bk"].abs() > small / 100 * terms).any()  # small, not 0
    vectorised, accepted, agreed = persample._vectorised, [], given.agreed

    def zero(*args, **kwargs):
        grads, values = vectorised(*args, **kwargs)
        return {**grads, "bk": torch.zeros_like(grads["bk"])}, values

    def spied(*args, **kwargs):
        accepted.append(agreed(*args, **kwargs))
        return accepted[-1]
    if wrong:
        monkeypatch.setattr(persample, "_vectorised", zero)
    monkeypatch.setattr(given, "agreed", spied)
    r, _ = _run(model, x, t)
    assert accepted and all(("bk" in found) != wrong for found in accepted), accepted
    rounding = {torch.float64: 1e-12, torch.float32: 1e-5}[dtype]
    assert ((r.derivatives["bk"].double() - expected["bk"]).abs() <= rounding * terms).all()
    for name, value in expected.items():
        torch.testing.assert_close(r.derivatives[name].double(), value, rtol=1e-4,
                                   atol=2e-6, msg=name)


class HandMLP(nn.Module):
    """``x @ w + b`` twice: nothing cancels."""

    def __init__(self):
        super().__init__()
        self.w1, self.b1 = nn.Parameter(torch.randn(6, 8) / 3), nn.Parameter(torch.randn(8))
        self.w2, self.b2 = nn.Parameter(torch.randn(8, 3) / 3), nn.Parameter(torch.randn(3))

    def forward(self, x):
        return torch.tanh(x @ self.w1 + self.b1) @ self.w2 + self.b2


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("case", ["hand MLP", "hand attention"])
def test_the_terms_are_made_only_where_a_jacobian_needs_them(monkeypatch, case):
    """The rules' replay and passes for the terms run only when a Jacobian is refused at its
    own scale (core/given.Deferred): never for the MLP (its values equal vmap(grad)'s), once
    for the hand-written attention's key bias."""
    torch.manual_seed(0)
    model = HandMLP() if case == "hand MLP" else HandAttention()
    x = torch.randn(32, *((6,) if case == "hand MLP" else (5, 4)))
    t = torch.randint(0, 3, (32,))
    made, make = [], persample._made_magnitudes
    monkeypatch.setattr(persample, "_made_magnitudes", lambda *a: made.append(1) or make(*a))
    r, _ = _run(model, x, t)
    assert len(made) == (case != "hand MLP"), made
    for name, value in _expected(model, x, t).items():
        torch.testing.assert_close(r.derivatives[name].double(), value, rtol=1e-4, atol=2e-6,
                                   msg=name)


def _step(name, args, result, **kwargs):
    from types import SimpleNamespace
    return SimpleNamespace(name=name, args=args, kwargs=kwargs, result=result)


def test_which_calls_the_terms_take():
    """Linear in each tensor, the parameter broadcast over the batch (or x @ w's matrix),
    the other tensor carrying the batch on axis 0; anything else is not taken."""
    from vjp_magic.run.multilinear import use_of
    x, p, w, rows = torch.randn(6, 4), torch.randn(4), torch.randn(4, 3), torch.randn(6, 4)
    ids = {id(p): "p", id(w): "w", id(rows): "rows"}
    assert use_of(_step("add", (x, p), x + p), ids, 6) == ({1: "p"}, (0,))
    assert use_of(_step("matmul", (x, w), x @ w), ids, 6) == ({1: "w"}, (0,))
    assert use_of(_step("sub", (x, p), x - p, alpha=2), ids, 6) == ({1: "p"}, (0,))
    assert use_of(_step("add", (x, rows), x + rows), ids, 6) is None  # one row per sample
    assert use_of(_step("mul", (p, p), p * p), ids, 4) is None  # p twice, no batch
    assert use_of(_step("tanh", (x + p,), x), ids, 6) is None  # not linear
    assert use_of(_step("add", (x, p), x + p, out=None), ids, 6) is None
