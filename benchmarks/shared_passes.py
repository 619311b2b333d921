"""``--wrt net`` on a ResNet-like CNN: every parameter tensor differentiated in one group.

Run:  python benchmarks/shared_passes.py [--repeat 3] [--batch 8] [--width 64]

Per-sample losses (B,) of a small ResNet (conv+BN+ReLU blocks with skips, two downsampling
stages, 32×32 inputs) differentiated with respect to ``dict(net.named_parameters())`` by
``vjp_magic.differentiate``, against a loop of B ``torch.autograd.grad(losses[i], params,
retain_graph=True)``, in training and in eval mode. Prints the medians of alternated runs
(both sides see the same load), their ratio (target ≤ 2×) and the backward passes each
makes (the analysis: B plus a few probes, whatever the number of parameter tensors).
"""
from __future__ import annotations

import argparse
import os
import sys

import torch
from torch import nn

import vjp_magic

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from pass_counter import counted  # noqa: E402 - the tests' pass counter
from timing import paired_medians, row  # noqa: E402




def _block(c: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c),
                         nn.ReLU(), nn.Conv2d(c, c, 3, padding=1, bias=False),
                         nn.BatchNorm2d(c))


def _down(c_in: int, c_out: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU())


class ResNetLike(nn.Module):
    """Stem, then per stage a residual block, downsampling between stages; a linear head."""

    def __init__(self, width: int = 64, classes: int = 10) -> None:
        super().__init__()
        widths = [width, 2 * width, 4 * width]
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU())
        self.blocks = nn.ModuleList(_block(c) for c in widths)
        self.downs = nn.ModuleList(_down(a, b) for a, b in zip(widths, widths[1:]))
        self.head = nn.Linear(widths[-1], classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for i, block in enumerate(self.blocks):
            x = torch.relu(x + block(x))
            if i < len(self.downs):
                x = self.downs[i](x)
        return self.head(x.mean((2, 3)))


def bench_mode(net: nn.Module, train: bool, batch: int, repeat: int) -> bool:
    net.train(train)
    g = torch.Generator().manual_seed(0)
    data = torch.randn(batch, 3, 32, 32, generator=g)
    targets = torch.randint(0, 10, (batch,), generator=g)
    losses = nn.functional.cross_entropy(net(data), targets, reduction="none")
    params = dict(net.named_parameters())

    def ours():
        return vjp_magic.differentiate(losses, params, keep_graph=True)

    def loop():
        return [torch.autograd.grad(losses[i], list(params.values()), retain_graph=True)
                for i in range(batch)]

    result, rows = ours(), loop()
    for (name, _), column in zip(params.items(), zip(*rows)):  # the same numbers as the loop
        torch.testing.assert_close(result.inputs[name].derivatives, torch.stack(column),
                                   rtol=1e-4, atol=1e-5)
    passes = counted(ours)[1]
    t_ours, t_loop = paired_medians(ours, loop, repeat)
    mode = "train" if train else "eval"
    label = f"--wrt net, ResNet-like, {mode}, B={batch}"
    ok = row(label, t_ours, t_loop, f"loop of {batch} grads", 2.0, 1.5)
    print(f"  backward passes: ours {passes}, loop {batch} "
          f"({len(params)} parameter tensors)")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--width", type=int, default=64)
    args = parser.parse_args()
    torch.manual_seed(0)
    net = ResNetLike(args.width)
    count = sum(p.numel() for p in net.parameters())
    print(f"ResNet-like CNN: {count:,} parameters in {len(list(net.parameters()))} tensors "
          f"(noisy machine: medians of {args.repeat} alternated runs)")
    ok = all([bench_mode(net, train, args.batch, args.repeat) for train in (True, False)])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
