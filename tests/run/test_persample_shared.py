"""The per-layer rules read the analysed graph's replay (``%%vjp --wrt model``): no replay of
their own, the same values as a loop of per-sample backward passes (float64), samples that mix
refused there and left to the analysis, the cell's code run once, no user hook fired, the RNG
as a plain run leaves it."""
from __future__ import annotations

import pytest
import torch

from vjp_magic.run import expanded, persample

SETUP = {
    "mlp": """
model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3))
data = torch.randn(40, 5)
""",
    "cnn": """
model = torch.nn.Sequential(
    torch.nn.Conv2d(2, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
    torch.nn.Conv2d(4, 6, 3, stride=2, groups=2), torch.nn.Flatten(), torch.nn.Linear(6, 3))
data = torch.randn(36, 2, 6, 6)
""",
    "layer_norm": """
model = torch.nn.Sequential(torch.nn.Linear(5, 6), torch.nn.LayerNorm(6), torch.nn.ReLU(),
                            torch.nn.Dropout(0.3), torch.nn.Linear(6, 3))
data = torch.randn(33, 5)
""",
}
CELL = "losses = F.cross_entropy(model(data), targets, reduction='none')"


def _loop(losses, params: dict) -> dict:
    """The expected: one torch.autograd.grad per sample."""
    rows = [torch.autograd.grad(losses[b], list(params.values()), retain_graph=True)
            for b in range(losses.shape[0])]
    return {name: torch.stack([row[i] for row in rows]) for i, name in enumerate(params)}


@pytest.fixture
def spied(monkeypatch):
    """Which way the per-sample gradients were found: the rules' own replay raises."""
    ways = []
    real = expanded.captured_gradients

    def captured(*args, **kwargs):
        found = real(*args, **kwargs)
        ways.append("shared" if found is not None else "refused")
        return found

    def own(*_, **__):
        raise AssertionError("the rules replayed the cell themselves")

    monkeypatch.setattr(persample, "captured_gradients", captured)
    monkeypatch.setattr(persample, "per_sample_by_rules", own)
    return ways


@pytest.mark.parametrize("which", list(SETUP))
def test_the_rules_read_the_analysed_graphs_replay(which, ip, run_ok, spied):
    run_ok("import torch.nn.functional as F\ntorch.manual_seed(0)\n" + SETUP[which]
           + "model = model.double()\ndata = data.double()\n"
           + "targets = torch.randint(0, 3, (data.shape[0],))\ncalls = []\n"
           + "model[0].register_forward_hook(lambda *a: calls.append('forward'))\n"
           + "model[-1].register_full_backward_hook(lambda *a: calls.append('backward'))\n")
    run_ok(f"torch.manual_seed(5)\n{CELL}\ncalls.clear()")
    plain = torch.get_rng_state()
    run_ok("torch.manual_seed(5)")
    result = run_ok(f"%%vjp --wrt model\n{CELL}")
    assert torch.equal(plain, torch.get_rng_state())  # dropout drew as a plain run draws
    assert spied == ["shared"]
    assert ip.user_ns["calls"] == ["forward"]  # the cell's own run, once; no backward hook
    assert all(p.grad is None for p in ip.user_ns["model"].parameters())
    losses, params = ip.user_ns["losses"], dict(ip.user_ns["model"].named_parameters())
    for name, value in _loop(losses, params).items():
        torch.testing.assert_close(result.derivatives[f"model.{name}"], value,
                                   rtol=1e-10, atol=1e-12)


def test_samples_mixed_after_a_layer_are_refused_there(ip, run_ok, spied):
    """The check refuses them on the shared replay; the rules do not run again, and the
    analysis finds the true Jacobian itself."""
    run_ok("""
import torch.nn.functional as F
torch.manual_seed(1)
first, second = torch.nn.Linear(5, 7).double(), torch.nn.Linear(7, 3).double()
x, targets = torch.randn(34, 5, dtype=torch.float64), torch.randint(0, 3, (34,))
""")
    result = run_ok("%%vjp --wrt first.weight\nh = torch.tanh(first(x))\n"
                    "losses = F.cross_entropy(second(h - h.mean(0)), targets, reduction='none')")
    assert spied == ["refused"]
    ns = ip.user_ns
    first, second = ns["first"], ns["second"]

    def pure(w):
        h = torch.tanh(torch.nn.functional.linear(ns["x"], w, first.bias))
        return torch.nn.functional.cross_entropy(second(h - h.mean(0)), ns["targets"],
                                                 reduction="none")

    expected = torch.autograd.functional.jacobian(pure, first.weight.detach())
    torch.testing.assert_close(result.derivatives["first.weight"], expected)
