"""Dependency verdicts at scale (issue 23 item 2, issue 20 item 5): time and peak RSS growth of
``vjp_magic.dependency`` per model, each case in a fresh process (so that one case's peak does
not hide the next's).

    python benchmarks/dependency_scale.py            # every case, median of 3
    python benchmarks/dependency_scale.py bn mixup   # some cases
    python benchmarks/dependency_scale.py --once ghost64-leak   # one run (a slow baseline)

Seconds are wall-clock, CPU the process's CPU time (the figure to compare on a loaded machine).
"""
from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import time

import torch

B, T, L = 4096, 1024, 4096


def mlp(x, leak=None):
    torch.manual_seed(0)
    w1, w2 = torch.randn(64, 64) / 8, torch.randn(64, 64) / 8
    y = torch.tanh(x @ w1) @ w2
    if leak is not None:
        i, j = leak
        y = torch.index_add(y, 0, torch.tensor([i]), 0.1 * x[j:j + 1])
    return y


def attention(x, mask=None):
    torch.manual_seed(0)
    d = x.shape[1]
    wq, wk, wv = (torch.randn(d, d) / d**0.5 for _ in range(3))
    s = (x @ wq) @ (x @ wk).T / d**0.5
    causal = torch.triu(torch.ones(len(x), len(x), dtype=torch.bool), 1)
    if mask == "causal":
        s = s.masked_fill(causal, -torch.inf)
    a = torch.softmax(s, -1)
    if mask == "after":
        a = a.masked_fill(causal, 0.0)
    return a @ (x @ wv)


def conv_stack(x, variant="plain"):
    """Three width-3 Conv1d layers (x's channels) and tanh: plain, dilated (1, 2, 4), circular
    padding, or the first of stride 2."""
    torch.manual_seed(0)
    F = torch.nn.functional
    channels = x.shape[1]
    for k in range(3):
        w = torch.randn(channels, channels, 3) / (5 * (channels / 8) ** 0.5)
        if variant == "dilated":
            x = F.conv1d(x, w, padding=2**k, dilation=2**k)
        elif variant == "circular":
            x = F.conv1d(F.pad(x, (1, 1), mode="circular"), w)
        else:
            x = F.conv1d(x, w, padding=1, stride=2 if variant == "strided" and k == 0 else 1)
        x = torch.tanh(x)
    return x


def ghost(x, group, leak=None):
    """Centring within groups of ``group`` samples (ghost-batch statistics), then the MLP."""
    c = x.view(len(x) // group, group, -1)
    c = (c - c.mean(1, keepdim=True)).reshape(x.shape)
    return mlp(c, leak)


LENGTHS = (100, 300, 156, 468)  # packed sequences of varying lengths (T in all)


def packed(x, length, extra=()):
    """Causal attention over sequences of ``length`` (or of :data:`LENGTHS`, length 0)
    packed along x; ``extra``: (i, j) reads the mask also allows."""
    t = len(x)
    mask = torch.zeros(t, t, dtype=torch.bool)
    starts = torch.tensor((0,) + LENGTHS).cumsum(0).tolist() if not length else \
        list(range(0, t + 1, length))
    for s, e in zip(starts, starts[1:]):
        mask[s:e, s:e] = torch.tril(torch.ones(e - s, e - s).bool())
    for i, j in extra:
        mask[i, j] = True
    return torch.softmax((x @ x.T / 8).masked_fill(~mask, -torch.inf), -1) @ x


def case(name):
    """(output, x, out_axis, in_axis) of one case."""
    torch.manual_seed(1)
    if name.startswith("mlp") or name in ("adjacent", "distant", "bn", "mixup"):
        x = torch.randn(B, 64, requires_grad=True)
        if name == "bn":
            bn = torch.nn.BatchNorm1d(64).train()
            return mlp(bn(x)), x, 0, 0
        if name == "mixup":
            perm = torch.randperm(B, generator=torch.Generator().manual_seed(2))
            return mlp(0.7 * x + 0.3 * x[perm]), x, 0, 0
        leak = {"adjacent": (1, 0), "distant": (2048, 1365)}.get(name)
        return mlp(x, leak), x, 0, 0
    if name.startswith("ghost"):  # ghost16, ghost64, ghost64-leak
        x = torch.randn(B, 64, requires_grad=True)
        group, _, leak = name[5:].partition("-")
        return ghost(x, int(group), (2048, 1365) if leak else None), x, 0, 0
    if name.startswith("packed"):  # packed256, packed256-leak (a later read, one across),
        x = torch.randn(T, 64, requires_grad=True)  # packedvar: of LENGTHS
        length, _, leak = name[6:].partition("-")
        length = 0 if length == "var" else int(length)
        return packed(x, length, ((300, 400), (700, 100)) if leak else ()), x, 0, 0
    if name.startswith("attention"):
        x = torch.randn(T, 64, requires_grad=True)
        return attention(x, name.partition("-")[2] or None), x, 0, 0
    if name.startswith("conv"):  # conv, conv-dilated, conv16-circular (16 channels)
        channels = 16 if name.startswith("conv16") else 8
        x = torch.randn(1, channels, L, requires_grad=True)
        return conv_stack(x, name.partition("-")[2] or "plain"), x, 2, 2
    if name == "expert-choice":  # 3 experts take their top-2 tokens, softmax over tokens:
        x = torch.randn(B, 8, requires_grad=True)  # 6 output rows read every token
        router = torch.randn(8, 3)
        gates, chosen = (x @ router).softmax(0).topk(2, dim=0)
        y = torch.zeros_like(x)
        for e in range(3):
            y = y.index_add(0, chosen[:, e], gates[:, e:e + 1] * torch.tanh(x[chosen[:, e]]))
        return y, x, 0, 0
    if name == "periodic":
        x = torch.randn(L, requires_grad=True)
        return x.roll(1) - 2 * x + x.roll(-1) + x**3, x, 0, 0
    raise ValueError(name)


CASES = ["mlp", "adjacent", "distant", "bn", "mixup", "attention", "attention-causal",
         "attention-after", "conv", "conv-dilated", "conv-circular", "conv-strided", "periodic",
         "ghost16", "ghost64", "ghost64-leak", "packed256", "packed256-leak", "packedvar",
         "packedvar-leak", "conv16-dilated", "conv16-circular", "expert-choice"]


def run_one(name):
    import vjp_magic
    y, x, a, b = case(name)
    v = torch.randn_like(y)
    torch.autograd.grad(y, x, v, retain_graph=True)  # torch's first-call set-up, not ours
    began = time.perf_counter()
    torch.autograd.grad(y, x, v, retain_graph=True)
    backward = time.perf_counter() - began
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    began, cpu = time.perf_counter(), time.process_time()
    d = vjp_magic.dependency(y, x, a, b)
    seconds, cpu = time.perf_counter() - began, time.process_time() - cpu
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 2**20  # GiB
    print(json.dumps({"case": name, "seconds": seconds, "cpu": cpu, "rss_gib": grown,
                      "backward": backward, "verdict": d.summary(), "witness": d.witness}))


def main(names, repeats=3):
    for name in names:
        runs = []
        for _ in range(repeats):
            out = subprocess.run([sys.executable, __file__, "--one", name], check=True,
                                 capture_output=True, text=True).stdout
            runs.append(json.loads(out.strip().splitlines()[-1]))
        seconds = statistics.median(r["seconds"] for r in runs)
        cpu = statistics.median(r["cpu"] for r in runs)
        grown = statistics.median(r["rss_gib"] for r in runs)
        ratio = statistics.median(r["seconds"] / r["backward"] for r in runs)
        print(f"{name:18s} {seconds:6.2f} s  {cpu:6.2f} s CPU  {ratio:6.1f}× a backward  "
              f"{grown:5.2f} GiB  {runs[0]['verdict']}"
              f"  witness {runs[0]['witness']}", flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--one"]:
        run_one(sys.argv[2])
    else:  # --once: one run a case (a slow baseline)
        names = [a for a in sys.argv[1:] if a != "--once"]
        main(names or CASES, 1 if "--once" in sys.argv else 3)
