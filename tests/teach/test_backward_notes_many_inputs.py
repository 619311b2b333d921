"""A cell's own backward with a general v on a module of many tensors: the note names the
tensors as p_1, …, p_k and lists a few .grad (the rest counted), the chain rule's numbers for
one tensor (equal to the .grad the cell's backward filled), small."""
from __future__ import annotations

import re

import pytest

MODEL = """import torch.nn as nn
torch.manual_seed(0)
net = nn.Sequential(*[nn.Linear(6, 6) for _ in range(12)])
xb = torch.randn(3, 6)"""
CELL = "losses = net(xb).pow(2).sum(1)\nlosses.backward(torch.tensor([0.5, -1.5, 2.0]))"


def test_the_upstream_note_stays_small(ip, run_ok, run_vjp):
    run_ok(MODEL)
    r = run_vjp(CELL, "--wrt net")
    bundle = r._repr_mimebundle_()
    text = " ".join(bundle["text/plain"].split())
    assert "vᵀJ = ∇(ℓ∘f)(p_1, …, p_24)" in text
    assert "fills net[0].weight.grad, net[0].bias.grad, …, net[11].bias.grad (24 tensors)" \
        in text
    assert all(len(v.encode()) < 12_000 for v in bundle.values())
    shown = re.findall(r"vᵀ∂losses/∂(net\[\d+\]\.\w+) = ∇_\S+\(ℓ∘f\) = \[(\S+)", text)
    assert len(shown) == 1, shown
    name, first = shown[0]
    net = ip.user_ns["net"]
    grad = eval(name, {"net": net}).grad  # noqa: S307 - what the cell's backward filled
    assert float(first) == pytest.approx(float(grad.reshape(-1)[0]), rel=1e-2, abs=1e-3)
