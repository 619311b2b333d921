"""Per-sample gradients end to end (issue 23, item 4): ``%%vjp --wrt model`` on a cell computing
per-sample losses, against the forward plus a hand-written ``torch.func.vmap(grad(...))``, and
against Opacus and BackPACK where they import (optional: ``pip install --no-deps opacus
backpack-for-pytorch`` and their small dependencies, torch left as it is).

Run:  python benchmarks/per_sample.py [--repeat 7] [--only mlp,cnn,transformer] [--replay]

``--replay`` adds ``%%vjp`` with the hook-free replay forced (``run.hookfree.OWN_GRAPH_WHEN_FREE``
off) to the same alternated runs: what differentiating the cell's own graph saves where no
backward of it can run the user's code.

Every figure is a ratio of medians taken alternately in the same run (noisy on a shared
machine). Each anchor runs the cell's forward too: ``%%vjp`` runs it once, as the cell.
"""
from __future__ import annotations

import argparse
import copy
import sys

import torch

from timing import alternated_medians, shell

SETUP = {
    "mlp": (1024, """
model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
data, targets = torch.randn(B, 32), torch.randint(0, 10, (B,))
"""),
    "cnn": (256, """
model = torch.nn.Sequential(
    torch.nn.Conv2d(1, 16, 5, padding=2), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
    torch.nn.Conv2d(16, 32, 5, padding=2), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
    torch.nn.Flatten(), torch.nn.Linear(32 * 7 * 7, 10))
data, targets = torch.randn(B, 1, 28, 28), torch.randint(0, 10, (B,))
"""),
    "transformer": (256, """
class Encoder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.TransformerEncoderLayer(64, 4, 128, dropout=0.0,
                                                      batch_first=True)
        self.head = torch.nn.Linear(64, 10)

    def forward(self, x):
        return self.head(self.layer(x).mean(1))

model = Encoder()
data, targets = torch.randn(B, 16, 64), torch.randint(0, 10, (B,))
"""),
}
CELL = "losses = F.cross_entropy(model(data), targets, reduction='none')"


def vmap_grad(ns: dict):
    """The forward the cell runs, then torch.func.vmap(grad(loss of one sample))."""
    import torch.nn.functional as F
    from torch.func import functional_call, grad, vmap

    model, data, targets = ns["model"], ns["data"], ns["targets"]
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(p, x, t):
        return F.cross_entropy(functional_call(model, p, (x.unsqueeze(0),)), t.unsqueeze(0))

    per_sample = vmap(grad(loss), in_dims=(None, 0, 0))

    def run():
        F.cross_entropy(model(data), targets, reduction="none")
        return per_sample(params, data, targets)
    return run


def opacus(ns: dict):
    """Opacus' GradSampleModule: forward, one backward of the summed loss, ``grad_sample``."""
    try:
        from opacus import GradSampleModule
    except Exception:  # noqa: BLE001 - optional
        return None
    model = GradSampleModule(copy.deepcopy(ns["model"]))
    loss = torch.nn.CrossEntropyLoss(reduction="sum")

    def run():
        model.zero_grad(set_to_none=True)
        loss(model(ns["data"]), ns["targets"]).backward()
        return {k: p.grad_sample for k, p in model.named_parameters()}
    try:
        run()
    except Exception as error:  # noqa: BLE001
        print(f"    Opacus does not run this model: {type(error).__name__}: {error}"[:200])
        return None
    return run


def backpack(ns: dict):
    """BackPACK's BatchGrad: forward, one backward of the summed loss, ``grad_batch``."""
    try:
        from backpack import backpack as context
        from backpack import extend
        from backpack.extensions import BatchGrad
    except Exception:  # noqa: BLE001 - optional
        return None
    model = extend(copy.deepcopy(ns["model"]))
    loss = extend(torch.nn.CrossEntropyLoss(reduction="sum"))

    def run():
        model.zero_grad(set_to_none=True)
        with context(BatchGrad()):
            loss(model(ns["data"]), ns["targets"]).backward()
        return {k: p.grad_batch for k, p in model.named_parameters()}
    try:
        run()
    except Exception as error:  # noqa: BLE001
        print(f"    BackPACK does not run this model: {type(error).__name__}: {error}"[:200])
        return None
    return run


def per_sample_only(ns: dict):
    """The cell's forward recorded, then ``per_sample_jacobians`` (what ``%%vjp`` hands the
    analysis as ``given``), without the analysis' probe check."""
    import torch.nn.functional as F

    from vjp_magic.run.persample import per_sample_jacobians
    from vjp_magic.run.record import recording

    params = dict(ns["model"].named_parameters())

    def run():
        with recording() as record:
            losses = F.cross_entropy(ns["model"](ns["data"]), ns["targets"], reduction="none")
        return per_sample_jacobians(record, params, losses)
    return run


def check_equal(result, expected: dict) -> bool:
    """Whether the magic's per-sample gradients equal the anchor's (float32 tolerance)."""
    return all(torch.allclose(result.derivatives[f"model.{name}"], value, rtol=1e-4, atol=1e-5)
               for name, value in expected.items())


def replayed(ours):
    """``ours`` with the hook-free replay forced (the path before the cell's own graph was
    differentiated where proved free of user code)."""
    from vjp_magic.run import hookfree

    def run():
        hookfree.OWN_GRAPH_WHEN_FREE = False
        try:
            return ours()
        finally:
            hookfree.OWN_GRAPH_WHEN_FREE = True
    return run


def bench(ip, which: str, repeat: int, replay: bool = False) -> dict:
    batch, setup = SETUP[which]
    ip.run_cell(f"import torch, torch.nn.functional as F\ntorch.manual_seed(0)\nB = {batch}\n"
                + setup)
    ns = ip.user_ns
    anchors = {"vmap(grad)": vmap_grad(ns)}
    for name, make in (("Opacus", opacus), ("BackPACK", backpack)):
        run = make(ns)
        if run is not None:
            anchors[name] = run
    ours = lambda: ip.run_cell_magic("vjp", "--wrt model", CELL)  # noqa: E731
    equal = check_equal(ours(), anchors["vmap(grad)"]())
    extra = {"%%vjp (replay)": replayed(ours)} if replay else {}
    medians = alternated_medians({"%%vjp": ours, **extra, "per-sample only": per_sample_only(ns),
                                  **anchors}, repeat)
    base = medians["vmap(grad)"]
    print(f"{which} B={batch}: %%vjp {medians['%%vjp'] * 1e3:.1f} ms "
          f"= {medians['%%vjp'] / base:.2f}x vmap(grad) ({base * 1e3:.1f} ms)"
          f"{'' if equal else '  VALUES DIFFER'}")
    if replay:
        again = medians["%%vjp (replay)"]
        print(f"    with the replay forced: {again * 1e3:.1f} ms = {again / base:.2f}x "
              f"vmap(grad); own graph / replay = {medians['%%vjp'] / again:.2f}")
    only = medians["per-sample only"]
    print(f"    per-sample gradients alone (record, replay, rules or vmap; no probe check): "
          f"{only * 1e3:.1f} ms = {only / base:.2f}x vmap(grad)")
    for name in anchors:
        if name != "vmap(grad)":
            print(f"    {name}: {medians[name] * 1e3:.1f} ms = {medians[name] / base:.2f}x "
                  f"vmap(grad); %%vjp/{name} = {medians['%%vjp'] / medians[name]:.2f}x")
    return medians


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--only", default=",".join(SETUP))
    parser.add_argument("--replay", action="store_true",
                        help="also time %%%%vjp with the hook-free replay forced")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    ip = shell()
    for which in args.only.split(","):
        bench(ip, which, args.repeat, args.replay)
    return 0


if __name__ == "__main__":
    sys.exit(main())
