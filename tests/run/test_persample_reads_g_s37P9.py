"""Session 37, P9: probe 0 reads the per-sample gradients G themselves (``core/given.py``:
``at_once``), not only the factors the per-layer rules multiply (``(v⊙g)ᵀa``, the probe pass's
own product for a Linear weight). Errors in writing G out from correct factors — a per-sample
block transposed, two samples' blocks swapped — leave every factor as it was, so only a check
that reads G sees them: each is refused, no direct result is made, and the analysis computes
the right derivatives. The per-layer rules use three backward passes for 1,024 float32
samples, the fewest exact ones (``run/expanded.check_weights``).

Expected per-sample gradients: one ``torch.autograd.grad`` per sample."""
from __future__ import annotations

import pytest
import torch

from vjp_magic import pipeline
from vjp_magic.core import analysis
from vjp_magic.core.outer import written as written_out
from vjp_magic.core.probes import probe_vector
from vjp_magic.run import expanded, persample

CELL = "losses = F.cross_entropy(model(data), targets, reduction='none')"
SEED = 1234


def _setup(ip, batch: int = 48) -> None:
    result = ip.run_cell(
        "import torch, torch.nn.functional as F\ntorch.manual_seed(5)\n"
        "model = torch.nn.Sequential(torch.nn.Linear(6, 6), torch.nn.Tanh(), "
        "torch.nn.Linear(6, 3))\n"
        f"data, targets = torch.randn({batch}, 6), torch.randint(0, 3, ({batch},))")
    assert result.success


def _loop(ns) -> dict:
    losses = torch.nn.functional.cross_entropy(ns["model"](ns["data"]), ns["targets"],
                                               reduction="none")
    params = dict(ns["model"].named_parameters())
    rows = [torch.autograd.grad(losses[b], list(params.values()), retain_graph=True)
            for b in range(losses.shape[0])]
    return {f"model.{n}": torch.stack([row[i] for row in rows]) for i, n in enumerate(params)}


def _two_samples_weighted_apart(ns) -> tuple[int, int]:
    """Two samples probe 0 of ``SEED`` weights differently (a swap of equal weights is no
    error vᵀG could show, nor one the rule form could)."""
    losses = torch.zeros(ns["data"].shape[0])
    v = probe_vector(losses, SEED, 0)
    other = int(torch.nonzero(v != v[0])[0])
    return 0, other


def _run(ip, monkeypatch, wrong):
    """``%%vjp --wrt model`` with the first layer's G written out by ``wrong`` (its factors
    left as they are); (result, whether the direct path made it, whether G was written)."""
    monkeypatch.setattr(pipeline, "PER_SAMPLE_DIRECT", True)
    monkeypatch.setattr(persample, "new_seed", lambda: SEED)
    monkeypatch.setattr(analysis, "new_seed", lambda: SEED)
    original_rule, written = expanded._rule, []

    def rule(use, bound, grad, *probe):
        found = original_rule(use, bound, grad, *probe)
        if "weight" in found and tuple(found["weight"][0].shape[1:]) == (6, 6):
            weight, factored = found["weight"]
            found = {**found, "weight": (wrong(written_out(weight)), factored)}  # (factors kept)
            written.append(True)
        return found
    monkeypatch.setattr(expanded, "_rule", rule)
    made, original_accepted = [], persample.accepted_result
    monkeypatch.setattr(persample, "accepted_result",
                        lambda *a, **k: made.append(original_accepted(*a, **k)) or made[-1])
    result = ip.run_cell(f"%%vjp --wrt model\n{CELL}")
    assert result.success, result.error_in_exec
    return result.result, bool(made) and made[-1] is not None, bool(written)


def test_the_unchanged_rules_are_taken_directly(ip, monkeypatch):
    _setup(ip)
    result, taken, written = _run(ip, monkeypatch, lambda weight: weight)
    assert written and taken
    for name, value in _loop(ip.user_ns).items():
        torch.testing.assert_close(result.derivatives[name], value, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("error", ["transposed", "swapped"])
def test_g_written_wrong_from_right_factors_is_refused(ip, monkeypatch, error):
    _setup(ip)
    first, second = _two_samples_weighted_apart(ip.user_ns)

    def wrong(weight):
        if error == "transposed":  # every sample's block out × in read as in × out
            return weight.transpose(1, 2).contiguous()
        swapped = weight.clone()
        swapped[[first, second]] = weight[[second, first]]
        return swapped
    result, taken, written = _run(ip, monkeypatch, wrong)
    assert written and not taken
    for name, value in _loop(ip.user_ns).items():
        torch.testing.assert_close(result.derivatives[name], value, rtol=1e-4, atol=1e-6)


def test_three_backward_passes_for_1024_float32_samples():
    """Probe 0 weights 1,024 samples with 22 values; one more pass of ±2^k, |k| ≤ 40 (162
    values) tells apart the samples it weights alike — with the unweighted pass, three."""
    losses = torch.zeros(1024)
    first = probe_vector(losses, SEED, 0)
    weights = expanded.check_weights(1024, torch.float32, first=first)
    assert len(weights) == 2 and weights[0] is first
    pairs = set(zip(first.tolist(), weights[1].tolist()))
    assert len(pairs) == 1024  # every two samples weighted differently in some pass
    assert len(set(first.tolist())) < 1024 and len(set(weights[1].tolist())) < 1024
