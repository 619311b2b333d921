"""Blocks of unequal sizes along the batch axis (issue 23 item 3: packed sequences of varying
lengths, groups of graphs): the verdict is block-diagonal or block-lower-triangular with the
blocks' sizes, a crossing edge its exception and witness, and its pattern equals the
Jacobian's (torch.autograd.functional.jacobian at small sizes; the mask, by mathematics, at
1,024 tokens). Where the blocks are too large to read row by row (the ``bounded`` fixture, or
the size), the sampled rows place them with about one more row read per block."""
from __future__ import annotations

import pytest
import torch

import vjp_magic
from vjp_magic.core import blockdecode, grouptest
from block_models import grouped_mean, jacobian_pattern, packed_attention

SEED = 11


@pytest.fixture
def bounded(monkeypatch):
    """Every block too costly to read row by row: the blocks bound the rows not read."""
    monkeypatch.setattr(blockdecode, "EXACT_SIZE", 0)
    monkeypatch.setattr(grouptest, "RESOLVE_ENTRIES", 0)


LENGTHS = [(20, 60, 12, 36), (7, 41, 3, 19, 30, 28), (64, 64, 32, 64, 32, 8, 8, 16)]


@pytest.mark.parametrize("lengths", LENGTHS)
@pytest.mark.parametrize("path", ["read", "bounded"])
def test_packed_sequences_of_unequal_lengths_are_their_blocks(request, lengths, path):
    if path == "bounded":
        request.getfixturevalue("bounded")
    t = sum(lengths)
    f, mask = packed_attention(t, lengths)
    x = torch.randn(t, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0),
                    requires_grad=True)
    d = vjp_magic.dependency(f(x), x, seed=SEED)
    assert torch.equal(d.pattern, jacobian_pattern(f, x))
    assert torch.equal(d.pattern, mask)
    assert d.kind == "block-lower-triangular" and d.blocks == lengths
    words = ", ".join(str(n) for n in lengths) if len(lengths) <= 6 else \
        f"{min(lengths)} to {max(lengths)}"
    assert d.summary().startswith(f"block-lower-triangular, {len(lengths)} blocks of {words}")


@pytest.mark.parametrize("leaks", [[(30, 90)], [(100, 5)], [(25, 85), (110, 40)]])
@pytest.mark.parametrize("path", ["read", "bounded"])
def test_a_crossing_edge_is_the_exception_and_the_witness(request, leaks, path):
    if path == "bounded":
        request.getfixturevalue("bounded")
    lengths = (20, 60, 12, 36)
    f, mask = packed_attention(sum(lengths), lengths, leaks)
    x = torch.randn(sum(lengths), 4, dtype=torch.float64,
                    generator=torch.Generator().manual_seed(1), requires_grad=True)
    d = vjp_magic.dependency(f(x), x, seed=SEED)
    assert torch.equal(d.pattern, jacobian_pattern(f, x))
    assert torch.equal(d.pattern, mask)
    assert d.kind == "block-lower-triangular" and d.blocks == lengths
    assert sorted(d.exceptions()) == sorted(leaks)
    assert d.witness == min(leaks)  # the first crossing, row-major
    assert f"with {len(leaks)} exception" in d.summary()


@pytest.mark.parametrize("sizes, leaks", [((3, 9, 4, 16), ()), ((12, 2, 30, 20), [(40, 3)]),
                                          ((5, 5, 5, 5), ())])
@pytest.mark.parametrize("path", ["read", "bounded"])
def test_groups_of_unequal_sizes_are_block_diagonal(request, sizes, leaks, path):
    if path == "bounded":
        request.getfixturevalue("bounded")
    f, mask = grouped_mean(sizes, leaks=leaks)
    x = torch.randn(sum(sizes), 8, dtype=torch.float64,
                    generator=torch.Generator().manual_seed(2), requires_grad=True)
    d = vjp_magic.dependency(f(x), x, seed=SEED)
    assert torch.equal(d.pattern, jacobian_pattern(f, x))
    assert torch.equal(d.pattern, mask)
    assert d.kind == "block-diagonal" and d.blocks == sizes
    if len(set(sizes)) == 1:  # equal blocks keep their words
        assert d.summary().startswith(f"block-diagonal, {len(sizes)} blocks of {sizes[0]}")
    else:
        assert d.summary().startswith(
            f"block-diagonal, {len(sizes)} blocks of {', '.join(map(str, sizes))}")
    if leaks:
        assert d.witness == leaks[0] and d.exceptions() == list(leaks)


@pytest.mark.parametrize("extra", [(), ((300, 400), (700, 100))])
def test_packed_sequences_of_four_lengths_at_1024_tokens(extra):
    """dependency_scale's packedvar cases: the blocks placed from the sampled rows and a few
    more, bounded (not read row by row), the pattern the mask."""
    lengths = (100, 300, 156, 468)
    f, mask = packed_attention(1024, lengths, extra)
    x = torch.randn(1024, 64, generator=torch.Generator().manual_seed(1), requires_grad=True)
    d = vjp_magic.dependency(f(x), x, seed=SEED)
    assert d.kind == "block-lower-triangular" and d.blocks == lengths
    assert torch.equal(d.pattern, mask)
    assert sorted(d.exceptions()) == sorted(extra)
    assert "blocks of 100, 300, 156, 468 show no other read across blocks" in d.note
    if extra:
        assert d.witness == (300, 400)
