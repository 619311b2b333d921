"""Masked self-attention by the per-layer rules (``run/expanded.py``'s attention rule takes a
key padding mask and an attention mask, bool or additive, merged as the layer merges them):
its key bias, whose true per-sample gradient is exactly 0, comes with its terms' magnitudes,
so its float32 noise is judged at that scale and the batch keeps the vectorised path. The
rules' values equal ``torch.func.vmap(grad(...))``'s in float64; a key bias wrong by 1e-6
(float64) or 1e-3 (float32) of its terms is refused and recomputed."""
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
from vjp_magic.run import expanded, persample
from vjp_magic.run.record import recording

MASKS = ["padding", "causal", "both", "additive", "per head"]


class Masked(nn.Module):
    """nn.MultiheadAttention (4 features, 2 heads) over (B, T, 4) with the masks of ``kind``
    (the key padding a (B, T) argument: data per sample), then a Linear of the mean over T."""

    def __init__(self, kind: str, batch_first: bool):
        super().__init__()
        self.kind, self.batch_first = kind, batch_first
        self.a, self.l = nn.MultiheadAttention(4, 2, batch_first=batch_first), nn.Linear(4, 3)

    def forward(self, x, padding):
        length = x.shape[1]
        causal = torch.triu(torch.ones(length, length, dtype=torch.bool), 1)
        masks = {"padding": (padding, None), "causal": (None, causal),
                 "both": (padding, causal),
                 "additive": (padding.to(x.dtype) * -1e4, torch.zeros(length, length,
                                                                       dtype=x.dtype)),
                 "per head": (None, (padding[:, None, None, :] | causal).expand(
                     -1, 2, -1, -1).reshape(-1, length, length))}
        key_padding, attention = masks[self.kind]
        s = x if self.batch_first else x.transpose(0, 1)
        h = self.a(s, s, s, key_padding_mask=key_padding, attn_mask=attention,
                   need_weights=False)[0]
        return self.l((h if self.batch_first else h.transpose(0, 1)).mean(1))


def _data(kind: str, batch: int, dtype=torch.float64, batch_first: bool = True):
    torch.manual_seed(0)
    model = Masked(kind, batch_first).to(dtype)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 5, 4, generator=g, dtype=dtype)
    padding = torch.arange(5)[None, :] >= 5 - torch.arange(batch)[:, None] % 3  # 0-2 padded
    return model, x, padding, torch.randint(0, 3, (batch,), generator=g)


def _expected(model, x, padding, t) -> dict:
    """vmap(grad) in float64: each sample's loss alone."""
    params = {k: v.detach().double() for k, v in model.named_parameters()}
    model = copy.deepcopy(model).double()  # the model itself stays as it is

    def one(p, xi, mi, ti):
        return F.cross_entropy(functional_call(model, p, (xi[None], mi[None])), ti[None])
    found = vmap(grad(one), in_dims=(None, 0, 0, 0))(params, x.double(), padding, t)
    return found


def _losses(model, x, padding, t):
    return lambda: F.cross_entropy(model(x, padding), t, reduction="none")


@pytest.mark.filterwarnings("ignore::UserWarning")  # vmap's fallback for attention kernels
@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("kind", MASKS)
def test_masked_attention_by_the_rules_equals_vmap_grad(kind, batch_first):
    model, x, padding, t = _data(kind, 6, batch_first=batch_first)
    expected = _expected(model, x, padding, t)
    with recording() as record:
        losses = _losses(model, x, padding, t)()
    params = dict(model.named_parameters())
    replay, _ = persample.sample_data(record, params, losses)
    assert expanded.rule_uses(replay, params, 6) is not None  # the masked rule takes it
    got = persample.per_sample_jacobians(record, params, losses)
    assert got is not None and got.separated  # the rules' own (checked per sample)
    assert set(got.magnitudes) >= {"a.in_proj_bias", "a.out_proj.bias"}  # summed over T
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, rtol=1e-9, atol=1e-11, msg=name)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("kind", MASKS)
def test_masked_attention_keeps_the_vectorised_path_at_64(kind):
    model, x, padding, t = _data(kind, 64, torch.float32)
    expected = _expected(model, x, padding, t)
    assert expected["a.in_proj_bias"][:, 4:8].abs().max() < 1e-12  # the key bias: exactly 0
    r, passes = counted(lambda: vjp_magic.differentiate(_losses(model, x, padding, t), model,
                                                         seed=5))
    assert passes <= 6, passes  # (one backward per sample: 70 and more)
    for name, value in expected.items():
        torch.testing.assert_close(r.derivatives[name].double(), value, rtol=1e-4, atol=2e-6,
                                   msg=name)


def _key_bias_terms(model, x, padding, t) -> torch.Tensor:
    """(B, 4): Σ over positions of |∂loss_b/∂k| for each key feature (the terms summing into
    the key bias's entries), float64, from the padded attention written out by hand (its
    loss checked against the model's)."""
    params = {k: v.detach().double() for k, v in model.named_parameters()}
    w, bias = params["a.in_proj_weight"], params["a.in_proj_bias"]
    model64, found = copy.deepcopy(model).double(), []
    for b in range(x.shape[0]):
        s, mask = x[b:b + 1].double(), padding[b:b + 1, None, None, :]

        def loss(key, s=s, mask=mask, b=b):
            q, v = s @ w[:4].t() + bias[:4], s @ w[8:].t() + bias[8:]
            q, key, v = (u.reshape(1, 5, 2, 2).transpose(1, 2) for u in (q, key, v))
            h = F.scaled_dot_product_attention(q, key, v, ~mask)
            h = F.linear(h.transpose(1, 2).reshape(1, 5, 4), params["a.out_proj.weight"],
                         params["a.out_proj.bias"])
            out = F.linear(h.mean(1), params["l.weight"], params["l.bias"])
            return F.cross_entropy(out, t[b:b + 1])
        key = (s @ w[4:8].t() + bias[4:8]).requires_grad_()
        value = loss(key)
        own = F.cross_entropy(functional_call(model64, params, (s, padding[b:b + 1])),
                              t[b:b + 1])
        torch.testing.assert_close(value, own)  # the hand-written attention is the model's
        g, = torch.autograd.grad(value, key)
        found.append(g.abs().sum((0, 1)))
    return torch.stack(found)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("dtype, wrong", [(torch.float64, 1e-6), (torch.float32, 1e-3)])
def test_a_key_bias_wrong_by_a_little_of_its_terms_is_refused(monkeypatch, dtype, wrong):
    """The rules' key bias moved by ``wrong`` times its terms' magnitudes (1e-6 in float64,
    far below any value that float32 could show): refused (recomputed), the answer true."""
    model, x, padding, t = _data("padding", 32, dtype)
    expected = _expected(model, x, padding, t)
    terms = _key_bias_terms(model, x, padding, t)
    rule = expanded._rule

    def shifted(use, bound, g, *probe):
        found = rule(use, bound, g, *probe)
        if use.params.get("bias") == "a.in_proj_bias":
            bias, magnitudes = found["bias"]
            bias = bias.clone()
            bias[:, 4:8] += wrong * terms.to(bias.dtype)
            found = {**found, "bias": (bias, magnitudes)}
        return found
    monkeypatch.setattr(expanded, "_rule", shifted)
    accepted, agreed = [], given.agreed

    def spied(*args, **kwargs):
        accepted.append(agreed(*args, **kwargs))
        return accepted[-1]
    monkeypatch.setattr(given, "agreed", spied)
    r, _ = counted(lambda: vjp_magic.differentiate(_losses(model, x, padding, t), model, seed=5))
    assert accepted and all("a.in_proj_bias" not in found for found in accepted), accepted
    tolerance = {torch.float64: 1e-10, torch.float32: 2e-6}[dtype]
    for name, value in expected.items():
        torch.testing.assert_close(r.derivatives[name].double(), value, rtol=tolerance * 10,
                                   atol=tolerance, msg=name)
