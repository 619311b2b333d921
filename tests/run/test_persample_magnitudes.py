"""Per-sample gradients whose entries sum terms that cancel (``run/expanded.py``'s magnitudes,
judged by ``core/given.py``): self-attention's key bias has a true gradient of exactly 0, and
in float32 both the rules' per-sample values and the backward's probe are rounding noise.
Judged against the magnitudes of the terms that sum into each entry, the rules' Jacobians are
accepted (no fallback to one backward per sample); a wrong entry is still refused. Expected
values from ``torch.func.vmap(grad(...))``."""
from __future__ import annotations

import pytest
from per_sample_reference import vmap_grad
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from vjp_magic.core import analysis
from vjp_magic.core import given as given_jacobians
from vjp_magic.core.probes import Probes
from vjp_magic.run import persample
from vjp_magic.run.record import recording


class Encoder(torch.nn.Module):
    def __init__(self, width: int = 16, heads: int = 2):
        super().__init__()
        self.layer = torch.nn.TransformerEncoderLayer(width, heads, 32, dropout=0.0,
                                                      batch_first=True)
        self.head = torch.nn.Linear(width, 3)

    def forward(self, x):
        return self.head(self.layer(x).mean(1))


def _case(seed: int, batch: int = 24, length: int = 6):
    torch.manual_seed(seed)
    model = Encoder()
    x = torch.randn(batch, length, 16)
    targets = torch.randint(0, 3, (batch,))
    with recording() as record:
        losses = F.cross_entropy(model(x), targets, reduction="none")
    return model, x, targets, record, losses


def _accepted(monkeypatch) -> list:
    seen = []
    original = given_jacobians.agreed

    def spy(*args):
        found = original(*args)
        seen.append(found)
        return found
    monkeypatch.setattr(given_jacobians, "agreed", spy)
    return seen


@pytest.mark.filterwarnings("ignore::UserWarning")  # vmap's fallback for attention kernels
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_attention_rules_are_accepted_in_float32(seed, monkeypatch):
    model, x, targets, record, losses = _case(seed)
    params = dict(model.named_parameters())
    given = persample.per_sample_given(record, params, losses)
    assert given is not None
    bias = "layer.self_attn.in_proj_bias"
    assert given[bias].magnitudes is not None  # summed over positions: magnitudes come along
    assert given["layer.linear1.weight"].magnitudes is None
    seen = _accepted(monkeypatch)
    r = analysis.differentiate(losses, params, given=given, seed=seed)
    assert seen and seen[0] == set(params)  # every one accepted: no per-sample fallback
    expected = vmap_grad(model, x, targets)
    for name, value in expected.items():
        torch.testing.assert_close(r.derivatives[name], value, rtol=1e-4, atol=1e-5)
    key = slice(16, 32)  # the key projection's bias: its true gradient is 0
    assert float(r.derivatives[bias][:, key].abs().max()) < 1e-5


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("which", ["key bias", "value bias", "weight"])
def test_a_wrong_entry_is_refused_despite_the_magnitudes(which, monkeypatch):
    model, x, targets, record, losses = _case(3)
    params = dict(model.named_parameters())
    given = persample.per_sample_given(record, params, losses)
    bias = "layer.self_attn.in_proj_bias"
    if which == "weight":
        name = "layer.linear1.weight"
        wrong = given[name].jacobian.clone()
        wrong[5, 2, 3] += 1e-2 * float(wrong.abs().max())
    else:
        name = bias
        wrong = given[bias].jacobian.clone()
        entry = 20 if which == "key bias" else 36
        wrong[5, entry] += 1e-2 * float(wrong.abs().max())
    given = {**given, name: given[name]._replace(jacobian=wrong)}
    seen = _accepted(monkeypatch)
    r = analysis.differentiate(losses, params, given=given, seed=3)
    assert name not in seen[0] and set(seen[0]) == set(params) - {name}
    expected = vmap_grad(model, x, targets)  # recomputed by the analysis: right again
    torch.testing.assert_close(r.derivatives[name], expected[name], rtol=1e-4, atol=1e-5)


def test_magnitudes_below_the_entries_do_not_loosen_the_rule():
    """The rule's scale is max(M, |D|): magnitudes of zero judge as |D| does, and a wrong
    entry is refused either way."""
    torch.manual_seed(4)
    x = torch.randn(6, 3, requires_grad=True)
    y = (x**2).sum(1)
    jacobian = torch.zeros(6, 6, 3)
    for b in range(6):
        jacobian[b, b] = 2 * x[b].detach()
    probes = Probes(y, {"x": x}, 11)
    zeros = torch.zeros_like(jacobian)
    assert given_jacobians.agreed(probes, {"x": jacobian}, {"x": zeros}) == {"x"}
    wrong = jacobian.clone()
    wrong[2, 2, 1] *= 1.001
    assert given_jacobians.agreed(probes, {"x": wrong}, {"x": zeros}) == set()
    assert given_jacobians.agreed(probes, {"x": wrong}, {}) == set()


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_the_magic_takes_the_rules_for_a_float32_encoder(ip, run_ok, monkeypatch):
    """``%%vjp --wrt model`` end to end: the pipeline hands the magnitudes on, every parameter's
    per-sample gradients are accepted as given, and they equal ``vmap(grad)``'s."""
    run_ok("""
import torch.nn.functional as F
torch.manual_seed(5)
layer = torch.nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
head = torch.nn.Linear(16, 3)
model = torch.nn.ModuleDict({"layer": layer, "head": head})
data, targets = torch.randn(40, 6, 16), torch.randint(0, 3, (40,))
""")
    seen = _accepted(monkeypatch)
    result = run_ok("%%vjp --wrt model\n"
                    "losses = F.cross_entropy(head(layer(data).mean(1)), targets, "
                    "reduction='none')")
    model = ip.user_ns["model"]
    params = dict(model.named_parameters())
    assert seen and seen[0] == {f"model.{name}" for name in params}
    data, targets = ip.user_ns["data"], ip.user_ns["targets"]
    detached = {k: v.detach() for k, v in params.items()}

    def loss(p, xb, tb):
        hidden = functional_call(model["layer"], {k[6:]: v for k, v in p.items()
                                                  if k.startswith("layer.")}, (xb[None],))
        logits = functional_call(model["head"], {k[5:]: v for k, v in p.items()
                                                 if k.startswith("head.")}, (hidden.mean(1),))
        return F.cross_entropy(logits, tb[None])

    expected = vmap(grad(loss), in_dims=(None, 0, 0))(detached, data, targets)
    for name, value in expected.items():
        torch.testing.assert_close(result.derivatives[f"model.{name}"], value,
                                   rtol=1e-4, atol=1e-5)


def test_infinite_magnitudes_are_not_used():
    torch.manual_seed(6)
    x = torch.randn(5, 2, requires_grad=True)
    y = (x**3).sum(1)
    wrong = torch.zeros(5, 5, 2)
    for b in range(5):
        wrong[b, b] = 3 * x[b].detach() ** 2
    wrong[1, 1, 0] += 0.5
    probes = Probes(y, {"x": x}, 12)
    infinite = torch.full_like(wrong, float("inf"))
    assert given_jacobians.agreed(probes, {"x": wrong}, {"x": infinite}) == set()
