"""Fuzz: ``vjp_magic.differentiate`` on the large path (``exact_up_to=0``: per pairing, where the
compressed Jacobian may refute a pairing with points) equals the Jacobian of
``torch.autograd.functional.jacobian`` (one backward per row: jacrev's vmap is slow here) on blocks
of random compositions (tests/compositions.py), each block a copy of one composition on its
own slice of x, sometimes mixed across blocks by a periodic stencil. The full Jacobian,
dense, whatever the accepted structure (points or sparse). The default run is short;
``pytest -m slow`` runs ``VJP_FUZZ_EXAMPLES`` examples (400 unless set)."""
from __future__ import annotations

import os
import random

import pytest
import torch
import torch.nn.functional as F
from compositions import composition

import vjp_magic

SLOW_EXAMPLES = int(os.environ.get("VJP_FUZZ_EXAMPLES", "400"))


def _blocks(seed: int, dtype):
    """(f, size of x): ``blocks`` copies of one random composition side by side, then
    (half the time) a periodic neighbour mix across the whole output, then (most of the
    time) cut or zero-padded to x's size and added to x³, so that the pairing of the
    entries (points) is a candidate, refuted by an entry off the diagonal or accepted."""
    f, n = composition(seed, dtype, most=3)
    rng = random.Random(seed)
    blocks, mixed, square = rng.randrange(4, 9), rng.random() < 0.5, rng.random() < 0.8
    size = blocks * n

    def g(x):
        y = torch.cat([f(part) for part in x.split(n)])
        y = y + 0.5 * y.roll(1) if mixed else y
        return x ** 3 + F.pad(y, (0, max(0, size - y.numel())))[:size] if square else y
    return g, size


def _check(seed: int, dtype) -> bool:
    """Whether the example ran (False: its Jacobian is under the sparse path's size, or over
    2·10⁵ entries)."""
    g, size = _blocks(seed, dtype)
    x = torch.randn(size, dtype=dtype, generator=torch.Generator().manual_seed(seed))
    x.requires_grad_(True)
    y = g(x)
    if not 4096 < y.numel() * size <= 2 * 10**5 or y.numel() < 32:
        return False
    result = vjp_magic.differentiate(y, x, seed=seed, exact_up_to=0)
    got = result.jacobian("x").reshape(y.numel(), size)
    expected = torch.autograd.functional.jacobian(g, x.detach()).reshape(y.numel(), size)
    # equal_nan: float32 overflow (exp of a cube) makes NaN entries in the reference too
    torch.testing.assert_close(got, expected, equal_nan=True,
                               msg=lambda m: f"seed {seed}: {m}")
    assert x.grad is None
    return True


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_differentiate_equals_jacrev_on_blocks_of_compositions(dtype):
    assert sum(_check(seed, dtype) for seed in range(8)) >= 5


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_differentiate_blocks_fuzz(dtype):
    count = SLOW_EXAMPLES // 2
    ran = sum(_check(20_000 + seed, dtype) for seed in range(count))
    assert ran >= 0.5 * count
