"""Blocks along the diagonal with a leak between them (issue 23 item 3, adversary s28): the
cuts survive a leak between adjacent blocks, packed causal sequences are
"block-lower-triangular", and the witness is the crossing. Patterns are built by hand (the
expected blocks and crossings are their construction), plus one live graph checked against
``torch.autograd.functional.jacobian``.
"""
from __future__ import annotations

import pytest
import torch

from vjp_magic import VJPUsageError, dependency
from vjp_magic.core.dependency import Kind, full_verdict


def packed(sizes, causal: bool, leaks=()) -> torch.Tensor:
    n = sum(sizes)
    block = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    pattern = block[:, None] == block[None, :]
    if causal:
        pattern &= torch.arange(n)[None, :] <= torch.arange(n)[:, None]
    for leak in leaks:
        pattern[leak] = True
    return pattern


@pytest.mark.parametrize("causal, leak", [(False, (8, 7)), (False, (16, 15)), (False, (7, 8)),
                                          (False, (40, 3)), (True, (8, 7)), (True, (16, 15)),
                                          (True, (40, 3))])
def test_a_leak_between_blocks_is_the_witness_and_keeps_the_blocks(causal, leak):
    found = full_verdict(packed([8] * 8, causal, [leak]))
    kind = Kind.BLOCK_LOWER_TRIANGULAR if causal else Kind.BLOCK_DIAGONAL
    assert (found.kind, found.blocks, found.witness) == (kind, (8,) * 8, leak)


def test_clean_packed_causal_sequences_are_block_lower_triangular():
    found = full_verdict(packed([5, 7, 4, 6], True))
    assert (found.kind, found.blocks, found.witness) == ("block-lower-triangular",
                                                         (5, 7, 4, 6), (1, 0))
    assert full_verdict(packed([5, 7, 4, 6], False)).kind == "block-diagonal"


def test_block_lower_triangular_fills_its_blocks_from_a_live_graph():
    sizes = [6, 8, 5, 9]
    n = sum(sizes)
    ids = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    allowed = (ids[:, None] == ids[None, :]) & torch.ones(n, n, dtype=torch.bool).tril()
    allowed[14, 13] = True  # the first of sequence 3 reads the last of sequence 2

    def f(x):
        scores = (x @ x.T).masked_fill(~allowed, float("-inf"))
        return scores.softmax(1) @ x
    x = torch.randn(n, 3, dtype=torch.float64, requires_grad=True)
    d = dependency(f(x), x, seed=0)
    truth = (torch.autograd.functional.jacobian(f, x.detach()) != 0).any(3).any(1)
    assert torch.equal(d.pattern, truth)
    assert (d.kind, d.blocks, d.witness) == ("block-lower-triangular", tuple(sizes), (14, 13))
    assert "4 blocks of 6, 8, 5, 9" in d.summary() and not d.fills_band()


def test_complex_output_is_refused_with_advice():
    x = torch.randn(50, dtype=torch.float64, requires_grad=True)
    with pytest.raises(VJPUsageError, match="real"):
        dependency(torch.roll(x, 1).to(torch.complex128) * 1j, x)
