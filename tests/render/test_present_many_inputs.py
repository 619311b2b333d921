"""--present on a module's per-sample losses: the largest tensors' derivatives lead (with the
line counting the components left out between them), no crash; the first shown equals
torch.func.jacrev's per-sample derivatives."""
from __future__ import annotations

import torch

MODEL = """import torch.nn as nn
torch.manual_seed(0)
net = nn.Sequential(*[nn.Linear(6, 6) for _ in range(12)])
xb = torch.randn(4, 6)"""


def test_present_on_per_sample_losses_of_many_tensors(ip, run_ok, run_vjp):
    run_ok(MODEL)
    r = run_vjp("losses = net(xb).pow(2).sum(1)", "--wrt net --present")
    text = r._repr_mimebundle_()["text/plain"]
    assert text.index("∂losses") < text.index("From 24 tensors")  # the derivatives lead
    net, xb = ip.user_ns["net"], ip.user_ns["xb"]
    params = {k: v.detach() for k, v in net.named_parameters()}
    expected = torch.func.jacrev(
        lambda p: torch.func.functional_call(net, p, (xb,)).pow(2).sum(1))(params)
    for name, value in expected.items():
        torch.testing.assert_close(r.derivatives[f"net.{name}"], value)
