"""Per-sample gradients that all pass the probe rule make the result directly
(``run/persample.accepted_result``, ``pipeline.PER_SAMPLE_DIRECT``), not through the general
analysis: the same numbers, notes, seed and display as the analysis gives from the same
Jacobians, for the benchmark's models at a small batch; and wherever something is left to
decide (a Jacobian the probe refuses, one all 0), the analysis decides it, as before.
Expected per-sample gradients from ``torch.func.vmap(grad(...))`` (tests/per_sample_reference)
and one ``torch.autograd.grad`` per sample."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import vjp_magic
from vjp_magic import pipeline
from vjp_magic.core import analysis
from vjp_magic.run import expanded, persample
from vjp_magic.core.outer import written

sys.path.insert(0, str(Path(__file__).parents[1]))
from per_sample_reference import vmap_grad  # noqa: E402

MODELS = {
    "mlp": ("torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))",
            "torch.randn(B, 6)"),
    "cnn": ("torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), "
            "torch.nn.MaxPool2d(2), torch.nn.Conv2d(4, 5, 3, padding=1), torch.nn.ReLU(), "
            "torch.nn.Flatten(), torch.nn.Linear(5 * 4 * 4, 3))",
            "torch.randn(B, 1, 8, 8)"),
    "transformer": ("Encoder()", "torch.randn(B, 5, 16)"),
}
ENCODER = """
class Encoder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.TransformerEncoderLayer(16, 2, 24, dropout=0.0, batch_first=True)
        self.head = torch.nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.layer(x).mean(1))
"""
CELL = "losses = F.cross_entropy(model(data), targets, reduction='none')"


def _setup(ip, which: str, batch: int = 40) -> None:
    model, data = MODELS[which]
    result = ip.run_cell(f"import torch.nn.functional as F\ntorch.manual_seed(3)\nB = {batch}\n"
                         f"{ENCODER}\nmodel = {model}\ndata = {data}\n"
                         "targets = torch.randint(0, 3, (B,))")
    assert result.success


def _run(ip, monkeypatch, direct: bool, seed: int = 1234):
    """``%%vjp --wrt model`` with the probes' seed fixed, directly or through the analysis;
    (result, whether the direct path made it)."""
    monkeypatch.setattr(pipeline, "PER_SAMPLE_DIRECT", direct)
    monkeypatch.setattr(persample, "new_seed", lambda: seed)
    monkeypatch.setattr(analysis, "new_seed", lambda: seed)  # where the rules drew no probe
    made = []
    original = persample.accepted_result
    monkeypatch.setattr(persample, "accepted_result",
                        lambda *a, **k: made.append(original(*a, **k)) or made[-1])
    result = ip.run_cell(f"%%vjp --wrt model\n{CELL}")
    assert result.success, result.error_in_exec
    return result.result, bool(made) and made[-1] is not None


@pytest.mark.parametrize("which", sorted(MODELS))
def test_the_direct_result_is_the_analysis_result(ip, monkeypatch, which):
    _setup(ip, which)
    direct, taken = _run(ip, monkeypatch, True)
    general, _ = _run(ip, monkeypatch, False)
    assert taken or which == "transformer"  # (attention's rules run their own replay)
    assert direct.seed == general.seed == 1234
    assert direct.notes == general.notes
    assert set(direct.inputs) == set(general.inputs)
    assert list(direct.inputs) == list(general.inputs)
    for name in direct.inputs:
        assert torch.equal(direct.derivatives[name], general.derivatives[name]), name
        assert direct.point_axes[name] == general.point_axes[name]
        assert len(direct.gradients[name]) == len(general.gradients[name])
        assert all(torch.equal(a, b) for a, b in zip(direct.gradients[name],
                                                     general.gradients[name]))
        assert direct.inputs[name].evidence == general.inputs[name].evidence
        assert direct.inputs[name].unused == general.inputs[name].unused
        assert direct.inputs[name].tensor is general.inputs[name].tensor
    assert direct.memory_budget > 0 and general.memory_budget > 0  # (of free memory: varies)
    assert direct._repr_mimebundle_() == general._repr_mimebundle_()


@pytest.mark.parametrize("which", sorted(MODELS))
def test_the_direct_result_is_vmap_grad(ip, monkeypatch, which):
    _setup(ip, which)
    result, _ = _run(ip, monkeypatch, True)
    ns = ip.user_ns
    expected = vmap_grad(ns["model"], ns["data"], ns["targets"])
    for name, value in expected.items():
        torch.testing.assert_close(result.derivatives[f"model.{name}"], value,
                                   rtol=1e-4, atol=1e-5)
    assert all(p.grad is None for p in ns["model"].parameters())  # the user's .grad untouched


def _loop(ns) -> dict:
    losses = torch.nn.functional.cross_entropy(ns["model"](ns["data"]), ns["targets"],
                                               reduction="none")
    params = dict(ns["model"].named_parameters())
    rows = [torch.autograd.grad(losses[b], list(params.values()), retain_graph=True)
            for b in range(losses.shape[0])]
    return {f"model.{n}": torch.stack([row[i] for row in rows]) for i, n in enumerate(params)}


@pytest.mark.parametrize("row", [0, 17, 39])
def test_a_wrong_rule_row_is_refused_and_recomputed(ip, monkeypatch, row):
    """A per-sample gradient off in one row: the probe refuses it, no direct result is
    made, and the analysis computes the right one."""
    _setup(ip, "mlp")
    original = expanded._rule

    def wrong(use, bound, grad, *probe):
        found = original(use, bound, grad, *probe)
        if "weight" in found and found["weight"][0].shape[1:] == (8, 6):
            weight, magnitude = found["weight"]
            weight = written(weight).clone()  # (a Linear's is written when first read)
            weight[row, 2, 1] += 0.05 * float(weight[:, 2, 1].abs().sum()) + 1.0
            found = {**found, "weight": (weight, magnitude)}
        return found
    monkeypatch.setattr(expanded, "_rule", wrong)
    result, taken = _run(ip, monkeypatch, True)
    assert not taken
    for name, value in _loop(ip.user_ns).items():
        torch.testing.assert_close(result.derivatives[name], value, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("row", [0, 23])
def test_a_wrong_row_of_rules_on_their_own_replay_is_refused(ip, monkeypatch, row):
    """Attention's rules run on a replay of their own: no probe pass of the analysed graph
    comes with them, and the analysis makes probe 0's vᵀJ with a plain backward of it. A
    per-sample gradient off in one row (the feed-forward weight) is refused there, and the
    analysis computes the right one."""
    _setup(ip, "transformer")
    original = expanded._rule

    def wrong(use, bound, grad, *probe):
        found = original(use, bound, grad, *probe)
        if "weight" in found and found["weight"][0].shape[1:] == (24, 16):
            weight, magnitude = found["weight"]
            weight = written(weight).clone()
            weight[row, 5, 3] += 0.05 * float(weight[:, 5, 3].abs().sum()) + 1.0
            found = {**found, "weight": (weight, magnitude)}
        return found
    monkeypatch.setattr(expanded, "_rule", wrong)
    result, taken = _run(ip, monkeypatch, True)
    assert not taken
    for name, value in _loop(ip.user_ns).items():
        torch.testing.assert_close(result.derivatives[name], value, rtol=1e-4, atol=1e-5)


def test_a_parameter_with_all_zero_gradients_goes_to_the_analysis(ip, monkeypatch):
    """A layer whose gradients are all 0 (its output multiplied by 0): the analysis, which
    annotates zeros, decides; the result is what it gives on its own."""
    ip.run_cell("import torch.nn.functional as F\ntorch.manual_seed(4)\n"
                "model = torch.nn.ModuleList([torch.nn.Linear(6, 3), torch.nn.Linear(6, 3)])\n"
                "data, targets = torch.randn(40, 6), torch.randint(0, 3, (40,))")
    cell = ("losses = F.cross_entropy(model[0](data) + 0 * model[1](data), targets, "
            "reduction='none')")
    monkeypatch.setattr(persample, "new_seed", lambda: 99)
    monkeypatch.setattr(analysis, "new_seed", lambda: 99)
    results = []
    for direct in (True, False):
        monkeypatch.setattr(pipeline, "PER_SAMPLE_DIRECT", direct)
        found = ip.run_cell(f"%%vjp --wrt model\n{cell}")
        assert found.success, found.error_in_exec
        results.append(found.result)
    direct, general = results
    assert direct.notes == general.notes
    assert direct._repr_mimebundle_() == general._repr_mimebundle_()
    assert float(direct.derivatives["model.1.weight"].abs().sum()) == 0.0


def _differentiated(monkeypatch, direct: bool, inputs, names, made: list):
    monkeypatch.setattr(pipeline, "PER_SAMPLE_DIRECT", direct)
    original = persample.accepted_result
    monkeypatch.setattr(persample, "accepted_result",
                        lambda *a, **k: made.append(original(*a, **k)) or made[-1])
    torch.manual_seed(5)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3))
    data, targets = torch.randn(48, 5), torch.randint(0, 3, (48,))
    losses = lambda: torch.nn.functional.cross_entropy(model(data), targets,  # noqa: E731
                                                       reduction="none")
    return vjp_magic.differentiate(losses, inputs(model), names=names, seed=11), model


@pytest.mark.parametrize("aliased", [False, True])
def test_differentiate_of_a_function_gives_the_analysis_result(monkeypatch, aliased):
    """``differentiate(fn, model, seed=...)``; and one parameter under two names (the
    analysis decides then: each name gets all its derivatives)."""
    inputs = (lambda m: {"m": m, "w": m[0].weight}) if aliased else (lambda m: m)
    names = None if aliased else "m"
    made: list = []
    (direct, model), (general, _) = (_differentiated(monkeypatch, flag, inputs, names, made)
                                     for flag in (True, False))
    assert len(made) == 1 and (made[0] is None) == aliased  # the direct path, where it can
    assert direct.seed == general.seed == 11 and direct.notes == general.notes
    assert list(direct.inputs) == list(general.inputs)
    for name in direct.inputs:
        assert torch.equal(direct.derivatives[name], general.derivatives[name]), name
    assert direct._repr_mimebundle_() == general._repr_mimebundle_()
    if aliased:
        assert torch.equal(direct.derivatives["w"], direct.derivatives["m.0.weight"])
