"""--explain on a module of many parameter tensors: the steps once (for the tensor with the
largest derivatives, by torch.autograd.grad's norms), small, with the other tensors counted;
plain text without TeX braces."""
from __future__ import annotations

import torch

MODEL = """import torch.nn as nn
torch.manual_seed(0)
net = nn.Sequential(*[nn.Linear(6, 6) for _ in range(12)])
xb = torch.randn(3, 6)"""


def test_the_steps_come_once_for_the_largest(ip, run_ok, run_vjp):
    run_ok(MODEL)
    r = run_vjp("loss = net(xb).pow(2).sum()", "--wrt net --explain")
    net, xb = ip.user_ns["net"], ip.user_ns["xb"]
    params = dict(net.named_parameters())
    grads = torch.autograd.grad(net(xb).pow(2).sum(), list(params.values()))
    largest = max(zip(params, grads), key=lambda kv: float(kv[1].norm()))[0]
    spelled = "net[" + largest.replace(".", "].", 1)
    bundle = r._repr_mimebundle_()
    text = " ".join(bundle["text/plain"].split())
    assert "loss = f(p_1, …, p_24) of 24 tensors p: net[0].weight, net[0].bias, …, " \
           "net[11].bias" in text
    assert f"n = {sum(p.numel() for p in params.values()):,} entries in all" in text
    assert f"here for {spelled}, whose derivatives are the largest" in text
    assert text.count("2. The Jacobian") == 1 and "_{" not in text
    assert all(len(v.encode()) < 12_000 for v in bundle.values())


def test_per_sample_losses_keep_the_gradient_arguments(run_ok, run_vjp):
    run_ok(MODEL)
    r = run_vjp("losses = net(xb).pow(2).sum(1)", "--wrt net --explain")
    text = " ".join(r._repr_mimebundle_()["text/plain"].split())
    assert "One gradient argument per component, 3 backward calls" in text
    assert "m × n = 3 × 6" in text
