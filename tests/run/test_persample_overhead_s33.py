"""The per-call cuts of issue 23 (s33 P5) keep what they cut around: each test fails if the
shortcut would miss what the full work finds."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vjp_magic.core.tagging import walk_graph
from vjp_magic.teach.freed_graph import _changed_in_place, _saved_names


def _graphs():
    x = torch.randn(4, 6, requires_grad=True)
    w = torch.randn(6, 6, requires_grad=True)
    idx = torch.tensor([0, 2])
    yield F.cross_entropy(torch.nn.Linear(6, 3)(torch.relu(x)), torch.tensor([0, 1, 2, 0]),
                          reduction="none")
    yield x.index_put((idx,), torch.ones(2, 6)) * torch.where(x > 0, x, w[:4])
    yield torch.stack([x, x * 2]).sum() + torch.cat([x, w]).prod()
    yield F.layer_norm(x, (6,), w[0], w[1]) + F.batch_norm(x, None, None, training=True)
    yield torch.nn.LSTM(6, 6)(x[None])[0]
    yield torch.linalg.solve(w + 6 * torch.eye(6), x.t()).norm(dim=1)
    yield torch.addcmul(x, x, w[:4]).cumprod(1).sort(1).values


@pytest.mark.parametrize("index", range(7))
def test_every_saved_tensor_is_read_for_the_in_place_check(index):
    """_changed_in_place reads only the saved attributes with a raw SavedVariable beside
    them: every saved attribute holding a tensor (or a list of them) must be among those."""
    output = list(_graphs())[index]
    for node in walk_graph(output):
        kept = set(_saved_names(type(node), node))
        for name in dir(node):
            if not name.startswith("_saved_"):
                continue
            value = getattr(node, name)
            holds = isinstance(value, torch.Tensor) or (
                isinstance(value, (list, tuple))
                and any(isinstance(t, torch.Tensor) for t in value))
            assert not holds or name in kept, (type(node).__name__, name)


def test_a_saved_matrix_changed_in_place_is_still_found():
    x = torch.randn(3, 4, requires_grad=True)
    w = torch.randn(4, 2)
    h = x * 1.0
    y = torch.addmm(torch.zeros(2), h, w)
    assert not _changed_in_place(y)
    with torch.no_grad():
        w.add_(1.0)  # addmm saved w (its mat2)
    assert _changed_in_place(y)
