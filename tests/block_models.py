"""Block-diagonal batches for the dependency tests (issue 23): ghost-batch statistics and
packed causal sequences, with leaks where asked, the Jacobian's own pattern to compare
against, and a counter of the group test's probe vectors."""
from __future__ import annotations

import torch

from vjp_magic.core import grouptest


class VectorCounter:
    """Counts the vectors of every batched backward the group test makes (``.count``)."""

    def __init__(self, monkeypatch):
        self.count = 0
        original = grouptest.checked_batch

        def counted(output, inputs, grad_outputs, batched=True, log=None):
            self.count += len(grad_outputs)
            return original(output, inputs, grad_outputs, batched=batched, log=log)
        monkeypatch.setattr(grouptest, "checked_batch", counted)


def ghost_batch(b: int, group: int, leaks=(), centred: bool = False, features: int = 16,
                width: int = 16, scale: float = 4.0):
    """Centring within groups of ``group`` consecutive samples (ghost batch statistics,
    per-graph mean pooling), then an MLP (features -> width -> width, weights / ``scale``):
    block-diagonal, blocks of ``group``. Each leak (i, j): y[i] also reads x[j] a little (the
    centred c[j], which reads j's whole group, where ``centred``)."""
    torch.manual_seed(0)
    w1, w2 = torch.randn(features, width) / scale, torch.randn(width, width) / scale

    def f(x):
        c = x.view(b // group, group, features)
        c = (c - c.mean(1, keepdim=True)).reshape(b, features)
        source = c if centred else x
        for i, j in leaks:
            c = c + torch.nn.functional.one_hot(torch.tensor(i), b).to(x)[:, None] \
                * 0.1 * source[j]
        return torch.tanh(c @ w1.to(x.dtype)) @ w2.to(x.dtype)
    return f


def packed_attention(t: int, length, extra=()):
    """(f, mask): causal self-attention over ``t`` tokens packed as sequences of ``length``
    (an int: all of it; a tuple: those lengths in order, summing to ``t``): y[i] reads x[j]
    exactly where j <= i in i's own sequence (the mask, by mathematics); ``extra``: (i, j)
    reads the mask also allows."""
    lengths = (length,) * (t // length) if isinstance(length, int) else tuple(length)
    mask = torch.zeros(t, t, dtype=torch.bool)
    starts = torch.tensor((0,) + lengths).cumsum(0).tolist()
    for s, e in zip(starts, starts[1:]):
        mask[s:e, s:e] = torch.tril(torch.ones(e - s, e - s, dtype=torch.bool))
    for i, j in extra:
        mask[i, j] = True

    def f(x):
        return torch.softmax((x @ x.T / 4).masked_fill(~mask, -torch.inf), -1) @ x
    return f, mask


def grouped_mean(sizes, features: int = 8, leaks=()):
    """(f, mask): each sample centred on the mean of its group (consecutive groups of
    ``sizes``), then tanh: y[i] reads x[j] exactly where i and j share a group (the mask, by
    mathematics); each leak (i, j): y[i] also reads x[j]."""
    b = sum(sizes)
    group = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    same = group[:, None] == group[None, :]
    average = same.double() / same.sum(1, keepdim=True)
    mask = same.clone()
    for i, j in leaks:
        mask[i, j] = True

    def f(x):
        c = x - average.to(x.dtype) @ x
        for i, j in leaks:
            c = c + torch.nn.functional.one_hot(torch.tensor(i), b).to(x)[:, None] * 0.1 * x[j]
        return torch.tanh(c)
    return f, mask


def jacobian_pattern(f, x: torch.Tensor) -> torch.Tensor:
    """Which y[i] read which x[j] along axis 0: torch.autograd.functional.jacobian's nonzeros."""
    return (torch.autograd.functional.jacobian(f, x.detach()) != 0).any(-1).any(1)
