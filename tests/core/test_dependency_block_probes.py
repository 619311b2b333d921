"""Blocks along the axis decoded by their structure (core/blockdecode.py): ghost-batch
groups and packed causal sequences, with and without leaks, against the Jacobian's own
pattern (torch.autograd.functional.jacobian) at small sizes, and by the vectors spent at
large ones (a probe per row is what G25-2 found)."""
from __future__ import annotations

import pytest
import torch

import vjp_magic
from vjp_magic.core import blockdecode, grouptest
from block_models import VectorCounter, ghost_batch, jacobian_pattern, packed_attention


def _bounded_only(monkeypatch):
    """Every block too costly to read row by row: the blocks bound the rows not read."""
    monkeypatch.setattr(blockdecode, "EXACT_SIZE", 0)
    monkeypatch.setattr(grouptest, "RESOLVE_ENTRIES", 0)


def _ghost(b, group, leak=None):
    """Ghost-batch groups (tests/block_models.py); ``leak`` (i, j): y[i] also reads x[j]."""
    return ghost_batch(b, group, () if leak is None else [leak])


@pytest.mark.parametrize("leak", [None, (40, 3)])
def test_ghost_batch_groups_read_exactly(leak):
    f = _ghost(64, 8, leak)
    x = torch.randn(64, 16, dtype=torch.float64, requires_grad=True)
    d = vjp_magic.dependency(f(x), x)
    assert d.complete
    assert torch.equal(d.pattern, jacobian_pattern(f, x))
    assert d.kind == "block-diagonal" and d.blocks == (8,) * 8
    assert d.exceptions() == ([] if leak is None else [leak])


@pytest.mark.parametrize("extra", [(), ((40, 60),), ((70, 10),)])
def test_packed_sequences_bounded_by_their_blocks(monkeypatch, extra):
    """A later read inside a sequence (20 ahead) and a read across sequences are found
    and read exactly; nothing else crosses the blocks."""
    _bounded_only(monkeypatch)
    torch.manual_seed(0)
    f, mask = packed_attention(128, 32, extra)
    x = torch.randn(128, 8, requires_grad=True)
    d = vjp_magic.dependency(f(x), x)
    assert not d.complete and "blocks of 32" in d.note
    assert torch.equal(d.pattern, mask)
    assert torch.equal(d.pattern, jacobian_pattern(f, x))
    assert d.kind == "block-lower-triangular" and d.blocks == (32,) * 4
    assert d.exceptions() == list(extra)


def test_ghost_batch_bounded_claims_no_read_across_groups(monkeypatch):
    _bounded_only(monkeypatch)
    f = _ghost(96, 32)
    x = torch.randn(96, 16, requires_grad=True)
    d = vjp_magic.dependency(f(x), x)
    assert not d.complete
    assert torch.equal(d.pattern, jacobian_pattern(f, x))


def test_packed_sequences_read_exactly_where_cheap():
    torch.manual_seed(0)
    f, mask = packed_attention(64, 16, ((20, 27),))
    x = torch.randn(64, 8, requires_grad=True)
    d = vjp_magic.dependency(f(x), x)
    assert d.complete
    assert torch.equal(d.pattern, mask)
    assert torch.equal(d.pattern, jacobian_pattern(f, x))


def test_blocks_of_different_sizes_are_still_right():
    """No one block size fits the sampled rows: the general decoding answers."""
    sizes = (8, 16, 8, 24, 8)
    starts = torch.tensor((0,) + sizes).cumsum(0)

    def f(x):
        parts = [x[s:e] - x[s:e].mean(0) for s, e in zip(starts[:-1], starts[1:])]
        return torch.tanh(torch.cat(parts))
    x = torch.randn(64, 4, dtype=torch.float64, requires_grad=True)
    d = vjp_magic.dependency(f(x), x)
    assert torch.equal(d.pattern, jacobian_pattern(f, x))
    assert d.blocks == sizes


def test_large_blocks_cost_vectors_by_their_structure(monkeypatch):
    """B = 4,096 in groups of 64 and T = 1,024 in sequences of 256: vectors by the blocks'
    structure (a bound: a few dozen; each block read exactly, two vectors per local index,
    only where the work counted allows), never one per row."""
    vectors = VectorCounter(monkeypatch)
    x = torch.randn(4096, 16, requires_grad=True)
    d = vjp_magic.dependency(_ghost(4096, 64)(x), x)
    assert d.blocks == (64,) * 64 and vectors.count <= 3 * 64, vectors.count
    vectors.count = 0
    torch.manual_seed(0)
    f, mask = packed_attention(1024, 256)
    x = torch.randn(1024, 8, requires_grad=True)
    d = vjp_magic.dependency(f(x), x)
    assert d.kind == "block-lower-triangular" and vectors.count <= 3 * 64, vectors.count
    assert torch.equal(d.pattern, mask)
