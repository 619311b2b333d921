"""The per-layer rules' per-sample check separates every pair of samples
(``run/expanded.py``: ``check_weights``, ``_output_gradients``), and a Jacobian so checked is
verified by probe 0 alone (``core/given.py``), still refusing a wrong entry. Expected values
from a loop of ``torch.autograd.grad`` per sample and ``torch.func.vmap(grad(...))``."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vjp_magic.core import analysis, derivatives
from vjp_magic.run import persample
from vjp_magic.run.expanded import check_weights, per_sample_by_rules
from vjp_magic.run.record import recording


@pytest.mark.parametrize("batch", [2, 40, 162, 163, 1024, 30000])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_every_pair_of_samples_gets_different_weights_in_some_pass(batch, dtype):
    passes = check_weights(batch, dtype)
    codes = torch.stack([w.double() for w in passes], 1)  # one row of weights per sample
    assert len(torch.unique(codes, dim=0)) == batch
    magnitudes = torch.log2(codes.abs())
    assert bool((magnitudes == magnitudes.round()).all())  # powers of two: exact scaling
    assert bool(torch.isfinite(codes).all()) and float(magnitudes.abs().max()) <= 40


def _one_pair(seed: int, batch: int = 300):
    """Sample 0's loss also reads sample 1's hidden row (its value unchanged): the true
    per-sample gradients differ from every row's own."""
    torch.manual_seed(seed)
    first, second = torch.nn.Linear(5, 7).double(), torch.nn.Linear(7, 3).double()
    x, targets = torch.randn(batch, 5, dtype=torch.float64), torch.randint(0, 3, (batch,))
    with recording() as record:
        h = torch.tanh(first(x))
        leak = (h[1:2] - h[1:2].detach()) * 3.0
        h = h + torch.cat([leak, torch.zeros_like(h[1:])])
        losses = F.cross_entropy(second(h), targets, reduction="none")
    params = {"w1": first.weight, "b1": first.bias, "w2": second.weight, "b2": second.bias}
    return record, losses, params


@pytest.mark.parametrize("seed", range(12))
def test_a_loss_reading_one_other_sample_is_refused_every_time(seed):
    """One pass with 14 random weights missed such a pair with probability 1/14; every pair
    is now told apart in some pass (the weights' draw is fresh each call)."""
    record, losses, params = _one_pair(seed)
    replay, data = persample.sample_data(record, params, losses)
    assert per_sample_by_rules(replay, params, data, losses) is None


def test_the_true_jacobian_comes_back_for_the_pair():
    record, losses, params = _one_pair(0, batch=40)
    r = analysis.differentiate(losses, params,
                               given=persample.per_sample_given(record, params, losses))
    for name, tensor in params.items():
        rows = [torch.autograd.grad(losses[b], tensor, retain_graph=True)[0]
                for b in range(losses.shape[0])]
        torch.testing.assert_close(r.derivatives[name], torch.stack(rows))


def _mlp(seed: int, batch: int = 64):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    x, targets = torch.randn(batch, 6), torch.randint(0, 3, (batch,))
    with recording() as record:
        losses = F.cross_entropy(model(x), targets, reduction="none")
    return model, x, targets, record, losses


def _counted(monkeypatch) -> list:
    calls = []
    original = derivatives.plain_vjp

    def counting(*args):
        calls.append(1)
        return original(*args)
    monkeypatch.setattr(derivatives, "plain_vjp", counting)
    monkeypatch.setattr("vjp_magic.core.given.plain_vjp", counting)
    monkeypatch.setattr("vjp_magic.core.probes.plain_vjp", counting)
    return calls


def test_separated_rules_take_probe_0_alone(monkeypatch):
    model, x, targets, record, losses = _mlp(1)
    params = dict(model.named_parameters())
    given = persample.per_sample_given(record, params, losses)
    assert all(g.samples_separated for g in given.values())
    calls = _counted(monkeypatch)
    r = analysis.differentiate(losses, params, given=given, seed=1)
    assert len(calls) == 1  # probe 0, for every parameter at once
    expected = torch.func.vmap(torch.func.grad(
        lambda p, xb, tb: F.cross_entropy(torch.func.functional_call(model, p, (xb[None],)),
                                          tb[None])), in_dims=(None, 0, 0))(
        {k: v.detach() for k, v in params.items()}, x, targets)
    for name, value in expected.items():
        torch.testing.assert_close(r.derivatives[name], value, rtol=1e-4, atol=1e-5)


def test_unseparated_jacobians_take_the_full_plan(monkeypatch):
    model, _, _, record, losses = _mlp(2)
    params = dict(model.named_parameters())
    given = {n: g.jacobian for n, g in persample.per_sample_given(record, params, losses).items()}
    calls = _counted(monkeypatch)
    analysis.differentiate(losses, params, given=given, seed=2)
    assert len(calls) == 7  # float32's probe plan


@pytest.mark.parametrize("row", [0, 17, 63])
def test_probe_0_still_refuses_a_wrong_row(row, monkeypatch):
    model, x, targets, record, losses = _mlp(3)
    params = dict(model.named_parameters())
    given = persample.per_sample_given(record, params, losses)
    wrong = given["2.weight"].jacobian.clone()
    column = float(wrong[:, 1, 4].abs().sum())  # M_i: the probe plan's threshold is 1.6 % of it
    wrong[row, 1, 4] += 0.02 * column if column else 1e-3
    given = {**given, "2.weight": given["2.weight"]._replace(jacobian=wrong)}
    r = analysis.differentiate(losses, params, given=given, seed=3)
    truth = torch.stack([torch.autograd.grad(losses[b], params["2.weight"],
                                             retain_graph=True)[0] for b in range(64)])
    torch.testing.assert_close(r.derivatives["2.weight"], truth)
