"""Fuzz: column passes (core/column_passes.py) equal torch.func.jacrev on random compositions
(tests/compositions.py) given a dense column: y = f(x) + x[j]·tanh(f(x)), every output
reading x[j]. The pattern is the proved one, else observed by columns; the result, where
the module gives one, must equal jacrev (never silently wrong). The default run is short;
``pytest -m slow`` runs ``VJP_FUZZ_EXAMPLES`` examples (1,000 unless set)."""
import os

import pytest
import torch
from compositions import composition

from vjp_magic.core.column_passes import column_attempt, column_colours, observed_columns
from vjp_magic.core.indexmaps import proved_pattern

SLOW_EXAMPLES = int(os.environ.get("VJP_FUZZ_EXAMPLES", "1000"))
BUDGET = 2 ** 30


def _check(seed: int, dtype) -> bool | None:
    """Whether the column passes gave the Jacobian (None: not an example: 10⁴ entries or
    more, or a single output)."""
    f, n = composition(seed, dtype, most=4)
    j = seed % n

    def g(t):
        y = f(t)
        return y + t.reshape(-1)[j] * torch.tanh(y)

    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dtype=dtype, generator=generator).requires_grad_(True)
    y = g(x)
    if y.numel() * n >= 10_000 or y.numel() < 2:
        return None
    pattern = proved_pattern(y, x, BUDGET)
    pattern = pattern if pattern is not None else observed_columns(y, x, BUDGET, seed)
    colours = None if pattern is None else column_colours(pattern, None, y.shape, x.shape)
    sparse = None if colours is None else column_attempt(y, x, pattern, colours, BUDGET, seed)
    if sparse is None:
        return False
    expected = torch.func.jacrev(g)(x.detach()).reshape(y.numel(), n)
    torch.testing.assert_close(sparse.matrix.to_dense(), expected, equal_nan=True,
                               msg=lambda m: f"seed {seed}: {m}")
    assert x.grad is None
    return True


def _run(seeds, dtype) -> tuple[int, int]:
    results = [r for r in (_check(seed, dtype) for seed in seeds) if r is not None]
    return sum(results), len(results)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_columns_equal_jacrev_on_random_compositions(dtype):
    ran, examples = _run(range(30), dtype)
    assert examples >= 20 and ran >= examples // 2


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_columns_fuzz(dtype):
    ran, examples = _run(range(20_000, 20_000 + SLOW_EXAMPLES // 2), dtype)
    assert examples >= 0.5 * (SLOW_EXAMPLES // 2) and ran >= examples // 2
