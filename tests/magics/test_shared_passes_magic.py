"""``%%vjp --wrt net`` differentiates every parameter tensor in one group: B backward passes
for a batch of B per-sample losses, and a few probes, whatever the number of tensors.
Passes are counted at autograd's engine; expected numbers from a loop of
torch.autograd.grad."""
from __future__ import annotations

import torch

from pass_counter import counted

CELL = """torch.manual_seed(0)
net = torch.nn.Sequential(
    torch.nn.Conv2d(2, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
    torch.nn.Conv2d(4, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
    torch.nn.Conv2d(4, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
    torch.nn.Linear(4 * 25, 3)).double()
data = torch.randn(8, 2, 5, 5, dtype=torch.float64)
targets = torch.randint(0, 3, (8,))"""




def test_wrt_net_makes_b_passes_for_all_its_parameters(ip, run_ok, run_vjp):
    run_ok(CELL)
    r, passes = counted(lambda: run_vjp(
        "losses = torch.nn.functional.cross_entropy(net(data), targets, reduction='none')",
        line="--wrt net"))
    net, losses = ip.user_ns["net"], ip.user_ns["losses"]
    params = dict(net.named_parameters())
    assert len(params) == 14 and len(r.derivatives) == 14
    # not 8 per parameter tensor (14 x 8 = 112): B, the probe, the two passes measuring its
    # rounding noise, and where that noise cannot be excused (the conv biases before a
    # BatchNorm have derivatives exactly 0, computed as rounding at O(1) intermediate values:
    # about one run in five, by the run's random probe) the B - 1 vectorised components
    # computed again by plain passes, as the batching check does
    assert passes <= 2 * 8 + 5
    rows = [torch.autograd.grad(losses[i], list(params.values()), retain_graph=True)
            for i in range(8)]
    for (name, p), column in zip(params.items(), zip(*rows)):
        torch.testing.assert_close(r.derivatives[f"net.{name}"], torch.stack(column))
        assert p.grad is None
