"""A diagonal with one leak (y[i] ← x[j]) is no block structure at any size: no block of two
or more indices that holds the diagonal alone (a run of cuts made one block) is claimed;
the verdict is sparse with the leak as witness, or a band or triangle holding it."""
from __future__ import annotations

import pytest
import torch

from vjp_magic.core.dependency import full_verdict


@pytest.mark.parametrize("n", [4, 7, 10, 16, 24])
def test_one_leak_invents_no_blocks(n):
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            pattern = torch.eye(n, dtype=torch.bool)
            pattern[i, j] = True
            found = full_verdict(pattern)
            assert not found.kind.startswith("block"), (n, i, j, found)
            assert found.blocks is None, (n, i, j, found)
            if found.kind == "sparse":
                assert found.witness == (i, j), (n, i, j, found)


def test_blocks_with_a_leak_are_still_blocks():
    """Three causal blocks of 4 and a leak between two: blocks (the rule above keeps them)."""
    pattern = torch.zeros(12, 12, dtype=torch.bool)
    for g in range(3):
        pattern[4 * g:4 * g + 4, 4 * g:4 * g + 4] = torch.tril(torch.ones(4, 4, dtype=torch.bool))
    pattern[9, 2] = True
    found = full_verdict(pattern)
    assert (found.kind, found.blocks, found.witness) == ("block-lower-triangular", (4, 4, 4),
                                                         (9, 2))
