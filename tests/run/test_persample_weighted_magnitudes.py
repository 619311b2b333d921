"""A Linear weight's per-sample gradients come with |v|ᵀM made from the rule's factors
(``run/expanded.py``: ``_WeightedMagnitudes``), so that probe 0 judges them without reading
the per-sample gradients a second time (``core/given.py``). Expected scales from the
mathematics (M_b = Σ_t |g_bt| |a_btᵀ|, g from one backward of the summed losses), expected
values from ``torch.func.vmap(grad(...))``."""
from __future__ import annotations

import pytest
from per_sample_reference import vmap_grad
import torch
import torch.nn.functional as F

from vjp_magic.core import analysis
from vjp_magic.core import given as given_jacobians
from vjp_magic.core.probes import Probes
from vjp_magic.run import persample
from vjp_magic.run.expanded import FACTORED_POSITIONS
from vjp_magic.run.record import recording


class Tokens(torch.nn.Module):
    """A Linear over each token (its weight's entries sum over positions), then a head."""

    def __init__(self):
        super().__init__()
        self.inner = torch.nn.Linear(5, 7)
        self.head = torch.nn.Linear(7, 3)

    def forward(self, x):
        return self.head(torch.tanh(self.inner(x)).mean(1))


def _case(seed: int, batch: int = 40, length: int = 4, dtype=torch.float32):
    torch.manual_seed(seed)
    model = Tokens().to(dtype)
    x = torch.randn(batch, length, 5, dtype=dtype)
    targets = torch.randint(0, 3, (batch,))
    with recording() as record:
        losses = F.cross_entropy(model(x), targets, reduction="none")
    return model, x, targets, record, losses


@pytest.mark.parametrize("seed", [0, 1])
def test_the_weighted_magnitudes_are_the_terms_sizes(seed):
    model, x, targets, _, _ = _case(seed, dtype=torch.float64)
    inner = model.inner
    with recording() as record:
        losses = F.cross_entropy(model(x), targets, reduction="none")
    given = persample.per_sample_given(record, dict(model.named_parameters()), losses)
    scale = given["inner.weight"].weighted_magnitudes
    assert scale is not None and given["inner.weight"].magnitudes is None
    hidden = inner(x)  # the same layer, recomputed: g_bt is sample b's own gradient there
    g = torch.autograd.grad(F.cross_entropy(model.head(torch.tanh(hidden).mean(1)), targets,
                                            reduction="sum"), hidden)[0]
    v = torch.randn(2, x.shape[0], dtype=torch.float64)
    expected = torch.einsum("kb,bto,bti->koi", v.abs(), g.abs(), x.abs()).reshape(2, -1)
    torch.testing.assert_close(scale(v.abs()), expected)
    jacobian = given["inner.weight"].jacobian.reshape(x.shape[0], -1)
    assert bool(((v @ jacobian).abs() <= expected * (1 + 1e-12)).all())  # |vᵀD| ≤ |v|ᵀM


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_accepted_by_probe_0_with_the_vmap_values(seed):
    model, x, targets, record, losses = _case(seed)
    params = dict(model.named_parameters())
    given = persample.per_sample_given(record, params, losses)
    assert all(given[n].weighted_magnitudes is not None for n in ("inner.weight", "head.weight"))
    r = analysis.differentiate(losses, params, given=given, seed=seed)
    assert set(r.inputs) == set(params)
    expected = vmap_grad(model, x, targets)
    for name, value in expected.items():
        torch.testing.assert_close(r.derivatives[name], value, rtol=1e-4, atol=1e-5)
    j, m, s = given_jacobians.split(given)
    assert given_jacobians.agreed(Probes(losses, params, seed), j, m, s) == set(params)


@pytest.mark.parametrize("row", [0, 13, 39])
def test_a_wrong_entry_is_still_refused(row):
    model, x, targets, record, losses = _case(3)
    params = dict(model.named_parameters())
    given = persample.per_sample_given(record, params, losses)
    name = "inner.weight"
    wrong = given[name].jacobian.clone()
    column = float(wrong[:, 2, 3].abs().sum())  # M_i: the plan's threshold is 1.6 % of it
    wrong[row, 2, 3] += 0.02 * column
    j, m, s = given_jacobians.split({**given, name: given[name]._replace(jacobian=wrong)})
    assert given_jacobians.agreed(Probes(losses, params, 3), j, m, s) == set(params) - {name}
    r = analysis.differentiate(losses, params, seed=3,
                               given={**given, name: given[name]._replace(jacobian=wrong)})
    torch.testing.assert_close(r.derivatives[name], vmap_grad(model, x, targets)[name],
                               rtol=1e-4, atol=1e-5)  # recomputed: right again


@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
def test_a_nonfinite_weighted_scale_judges_as_the_plain_rule(bad):
    """An infinite scale would pass anything: it is ignored, and the plain |v|ᵀ|D| judges."""
    model, x, targets, record, losses = _case(4)
    params = dict(model.named_parameters())
    given = persample.per_sample_given(record, params, losses)
    name = "inner.weight"
    wrong = given[name].jacobian.clone()
    wrong[5, 2, 3] += 0.02 * float(wrong[:, 2, 3].abs().sum())

    def useless(rows):
        return torch.full((rows.shape[0], 35), bad)
    kept = given[name]._replace(weighted_magnitudes=useless)
    j, m, s = given_jacobians.split({**given, name: kept})
    assert name in given_jacobians.agreed(Probes(losses, params, 4), j, m, s)
    j, m, s = given_jacobians.split({**given, name: kept._replace(jacobian=wrong)})
    assert name not in given_jacobians.agreed(Probes(losses, params, 4), j, m, s)


def test_a_weight_read_twice_keeps_the_entrywise_rule():
    """A weight two Linear calls read sums two rules' terms: no factored scale for it."""
    torch.manual_seed(5)
    layer = torch.nn.Linear(4, 4)
    x = torch.randn(36, 4)
    with recording() as record:
        losses = layer(torch.tanh(layer(x))).pow(2).sum(1)
    params = dict(layer.named_parameters())
    given = persample.per_sample_given(record, params, losses)
    assert given is not None and given["weight"].weighted_magnitudes is None
    r = analysis.differentiate(losses, params, given=given, seed=5)
    rows = [torch.autograd.grad(losses[b], layer.weight, retain_graph=True)[0]
            for b in range(36)]
    torch.testing.assert_close(r.derivatives["weight"], torch.stack(rows), rtol=1e-4, atol=1e-5)


def test_a_cnns_rules_are_accepted_and_a_wrong_conv_entry_refused():
    """A convolution's weight keeps the entrywise rule (|v|ᵀM from its factors would cost a
    convolution per probe, more than reading its per-sample gradients once)."""
    torch.manual_seed(7)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 3))
    x, targets = torch.randn(32, 1, 6, 6), torch.randint(0, 3, (32,))
    with recording() as record:
        losses = F.cross_entropy(model(x), targets, reduction="none")
    params = dict(model.named_parameters())
    given = persample.per_sample_given(record, params, losses)
    assert given["0.weight"].weighted_magnitudes is None
    j, m, s = given_jacobians.split(given)
    assert given_jacobians.agreed(Probes(losses, params, 7), j, m, s) == set(params)
    wrong = given["0.weight"].jacobian.clone()
    wrong[9, 1, 0, 2, 2] += 0.02 * float(wrong[:, 1, 0, 2, 2].abs().sum())
    j, m, s = given_jacobians.split({**given, "0.weight": given["0.weight"]._replace(
        jacobian=wrong)})
    assert given_jacobians.agreed(Probes(losses, params, 7), j, m, s) == set(params) - {
        "0.weight"}
    r = analysis.differentiate(losses, params, given=given, seed=7)
    for name, value in vmap_grad(model, x, targets).items():
        torch.testing.assert_close(r.derivatives[name], value, rtol=1e-4, atol=1e-5)


def test_a_long_sequence_keeps_the_entrywise_rule():
    """Over many positions |v|ᵀM from the factors costs more than reading D once: none."""
    model, x, targets, record, losses = _case(8, batch=36, length=FACTORED_POSITIONS + 1)
    given = persample.per_sample_given(record, dict(model.named_parameters()), losses)
    assert given["inner.weight"].weighted_magnitudes is None
    assert given["head.weight"].weighted_magnitudes is not None  # one position per sample
    r = analysis.differentiate(losses, dict(model.named_parameters()), given=given, seed=8)
    for name, value in vmap_grad(model, x, targets).items():
        torch.testing.assert_close(r.derivatives[name], value, rtol=1e-4, atol=1e-5)
