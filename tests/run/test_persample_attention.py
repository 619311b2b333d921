"""Per-sample gradients through attention (``run/persample.py``): a batch-first
``TransformerEncoderLayer`` transposes its input inside the module, so the tensor the recorded
``multi_head_attention_forward`` reads carries the batch on axis 1; the vectorised replay
reads the batch-first data it came from instead. Against a loop of ``torch.autograd.grad``
per sample (float64, dropout 0), also when the sequence is as long as the batch;
self-attention, masked or not, also by the per-layer rules (``run/expanded.py``)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vjp_magic.core import analysis
from vjp_magic.run import persample
from vjp_magic.run.expanded import rule_uses
from vjp_magic.run.record import recording


class Encoder(torch.nn.Module):
    def __init__(self, width: int = 8, heads: int = 2):
        super().__init__()
        self.layer = torch.nn.TransformerEncoderLayer(width, heads, 16, dropout=0.0,
                                                      batch_first=True)
        self.head = torch.nn.Linear(width, 3)

    def forward(self, x):
        return self.head(self.layer(x).mean(1))


def _loop(losses, params: dict) -> dict:
    rows = [torch.autograd.grad(losses[b], list(params.values()), retain_graph=True)
            for b in range(losses.shape[0])]
    return {name: torch.stack([row[i] for row in rows]) for i, name in enumerate(params)}


@pytest.mark.filterwarnings("ignore::UserWarning")  # vmap's fallback for attention kernels
@pytest.mark.parametrize("path", ["rules", "vmap"])
@pytest.mark.parametrize("batch, length", [(6, 4), (4, 4), (5, 8)])
def test_encoder_layer_per_sample_gradients(batch, length, path, monkeypatch):
    """By the rules (self-attention's two projections are Linear rules on the batch axis 1),
    and by vmap over the replay (the rules turned off), as the issue's failing case."""
    torch.manual_seed(batch)
    model = Encoder().double()
    x = torch.randn(batch, length, 8, dtype=torch.float64)
    targets = torch.randint(0, 3, (batch,))
    with recording() as record:
        losses = F.cross_entropy(model(x), targets, reduction="none")
    params = dict(model.named_parameters())
    replay, _ = persample.sample_data(record, params, losses)
    assert rule_uses(replay, params, batch) is not None
    used = []
    original = persample._vectorised
    monkeypatch.setattr(persample, "_vectorised", lambda *a: used.append(1) or original(*a))
    if path == "vmap":
        monkeypatch.setattr(persample, "per_sample_by_rules", lambda *a, **k: None)
    got = persample.per_sample_jacobians(record, params, losses)
    assert got is not None and bool(used) == (path == "vmap")
    expected = _loop(losses, params)
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, rtol=1e-9, atol=1e-11)
    r = analysis.differentiate(losses, params, given=got)
    for name, value in expected.items():
        torch.testing.assert_close(r.derivatives[name], value, rtol=1e-9, atol=1e-11)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_key_padding_mask_is_per_sample_data():
    torch.manual_seed(7)
    model = Encoder().double()
    x = torch.randn(5, 6, 8, dtype=torch.float64)
    mask = torch.zeros(5, 6, dtype=torch.bool)
    mask[1, 4:] = mask[3, 2:] = True
    targets = torch.randint(0, 3, (5,))
    with recording() as record:
        hidden = model.layer(x, src_key_padding_mask=mask)
        losses = F.cross_entropy(model.head(hidden[:, 0]), targets, reduction="none")
    params = dict(model.named_parameters())
    replay, _ = persample.sample_data(record, params, losses)
    assert rule_uses(replay, params, 5) is not None  # the masked attention's rule (s38)
    got = persample.per_sample_jacobians(record, params, losses)
    assert got is not None and got.separated
    expected = _loop(losses, params)
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, rtol=1e-9, atol=1e-11)
