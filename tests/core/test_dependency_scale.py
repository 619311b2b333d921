"""Dependency verdicts at scale (issue 23 item 2, issue 20 item 5): the pattern equals the
Jacobian's own at small sizes, and at large ones it costs a number of backward vectors set by
the structure, not the size (counted, not timed: the machine is shared); Ctrl-C gets through.

Expected patterns come from ``torch.autograd.functional.jacobian`` (``true_pattern``) or from
mathematics, never from the code under test.
"""
from __future__ import annotations

import _thread
import threading
import time

import pytest
import torch

from core.test_dependency import true_pattern
from vjp_magic.core import grouptest
from vjp_magic.core.dependency import dependency


def mlp(width=16):
    torch.manual_seed(0)
    w1, w2 = torch.randn(width, width) / 4, torch.randn(width, width) / 4
    return lambda x: torch.tanh(x @ w1.to(x.dtype)) @ w2.to(x.dtype)


def models(b):
    """name → f over a (b × 16) batch."""
    f = mlp()
    perm = torch.randperm(b, generator=torch.Generator().manual_seed(3))
    bn = torch.nn.BatchNorm1d(16).double().train()
    causal = torch.triu(torch.ones(b, b, dtype=torch.bool), 1)

    def leak(i, j):
        return lambda x: torch.index_add(f(x), 0, torch.tensor([i]), 0.1 * x[j:j + 1])

    def attention(x, after=False):
        s = x @ x.T / 4
        if not after:
            return torch.softmax(s.masked_fill(causal, -torch.inf), -1) @ x
        return torch.softmax(s, -1).masked_fill(causal, 0.0) @ x
    return {"clean": f, "adjacent": leak(1, 0), "distant": leak(b // 2, b // 3),
            "batchnorm": lambda x: f(bn(x)), "mixup": lambda x: f(0.7 * x + 0.3 * x[perm]),
            "causal": attention, "after-softmax": lambda x: attention(x, after=True)}


@pytest.mark.parametrize("name", list(models(4)))
def test_verdicts_equal_the_jacobians_pattern(name):
    b = 40
    f = models(b)[name]
    x = torch.randn(b, 16, dtype=torch.float64, requires_grad=True)
    d = dependency(f(x), x)
    assert torch.equal(d.pattern, true_pattern(f, x, 0, 0))
    assert d.complete and x.grad is None


class Counter:
    """Counts the vectors of every batched backward the group test makes."""

    def __init__(self, monkeypatch):
        self.vectors = 0
        original = grouptest.checked_batch  # (vjp_batch, its vectorised passes checked)

        def counted(output, inputs, grad_outputs, batched=True, log=None):
            self.vectors += len(grad_outputs)
            return original(output, inputs, grad_outputs, batched=batched, log=log)
        monkeypatch.setattr(grouptest, "checked_batch", counted)


@pytest.mark.parametrize("name, kind, witness, most", [
    ("adjacent", "band", (1, 0), 80),
    ("distant", "sparse", (2048, 1365), 80),
    ("mixup", "sparse", None, 80),
])
def test_leaks_at_4096_cost_a_few_dozen_vectors(monkeypatch, name, kind, witness, most):
    b = 4096
    f = models(b)[name]
    x = torch.randn(b, 16, requires_grad=True)
    y = f(x)
    count = Counter(monkeypatch)
    d = dependency(y, x)
    assert d.kind == kind and count.vectors <= most
    if witness is not None:
        assert d.witness == witness
    expected = torch.eye(b, dtype=torch.bool)
    if name == "mixup":
        perm = torch.randperm(b, generator=torch.Generator().manual_seed(3))
        expected[torch.arange(b), perm] = True
    else:
        expected[witness] = True
    assert torch.equal(d.pattern, expected)


def test_batchnorm_at_4096_is_dense_from_a_few_rows(monkeypatch):
    bn = torch.nn.BatchNorm1d(16).train()
    x = torch.randn(4096, 16, requires_grad=True)
    y = mlp()(bn(x))
    count = Counter(monkeypatch)
    d = dependency(y, x)
    assert (d.kind, d.witness) == ("dense", (0, 1)) and count.vectors <= 24
    assert not d.complete and "one by one" in d.note


def test_causal_attention_is_lower_triangular_from_bounds(monkeypatch):
    monkeypatch.setattr(grouptest, "RESOLVE_ROWS", 64)
    monkeypatch.setattr(grouptest, "RESOLVE_ENTRIES", 0)
    t = 512
    f = models(t)["causal"]
    x = torch.randn(t, 16, requires_grad=True)
    count = Counter(monkeypatch)
    d = dependency(f(x), x)
    assert (d.kind, d.witness, d.offsets) == ("lower-triangular", (1, 0), (-(t - 1), 0))
    assert not d.complete and count.vectors <= 40
    off_by_one = models(t)["after-softmax"]  # the normaliser reads every position: dense
    assert dependency(off_by_one(x), x).kind == "dense"


def test_a_conv_stack_at_4096_is_a_band_from_a_few_dozen_vectors(monkeypatch):
    torch.manual_seed(5)
    x = torch.randn(1, 4, 4096, requires_grad=True)
    h = x
    for _ in range(3):
        h = torch.tanh(torch.nn.functional.conv1d(h, torch.randn(4, 4, 3) / 3, padding=1))
    count = Counter(monkeypatch)
    d = dependency(h, x, 2, 2)
    assert (d.kind, d.offsets, d.witness) == ("band", (-3, 3), (0, 1))
    i, j = torch.arange(4096)[:, None], torch.arange(4096)[None, :]
    assert torch.equal(d.pattern, (j - i).abs() <= 3) and count.vectors <= 100


def test_ctrl_c_gets_through_a_long_dependency(monkeypatch):
    monkeypatch.setattr(grouptest, "RESOLVE_ROWS", 10**9)  # resolve every row: a long call
    torch.manual_seed(0)
    w = torch.randn(8, 8) / 3
    x = torch.randn(2000, 8, requires_grad=True)
    h, out = torch.zeros(8), []
    for t in range(len(x)):  # a recurrence over 2,000 steps: seconds per row, minutes in all
        h = torch.tanh(h @ w + x[t])
        out.append(h)
    y = torch.stack(out)
    fired = []
    timer = threading.Timer(0.5, lambda: (fired.append(time.perf_counter()),
                                          _thread.interrupt_main()))
    finished = []
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            dependency(y, x)
            finished.append(True)
            time.sleep(60)  # finished before the timer: wait for it (and fail below)
    finally:
        timer.cancel()
    assert not finished and fired
    assert time.perf_counter() - fired[0] < 1.5  # loose: a shared machine
