"""The batching check's second judgement (core.checked_batches.within_noise): a vectorised
pass whose probe fails only by rounding (BatchNorm in training mode: per-sample rows cancel)
is kept where that noise is small beside the derivatives, else recomputed by plain passes;
a real batching error, even a small one, is still recomputed. Values are those of a loop of
torch.autograd.grad either way."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from pass_counter import counted
from vjp_magic.core import analysis, derivatives, strategies, vectorising

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from shared_passes import ResNetLike  # noqa: E402

B = 8


@pytest.fixture(autouse=True)
def _vectorised(monkeypatch):
    """Every pass light and chunks unlimited in time, so that every component comes from one
    vectorised pass (on a CPU, heavy convolution passes would otherwise go plain); nothing
    remembered from other tests."""
    monkeypatch.setattr(vectorising, "HEAVY_PASS", float("inf"))
    for module in (derivatives, strategies):  # chunks sized by the budget, not by time
        monkeypatch.setattr(module, "CHUNK_SECONDS", 1e9)
    vectorising._plain_faster.clear()
    derivatives._pass_seconds.clear()
    yield
    vectorising._plain_faster.clear()
    derivatives._pass_seconds.clear()


def _resnet_losses(seed: int):
    torch.manual_seed(seed)
    net = ResNetLike(16).train()  # BatchNorm couples the batch
    data = torch.randn(B, 3, 32, 32)
    targets = torch.randint(0, 10, (B,))
    losses = torch.nn.functional.cross_entropy(net(data), targets, reduction="none")
    return losses, dict(net.named_parameters())


def _looped(losses, params: dict) -> dict:
    rows = [torch.autograd.grad(losses[i], list(params.values()), retain_graph=True)
            for i in range(losses.numel())]
    return {name: torch.stack(column) for name, column in zip(params, zip(*rows))}


def _redone(monkeypatch) -> list:
    """The sizes of the plain recomputations asked for (0: none)."""
    sizes = []
    real = strategies._plain_again

    def spy(output, redo, *args):
        sizes.append(len(redo))
        return real(output, redo, *args)
    monkeypatch.setattr(strategies, "_plain_again", spy)
    return sizes


@pytest.mark.parametrize("seed", range(2))
def test_batchnorm_train_rounding_is_kept_only_where_small_beside_the_derivatives(
        monkeypatch, seed):
    """Per-sample rows cancel in vᵀD, so its measured noise reaches 100-300 times the probe's
    tolerance of |v|ᵀ|D| here: more than within_noise takes for rounding (CAP_MULTIPLE), as
    a batching rule percents off could hide in it; those tensors are recomputed, and every
    value is the loop's."""
    losses, params = _resnet_losses(seed)
    expected = _looped(losses, params)
    redone = _redone(monkeypatch)
    result, passes = counted(lambda: analysis.differentiate(losses, params, exact_up_to=0,
                                                            keep_graph=True, seed=seed))
    assert all(size <= len(params) for size in redone)
    for name in params:
        torch.testing.assert_close(result.inputs[name].derivatives, expected[name],
                                   rtol=1e-4, atol=1e-5)
        assert params[name].grad is None


@pytest.mark.parametrize("factor", [1.01, -1.0])
def test_a_small_batching_error_is_still_recomputed(monkeypatch, factor):
    # one sample's row times `factor` in every parameter (1% off; its signs wrong): not
    # rounding. (Within 16·√B times the measured noise an error is taken for rounding: here
    # 1e-3 relative passes for two BatchNorm parameters, whose vᵀJ rounds at ~1e-5.)
    real = derivatives._vmap_grad

    def wrong(output, inputs, grad_outputs):
        rows = real(output, inputs, grad_outputs)
        for row in rows:
            row[-1].mul_(factor)
        return rows
    monkeypatch.setattr(derivatives, "_vmap_grad", wrong)
    losses, params = _resnet_losses(0)
    expected = _looped(losses, params)
    redone = _redone(monkeypatch)
    result = analysis.differentiate(losses, params, exact_up_to=0, keep_graph=True, seed=0)
    assert redone and redone[0] == len(params)  # every parameter tensor recomputed
    for name in params:
        torch.testing.assert_close(result.inputs[name].derivatives, expected[name],
                                   rtol=1e-4, atol=1e-5)
