"""Adversarial review, session 30 (issue 23): ``vjp_magic.dependency`` on causal attention at
T = 1,024, where the verdict is bounded from a few probed rows and prefix/suffix sets
(``complete=False``), with one future leak: issue 23's flagship leak.

Expected facts come from autograd itself: one ``torch.autograd.grad`` of a single output row
says which input rows it reads. A bounded pattern may over-approximate (api.md: "the band
they imply as pattern"), but ``offsets`` are "the lowest and highest j − i of the
dependences" and ``witness`` is a dependence. Tests marked ``xfail(strict=True)`` are bugs
found in this review; unmarked ones guard what holds.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import vjp_magic

T, D = 1024, 8
_G = torch.Generator().manual_seed(0)
WQ, WK, WV = (torch.randn(D, D, generator=_G) / 3 for _ in range(3))


def _attention(x, leak=None):
    """Causal self-attention (mask before softmax); ``leak``: (i, j) also lets row i see j."""
    q, k, v = x @ WQ, x @ WK, x @ WV
    mask = torch.ones(T, T, dtype=torch.bool).tril()
    if leak is not None:
        mask[leak] = True
    return torch.softmax((q @ k.T / D ** 0.5).masked_fill(~mask, float("-inf")), 1) @ v


def _reads(y, x, i) -> torch.Tensor:
    """The input rows output row i reads (autograd, one backward)."""
    (g,) = torch.autograd.grad(y[i], x, torch.ones_like(y[i]), retain_graph=True)
    return (g != 0).any(1)


def _x():
    return torch.randn(T, D, generator=torch.Generator().manual_seed(1)).requires_grad_()


def test_causal_attention_at_1024_is_lower_triangular():
    x = _x()
    y = _attention(x)
    d = vjp_magic.dependency(y, x, seed=0)
    assert d.kind == "lower-triangular" and d.offsets == (-(T - 1), 0)
    assert _reads(y, x, d.witness[0])[d.witness[1]]


def test_a_future_leak_in_causal_attention_at_1024_is_bounded_honestly():
    x = _x()
    y = _attention(x, leak=(700, 900))
    d = vjp_magic.dependency(y, x, seed=0)
    assert _reads(y, x, 700)[900]  # the leak is real
    assert _reads(y, x, d.witness[0])[d.witness[1]], f"witness {d.witness} is no dependence"
    assert d.offsets[1] >= 200
    assert d.pattern[700, 900]


def _packed(x, sizes):
    """Causal attention over packed sequences of ``sizes`` (each reads only its own past)."""
    q, k, v = x @ WQ, x @ WK, x @ WV
    sequence = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    mask = (sequence[:, None] == sequence[None, :]) & torch.ones(T, T, dtype=torch.bool).tril()
    return torch.softmax((q @ k.T / D ** 0.5).masked_fill(~mask, float("-inf")), 1) @ v


def test_two_packed_sequences_of_512_are_bounded_by_their_band():
    x = _x()
    y = _packed(x, [512, 512])
    d = vjp_magic.dependency(y, x, seed=0)
    # the two sequences as blocks (found by block probes since s38), or their band's hull
    assert (d.kind == "block-lower-triangular" and d.blocks == (512, 512)) \
        or d.offsets == (-511, 0), d
    assert not d.pattern[T - 1, 0] and not d.pattern[512, 511]  # nothing across sequences
    assert _reads(y, x, 511)[0] and d.pattern[511, 0]


def test_packed_sequences_of_768_and_256_are_their_two_blocks():
    """Once a band holding them (offsets -767..0); now the blocks themselves (s40 F1), their
    sizes the sequences' lengths, nothing read across them."""
    x = _x()
    y = _packed(x, [768, 256])
    d = vjp_magic.dependency(y, x, seed=0)
    assert _reads(y, x, 767)[0] and not _reads(y, x, 800)[:768].any()
    assert d.kind == "block-lower-triangular" and d.blocks == (768, 256)
    assert d.pattern[767, 0] and not d.pattern[800, :768].any()


def _anticausal(x, leak):
    """Attention reading the future only (upper-triangular), plus one past read ``leak``."""
    q, k, v = x @ WQ, x @ WK, x @ WV
    mask = torch.ones(T, T, dtype=torch.bool).triu()
    mask[leak] = True
    return torch.softmax((q @ k.T / D ** 0.5).masked_fill(~mask, float("-inf")), 1) @ v


def test_a_past_leak_in_anticausal_attention_is_bounded_honestly():
    x = _x()
    y = _anticausal(x, (900, 100))
    d = vjp_magic.dependency(y, x, seed=0)
    assert _reads(y, x, 900)[100]
    assert _reads(y, x, d.witness[0])[d.witness[1]], f"witness {d.witness} is no dependence"
    assert d.offsets[0] <= -800
    assert d.pattern[900, 100]


def test_the_memory_refusal_names_a_real_dependence():
    x = _x()
    y = _attention(x, leak=(700, 900))
    with pytest.raises(vjp_magic.VJPUsageError) as error:
        vjp_magic.differentiate(y, x, memory_budget=1e8, seed=0)
    d = error.value.dependency
    assert _reads(y, x, d.witness[0])[d.witness[1]]


def test_a_future_leak_in_a_running_sum_at_4096_is_named():
    x = torch.randn(4096, 2, generator=torch.Generator().manual_seed(0)).requires_grad_()
    y = torch.cumsum(x, 0) * torch.tanh(x) + 0.5 * F.pad(x[3000:3001], (0, 0, 100, 3995))
    d = vjp_magic.dependency(y, x, seed=0)
    assert _reads(y, x, 100)[3000]
    assert _reads(y, x, d.witness[0])[d.witness[1]], f"witness {d.witness} is no dependence"
    assert d.offsets[1] >= 2900
    assert d.pattern[100, 3000]
