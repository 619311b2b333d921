"""Per-sample gradients through modules called on UNBATCHED inputs (no batch axis: a Conv1d on
(C, L), a Linear on (in,), an RNN on (L, H), attention on (L, E) ...) whose per-channel,
per-unit or per-position losses are the "samples". The per-layer rules (run/expanded.py) must
not take a channel or a normalised axis for the batch: each case either gets a rule that
holds or goes to another path, and the values equal a loop of ``torch.autograd.grad``.
B = 32+ so the vectorised paths are tried.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import vjp_magic

B = 32


def _loop(fn, model) -> dict:
    losses = fn()
    params = {k: p for k, p in model.named_parameters() if p.requires_grad}
    rows = [torch.autograd.grad(losses[b], list(params.values()), retain_graph=True,
                                allow_unused=True) for b in range(losses.shape[0])]
    return {k: torch.stack([torch.zeros_like(params[k]) if row[i] is None else row[i]
                            for row in rows]) for i, k in enumerate(params)}


def _conv1d():
    layer, x = nn.Conv1d(B, B, 3, padding=1), torch.randn(B, 9)
    return layer, lambda: layer(x).pow(2).sum(1)


def _conv1d_grouped():
    layer, x = nn.Conv1d(B, B, 3, groups=B), torch.randn(B, 9)
    return layer, lambda: layer(x).pow(2).sum(1)


def _conv2d():
    layer, x = nn.Conv2d(B, B, 3), torch.randn(B, 5, 5)
    return layer, lambda: layer(x).pow(2).flatten(1).sum(1)


def _conv1d_positions():  # the losses per position (L = B) of an unbatched conv
    layer, x = nn.Conv1d(3, 4, 3, padding=1), torch.randn(3, B)
    return layer, lambda: layer(x).pow(2).sum(0)


def _linear_vector():  # a Linear on a 1-D input: its output units are the samples
    layer, x = nn.Linear(7, B), torch.randn(7)
    return layer, lambda: layer(x).pow(2)


def _linear_rows():  # a Linear on (B, in): rows are independent, the rule holds
    layer, x = nn.Linear(6, 5), torch.randn(B, 6)
    return layer, lambda: layer(x).tanh().sum(1)


def _linear_seq_first():  # (T, B, in) with T = B: axis 0 is time, the samples on axis 1
    layer, x = nn.Linear(3, 4), torch.randn(B, B, 3)
    return layer, lambda: layer(x).tanh().pow(2).sum((0, 2))


def _conv1d_length_as_batch():  # batched (N, C, L) with N = 1 and L = B: samples along L
    layer, x = nn.Conv1d(B, 2, 1), torch.randn(1, B, B)
    return layer, lambda: layer(x).pow(2).sum(1)[0]


def _layer_norm_all():  # a LayerNorm over every axis of its (B, 5) input
    lin, ln = nn.Linear(4, 5), nn.LayerNorm((B, 5))
    model, x = nn.Sequential(lin, ln), torch.randn(B, 4)
    return model, lambda: model(x).pow(2).sum(1)


def _layer_norm_rows():  # unbatched (C, L) normalised over L: each row alone
    ln, x = nn.LayerNorm(6), torch.randn(B, 6)
    return ln, lambda: (ln(x) * torch.arange(6.0)).pow(2).sum(1)


def _embedding():  # an unbatched sequence of B tokens, a loss per token
    emb, idx = nn.Embedding(10, 4), torch.randint(0, 10, (B,))
    return emb, lambda: emb(idx).pow(2).sum(1)


def _attention():  # unbatched self-attention (L, E), a loss per position (they mix)
    mha, x = nn.MultiheadAttention(8, 2), torch.randn(B, 8)
    return mha, lambda: mha(x, x, x, need_weights=False)[0].pow(2).sum(1)


def _rnn():  # an unbatched sequence (L, H), a loss per step (later steps read earlier)
    rnn, x = nn.RNN(3, 4), torch.randn(B, 3)
    return rnn, lambda: rnn(x)[0].pow(2).sum(1)


def _gru():
    gru, x = nn.GRU(3, 4), torch.randn(B, 3)
    return gru, lambda: gru(x)[0].pow(2).sum(1)


CASES = {"conv1d": _conv1d, "conv1d_grouped": _conv1d_grouped, "conv2d": _conv2d,
         "conv1d_positions": _conv1d_positions, "linear_vector": _linear_vector,
         "linear_rows": _linear_rows, "linear_seq_first": _linear_seq_first,
         "conv1d_length_as_batch": _conv1d_length_as_batch, "layer_norm_all": _layer_norm_all,
         "layer_norm_rows": _layer_norm_rows, "embedding": _embedding,
         "attention": _attention, "rnn": _rnn, "gru": _gru}


@pytest.mark.parametrize("case", sorted(CASES))
def test_unbatched_modules_give_a_loop_of_autograd_grad(case):
    torch.manual_seed(0)
    model, fn = CASES[case]()
    expected = _loop(fn, model)
    r = vjp_magic.differentiate(fn, model, names="m", seed=0)
    for name, rows in expected.items():
        torch.testing.assert_close(r.jacobian(f"m.{name}").reshape(rows.shape), rows,
                                   rtol=1e-4, atol=1e-5)
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("case", ["conv1d", "conv2d", "linear_vector", "attention", "rnn"])
def test_unbatched_modules_in_the_magic(ip, run_ok, case):
    torch.manual_seed(0)
    model, fn = CASES[case]()
    expected = _loop(fn, model)
    ip.user_ns.update(model=model, fn=fn)
    r = run_ok("%%vjp --wrt model\nlosses = fn()")
    for name, rows in expected.items():
        found = r.jacobian(f"model.{name}").reshape(rows.shape)
        torch.testing.assert_close(found, rows, rtol=1e-4, atol=1e-5)
