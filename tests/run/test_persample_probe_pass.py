"""The per-layer rules' first check pass is weighted by the analysis' probe 0 (drawn from
the run's seed), and that same backward gives the analysis probe 0's vᵀJ: no backward of
its own (``run/expanded.py``: ``check_weights(first=...)``; ``run/persample.py``;
``core/given.py``). Every pair of samples is still told apart; the vᵀJ is used only where
its probe is the analysis' probe 0. Expected values from one ``torch.autograd.grad`` per
sample and ``torch.func.vmap(grad(...))``."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import vjp_magic
from vjp_magic.core import analysis, derivatives
from vjp_magic.core.probes import probe_vector
from vjp_magic.run import persample
from vjp_magic.core.outer import written
from vjp_magic.run.expanded import check_weights
from vjp_magic.run.record import recording


@pytest.mark.parametrize("batch", [2, 40, 163, 1024, 30000])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
def test_the_passes_after_probe_0_tell_apart_the_samples_it_weights_alike(batch, dtype):
    first = probe_vector(torch.zeros(batch, dtype=dtype), seed=batch, draw=0)
    passes = check_weights(batch, dtype, first=first)
    assert passes[0] is first
    codes = torch.stack([w.double() for w in passes], 1)
    assert len(torch.unique(codes, dim=0)) == batch  # every pair differs in some pass
    exponents = torch.log2(codes.abs())
    assert bool((exponents == exponents.round()).all()) and float(exponents.abs().max()) <= 40
    alike = int(torch.unique(first, return_counts=True)[1].max())
    values = 2 * (2 * (4 if dtype == torch.float16 else 40) + 1)
    assert values ** (len(passes) - 1) >= alike > values ** (len(passes) - 2) \
        or (alike == 1 and len(passes) == 1)  # as few passes as the largest class needs


def _mlp(seed: int, batch: int = 96):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    x, targets = torch.randn(batch, 6), torch.randint(0, 3, (batch,))
    return model, x, targets


def _loop(losses, params: dict) -> dict:
    rows = [torch.autograd.grad(losses[b], list(params.values()), retain_graph=True)
            for b in range(losses.shape[0])]
    return {name: torch.stack([row[i] for row in rows]) for i, name in enumerate(params)}


def _counted(monkeypatch) -> list:
    calls = []
    original = derivatives.plain_vjp

    def counting(*args):
        calls.append(args[0])
        return original(*args)
    for where in ("vjp_magic.core.derivatives", "vjp_magic.core.given", "vjp_magic.core.probes"):
        monkeypatch.setattr(f"{where}.plain_vjp", counting)
    return calls


@pytest.mark.parametrize("seed", [None, 7])
def test_the_analysis_takes_probe_0_from_the_rules_pass(seed, monkeypatch):
    model, x, targets = _mlp(1)
    calls = _counted(monkeypatch)
    seen = []
    original = analysis.differentiate

    def spy(*args, **kwargs):
        seen.append(len(calls))
        found = original(*args, **kwargs)
        seen.append(len(calls))
        return found
    monkeypatch.setattr(analysis, "differentiate", spy)
    options = {} if seed is None else {"seed": seed}
    r = vjp_magic.differentiate(
        lambda: F.cross_entropy(model(x), targets, reduction="none"), model, names="m",
        **options)
    assert seen[0] == seen[1]  # the analysis ran no backward of its own for probe 0
    assert seed is None or r.seed == seed
    losses = F.cross_entropy(model(x), targets, reduction="none")
    expected = _loop(losses, dict(model.named_parameters()))
    for name, value in expected.items():
        torch.testing.assert_close(r.derivatives[f"m.{name}"], value, rtol=1e-4, atol=1e-5)


def test_a_vjp_of_another_seeds_probe_is_not_taken(monkeypatch):
    model, x, targets = _mlp(2)
    with recording() as record:
        losses = F.cross_entropy(model(x), targets, reduction="none")
    params = dict(model.named_parameters())
    given = persample.per_sample_given(record, params, losses)
    other = probe_vector(losses, seed=99, draw=0)
    forged = {n: g._replace(probe_vjp=(99, other, torch.zeros_like(params[n])))
              for n, g in given.items()}
    calls = _counted(monkeypatch)
    r = analysis.differentiate(losses, params, given=forged, seed=3)
    assert len(calls) == 1  # probe 0's own backward: the forged vᵀJ was not read
    for name, value in _loop(losses, params).items():
        torch.testing.assert_close(r.derivatives[name], value, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("row", [0, 50, 95])
def test_a_wrong_row_is_refused_with_the_rules_probe(row, monkeypatch):
    """The rules' own vᵀJ judges a wrong per-sample gradient as the analysis' would."""
    model, x, targets = _mlp(3)
    seen = []
    original = analysis.differentiate

    def wrong_given(*args, given=None, **kwargs):
        name = "m.0.weight"
        jacobian = written(given[name].jacobian).clone()  # (a weight's: written on read)
        jacobian[row, 2, 1] += 0.02 * float(jacobian[:, 2, 1].abs().sum())
        assert given[name].probe_vjp is not None
        given = {**given, name: given[name]._replace(jacobian=jacobian)}
        found = original(*args, given=given, **kwargs)
        seen.append(found)
        return found
    monkeypatch.setattr(analysis, "differentiate", wrong_given)
    r = vjp_magic.differentiate(
        lambda: F.cross_entropy(model(x), targets, reduction="none"), model, names="m")
    losses = F.cross_entropy(model(x), targets, reduction="none")
    expected = _loop(losses, dict(model.named_parameters()))
    torch.testing.assert_close(r.derivatives["m.0.weight"], expected["0.weight"],
                               rtol=1e-4, atol=1e-5)  # refused, and recomputed


def test_the_rules_own_dict_is_taken_as_checked_per_sample(monkeypatch):
    """``per_sample_jacobians``' dict (marked ``separated``) is judged as
    ``per_sample_given``'s: probe 0 alone; bare tensors still take the full plan."""
    model, x, targets = _mlp(4)
    with recording() as record:
        losses = F.cross_entropy(model(x), targets, reduction="none")
    params = dict(model.named_parameters())
    found = persample.per_sample_jacobians(record, params, losses)
    assert found.separated
    calls = _counted(monkeypatch)
    r = analysis.differentiate(losses, params, given=found, seed=4)
    assert len(calls) == 1
    for name, value in _loop(losses, params).items():
        torch.testing.assert_close(r.derivatives[name], value, rtol=1e-4, atol=1e-5)
    calls.clear()
    analysis.differentiate(losses, params, given=dict(found), seed=4)
    assert len(calls) > 1  # unmarked: the whole probe plan
