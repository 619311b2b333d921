"""The per-layer rules' bookkeeping made leaner (issue 23, item 4) keeps its guarantees:
the check weights drawn in numpy still tell apart every pair of samples that probe 0
weights alike (bfloat16 probes too); a kept record swaps the output only in the calls that
hold it; a bias's per-sample gradients (one term per sample: the layer output's gradient
itself) are each sample's own. Expected values from one ``torch.autograd.grad`` per
sample."""
from __future__ import annotations

import gc

import pytest
import torch
import torch.nn.functional as F

import vjp_magic
from vjp_magic.core.probes import probe_vector
from vjp_magic.run import expanded
from vjp_magic.run.expanded import check_weights
from vjp_magic.run.record import KeptRecord, recording


@pytest.mark.parametrize("batch", [3, 700])
def test_bfloat16_probe_0_and_its_check_weights_tell_every_pair_apart(batch):
    first = probe_vector(torch.zeros(batch, dtype=torch.bfloat16), seed=batch, draw=0)
    passes = check_weights(batch, torch.bfloat16, first=first)
    codes = torch.stack([w.double() for w in passes], 1)
    assert len(torch.unique(codes, dim=0)) == batch
    exponents = torch.log2(codes.abs())
    assert bool((exponents == exponents.round()).all())


def test_check_weights_differ_between_calls():
    first = probe_vector(torch.zeros(500), seed=1, draw=0)
    one, two = (check_weights(500, torch.float32, first=first)[1] for _ in range(2))
    assert not torch.equal(one, two)  # fresh random ranks each time, not the run's seed


def test_a_kept_record_swaps_only_the_calls_that_hold_the_output():
    x = torch.randn(4, requires_grad=True)
    with recording() as record:
        h = torch.sin(x)
        y = h * 2
    calls = list(record.calls)
    kept = KeptRecord.keep(record, y)
    assert record.calls[0] is calls[0]  # sin never saw y
    assert record.calls[1] is not calls[1] and record.calls[1].result is not y
    again = kept.record()
    assert again.calls[1].result is y and again.calls[0] is calls[0]
    del y, again, calls
    gc.collect()
    assert kept.output is None  # the record never kept the output alive


def test_bias_rows_from_the_rules_are_each_samples_own(monkeypatch):
    ruled = []
    original = expanded._rule
    monkeypatch.setattr(expanded, "_rule", lambda *a: ruled.append(1) or original(*a))
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3))
    x, t = torch.randn(40, 5), torch.randint(0, 3, (40,))
    r = vjp_magic.differentiate(
        lambda: F.cross_entropy(model(x), t, reduction="none"), model)
    losses = F.cross_entropy(model(x), t, reduction="none")
    for name, p in model.named_parameters():
        rows = torch.stack([torch.autograd.grad(losses[b], p, retain_graph=True)[0]
                            for b in range(40)])
        torch.testing.assert_close(r.derivatives[name], rows)
    assert ruled  # the per-layer rules computed them
    bias = r.derivatives["0.bias"]
    bias.zero_()  # the user's own copy: the other parameters' rows stay as they were
    assert float(r.derivatives["0.weight"].abs().sum()) > 0
