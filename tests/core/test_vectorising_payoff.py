"""Vectorised backward passes only where they pay (core.vectorising): where a plain pass is
heavy, the first vectorised chunk is a trial; slower per vector than a plain pass, the rest
are plain passes and the graph is remembered, so its next analysis makes only plain passes.
The numbers stay those of a loop of torch.autograd.grad either way (float64, and float32
BatchNorm in training mode, whose batched derivatives a probe may send back to plain passes).
"""
from __future__ import annotations

import time

import pytest
import torch
from torch import nn

from pass_counter import counted
from vjp_magic.core import analysis, derivatives, strategies, vectorising
from vjp_magic.core.vectorising import HEAVY_PASS, TRIAL, Payoff


@pytest.fixture(autouse=True)
def _fresh_memory():
    """Nothing remembered; one thread, so that a shared machine's load (a parallel region
    waiting on a descheduled thread, spinning) does not blur the CPU times compared."""
    vectorising._plain_faster.clear()
    derivatives._pass_seconds.clear()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    vectorising._plain_faster.clear()
    derivatives._pass_seconds.clear()


# -- the rule on given timings ------------------------------------------------------------
def test_light_passes_are_never_cut_or_judged():
    payoff = Payoff(("light",), seconds=HEAVY_PASS / 10)
    assert payoff.first(16) == 16  # light: the caller's first chunk
    assert payoff.timed(1, HEAVY_PASS / 10, vectorised=False)
    assert payoff.cut(1, 64, vectorising=True) == 64
    assert payoff.timed(63, 100.0, vectorised=True)  # however slow: not judged
    assert payoff.worth_trying()


def test_heavy_passes_start_plain_and_try_a_few_vectors():
    payoff = Payoff(("heavy",), seconds=1.0)
    assert payoff.first(16) == 1  # one plain pass, timed here
    assert payoff.cut(0, 8, vectorising=True) == 8  # nothing timed here yet: no trial
    payoff.timed(1, 0.5, vectorised=False)
    assert payoff.cut(1, 8, vectorising=True) == 1 + TRIAL
    assert payoff.cut(1, 8, vectorising=False) == 8
    assert payoff.cut(1, 1 + TRIAL, vectorising=True) == 1 + TRIAL


def test_a_slower_trial_stops_vectorising_and_is_remembered():
    payoff = Payoff(("slow",))
    payoff.timed(1, 0.05, vectorised=False)
    assert not payoff.timed(TRIAL, TRIAL * 0.08, vectorised=True)
    assert not Payoff(("slow",)).worth_trying()
    assert Payoff(("other",)).worth_trying()


def test_a_faster_trial_goes_on_and_later_chunks_are_not_judged():
    payoff = Payoff(("fast",))
    payoff.timed(1, 0.05, vectorised=False)
    assert payoff.timed(TRIAL, TRIAL * 0.01, vectorised=True)
    assert payoff.cut(5, 20, vectorising=True) == 20  # tried once
    assert payoff.timed(15, 15 * 1.0, vectorised=True)
    assert Payoff(("fast",)).worth_trying()


# -- in the analysis ----------------------------------------------------------------------
def _net_losses(dtype, train: bool = True, batch: int = 8):
    torch.manual_seed(5)
    net = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                        nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Flatten(),
                        nn.Linear(4 * 25, 3)).to(dtype)
    net.train(train)
    data = torch.randn(batch, 2, 5, 5, dtype=dtype)
    targets = torch.randint(0, 3, (batch,))
    return net, nn.functional.cross_entropy(net(data), targets, reduction="none")


def _looped(losses, params: dict) -> dict:
    rows = [torch.autograd.grad(losses[i], list(params.values()), retain_graph=True)
            for i in range(losses.numel())]
    return {name: torch.stack(column) for name, column in zip(params, zip(*rows))}


def _burn(seconds: float) -> None:
    """CPU time spent in this process (what the trial measures)."""
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def _timed_methods(monkeypatch, vectorised_extra: float, plain_extra: float) -> list:
    """Every pass heavy; vectorised and plain passes slowed by the CPU time given (per call
    and per vector); the sizes of the vectorised calls are listed."""
    monkeypatch.setattr(vectorising, "HEAVY_PASS", 0.0)
    for module in (derivatives, strategies):  # chunks sized by the budget, not by time
        monkeypatch.setattr(module, "CHUNK_SECONDS", 1e9)
    calls = []
    real_vmap, real_loop = derivatives._vmap_grad, derivatives._looped_grad

    def vmapped(output, inputs, grad_outputs):
        calls.append(grad_outputs.shape[0])
        _burn(vectorised_extra * grad_outputs.shape[0])
        return real_vmap(output, inputs, grad_outputs)

    def looped(output, inputs, grad_outputs):
        _burn(plain_extra * grad_outputs.shape[0])
        return real_loop(output, inputs, grad_outputs)
    monkeypatch.setattr(derivatives, "_vmap_grad", vmapped)
    monkeypatch.setattr(derivatives, "_looped_grad", looped)
    return calls


@pytest.mark.parametrize("train", [True, False])
def test_slower_vectorised_passes_give_way_to_plain_ones(monkeypatch, train):
    calls = _timed_methods(monkeypatch, vectorised_extra=0.05, plain_extra=0.0)
    net, losses = _net_losses(torch.float64, train)
    params = dict(net.named_parameters())
    expected = _looped(losses, params)
    first, passes = counted(lambda: analysis.differentiate(losses, params, exact_up_to=0,
                                                           keep_graph=True, seed=0))
    assert calls == [TRIAL]  # one trial, then plain passes
    assert passes <= 8 + 1 + TRIAL  # B, the batching probe, the trial's recomputation
    calls.clear()
    again, passes = counted(lambda: analysis.differentiate(losses, params, exact_up_to=0,
                                                           keep_graph=True, seed=1))
    assert calls == [] and passes == 8  # remembered: B plain passes, nothing to check
    for name in params:
        torch.testing.assert_close(first.inputs[name].derivatives, expected[name])
        torch.testing.assert_close(again.inputs[name].derivatives, expected[name])
        assert params[name].grad is None


def test_batchnorm_float32_trial_and_plain_passes_give_the_loops_numbers(monkeypatch):
    # float32 BatchNorm in training mode: batched derivatives may fail the batching probe by
    # rounding (they cancel) and be recomputed; whatever the timings decide, the numbers are
    # the loop's. (Its plain passes' times vary tenfold here: no assertion on the path.)
    calls = _timed_methods(monkeypatch, vectorised_extra=0.05, plain_extra=0.0)
    net, losses = _net_losses(torch.float32, train=True)
    params = dict(net.named_parameters())
    expected = _looped(losses, params)
    for seed in range(2):
        r = analysis.differentiate(losses, params, exact_up_to=0, keep_graph=True, seed=seed)
        for name in params:
            torch.testing.assert_close(r.inputs[name].derivatives, expected[name],
                                       rtol=1e-4, atol=1e-6)
    assert calls[:1] == [TRIAL]


def test_faster_vectorised_passes_go_on(monkeypatch):
    calls = _timed_methods(monkeypatch, vectorised_extra=0.0, plain_extra=0.05)
    net, losses = _net_losses(torch.float64, train=False, batch=12)
    params = dict(net.named_parameters())
    expected = _looped(losses, params)
    r = analysis.differentiate(losses, params, exact_up_to=0, keep_graph=True, seed=0)
    assert calls[:1] == [TRIAL] and sum(calls) == 12 - 1  # all vectorised after the timed one
    assert not vectorising._plain_faster
    for name in params:
        torch.testing.assert_close(r.inputs[name].derivatives, expected[name])
