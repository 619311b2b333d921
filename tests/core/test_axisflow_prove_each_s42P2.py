""":func:`vjp_magic.core.axisflow.prove_each` walks the graph and reads each node's shapes once
for several tensors (the per-sample rules' layer outputs, :func:`vjp_magic.run.expanded.
proved_apart`): every proof must be the one :func:`~vjp_magic.core.axisflow.prove` gives for
that tensor alone, field by field, on graphs with custom Functions, nodes without a rule, a
coupling across the batch, leaves and intermediates, and stopping early must stop the walk.

Expected values: ``prove`` on each tensor alone (the proof the per-output walks gave before),
and for the verdicts, the Jacobian's own zeros (``torch.autograd.functional.jacobian``).
"""
from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from vjp_magic.core import axisflow
from vjp_magic.run import expanded

B = 6


class _Identity(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad


def _graph(kind: str):
    """(losses, [intermediates and leaves below them]) of a small two-layer net."""
    torch.manual_seed(0)
    x = torch.randn(B, 4, dtype=torch.float64)
    w1 = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    w2 = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    h1 = x @ w1.t()
    r = torch.tanh(h1)
    if kind == "custom":
        r = _Identity.apply(r)
    elif kind == "pad":  # a node without an axis rule
        r = F.pad(r, (0, 1))[:, :5]
    elif kind == "coupled":  # every sample reads the batch mean
        r = r - r.mean(0, keepdim=True)
    h2 = r @ w2.t()
    losses = (h2 ** 2).sum(1)
    return losses, [h1, h2, w1, w2, x]


def _fields(proof) -> dict:
    return {f.name: getattr(proof, f.name) for f in dataclasses.fields(proof)}


@pytest.mark.parametrize("kind", ["plain", "custom", "pad", "coupled"])
def test_each_proof_is_the_one_proved_alone(kind):
    losses, tensors = _graph(kind)
    alone = [_fields(axisflow.prove(losses, t)) for t in tensors]
    together = [_fields(p) for p in axisflow.prove_each(losses, tensors)]
    assert together == alone


def test_the_output_itself_and_a_graphless_output():
    losses, tensors = _graph("plain")
    assert [_fields(p) for p in axisflow.prove_each(losses, [losses, tensors[0]])] == \
        [_fields(axisflow.prove(losses, losses)), _fields(axisflow.prove(losses, tensors[0]))]
    plain = torch.randn(3)
    assert [_fields(p) for p in axisflow.prove_each(plain, [plain, torch.randn(3)])] == \
        [_fields(axisflow.prove(plain, plain)), _fields(axisflow.prove(plain, torch.randn(3)))]


def test_stopping_at_the_first_refusal_proves_no_further(monkeypatch):
    losses, tensors = _graph("pad")
    calls = []
    original = axisflow.prove
    monkeypatch.setattr(axisflow, "prove", lambda *a: calls.append(a[1]) or original(*a))
    outs = [(tensors[0], 0), (tensors[1], 0)]
    assert not expanded.proved_apart(losses, outs)
    assert len(calls) == 1 and calls[0] is tensors[0]  # h1 is refused (the pad): h2 never


def _rows_apart(losses, tensor) -> bool:
    """Whether the Jacobian of ``losses`` in ``tensor`` is zero off the paired rows."""
    jac = torch.autograd.grad(losses, tensor, torch.eye(B, dtype=losses.dtype),
                              retain_graph=True, is_grads_batched=True)[0]  # row b: dloss_b
    off = jac.abs().reshape(B, B, -1).sum(2) * (1 - torch.eye(B, dtype=losses.dtype))
    return bool((off == 0).all())


@pytest.mark.parametrize("kind", ["plain", "coupled"])
def test_proved_apart_agrees_with_the_jacobian(kind):
    losses, tensors = _graph(kind)
    outs = [(tensors[0], 0), (tensors[1], 0)]
    proved = expanded.proved_apart(losses, outs)
    assert proved == (kind == "plain")
    if proved:  # a proof is never wrong: the Jacobian's rows are apart
        assert all(_rows_apart(losses, t) for t, _ in outs)
    else:
        assert not _rows_apart(losses, tensors[0])
