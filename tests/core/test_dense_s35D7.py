"""D7 (session 35): the batching check's one owner (core.checked_batches), a component batch
that fits one chunk judged like any other, and a replay that does not warn twice."""
from __future__ import annotations

import time
import warnings

import torch

from vjp_magic.core import checked_batches, derivatives, vectorising


def test_one_module_owns_the_batching_check():
    import importlib.util

    assert importlib.util.find_spec("vjp_magic.core.batching_check") is None
    for name in ("batching_vector", "batching_verdict", "within_noise", "plain_probe",
                 "checked_batch", "verified", "CheckedBatches", "checked_components"):
        assert callable(getattr(checked_batches, name))


def test_verdict_accepts_the_plain_pass_and_rejects_a_moved_entry():
    torch.manual_seed(3)
    W = torch.randn(6, 5)
    x = torch.randn(5, requires_grad=True)
    y = torch.tanh(W @ x)
    flat = torch.func.jacrev(lambda t: torch.tanh(W @ t))(x.detach())  # 6 × 5
    v = checked_batches.batching_vector(y, 4)
    (vjp,) = torch.autograd.grad(y, x, v, retain_graph=True)
    assert checked_batches.batching_verdict(flat, v, vjp) == (True, True)
    wrong = flat.clone()
    wrong[2, 3] += 0.5  # one entry off: v_2 · 0.5 ≥ 0.5 away from vᵀJ at entry 3
    assert checked_batches.batching_verdict(wrong, v, vjp)[0] is False
    zeros = torch.zeros_like(flat)
    assert checked_batches.batching_verdict(zeros, v, torch.zeros_like(vjp)) == (True, False)


def _burn(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def test_heavy_components_in_one_chunk_are_tried_and_remembered(monkeypatch):
    # a plain pass known heavy: even 10 components (under the first chunk's 16) start with one
    # timed plain pass and a trial; slower vectorised passes are remembered for the graph
    vectorising._plain_faster.clear()
    monkeypatch.setattr(derivatives, "CHUNK_SECONDS", 1e9)
    monkeypatch.setattr(vectorising, "HEAVY_PASS", 0.0)  # every plain pass heavy
    real = derivatives._vmap_grad
    sizes = []

    def slow_vmap(output, inputs, grad_outputs):
        sizes.append(grad_outputs.shape[0])
        _burn(0.05 * grad_outputs.shape[0])
        return real(output, inputs, grad_outputs)
    monkeypatch.setattr(derivatives, "_vmap_grad", slow_vmap)
    W = torch.randn(10, 3, dtype=torch.float64)
    x = torch.randn(3, dtype=torch.float64, requires_grad=True)
    y = torch.sin(W @ x)
    key = ("heavy one chunk",)
    try:
        (stacked,), _ = derivatives.component_vjps(y, [x], (), 2**30, first=64, seconds=1.0,
                                                   key=key)
        assert sizes == [vectorising.TRIAL]
        assert key in vectorising._plain_faster
        expected = torch.func.jacrev(lambda t: torch.sin(W @ t))(x.detach())
        torch.testing.assert_close(stacked, expected)
    finally:
        vectorising._plain_faster.clear()


def test_gradcheck_replay_does_not_warn_again(ip):
    ip.run_cell("import torch.nn.functional as F\n"
                "x = torch.linspace(-1, 1, 3, dtype=torch.float64, requires_grad=True)\n"
                "t = torch.zeros(3, 1, dtype=torch.float64)")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = ip.run_cell("%%vjp --gradcheck\ny = F.mse_loss(x, t)")
    assert result.success, result.error_in_exec
    repeated = [w for w in caught if "target size" in str(w.message)]
    assert len(repeated) == 1, [f"{w.filename}:{w.lineno}" for w in repeated]
