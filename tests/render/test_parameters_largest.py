"""The parameter table's largest |entry| and where it is (render.parameters), read without an
``abs`` copy, agree with ``abs().argmax()`` (the first largest), for negative and positive
largest entries, exact ties between them, repeated maxima, NaN and ±inf, and other dtypes."""
from __future__ import annotations

import math

import pytest
import torch

from vjp_magic.render.parameters import _largest


def _reference(flat: torch.Tensor) -> tuple[int, float]:
    magnitudes = flat.abs()
    k = int(magnitudes.argmax())
    return k, float(magnitudes[k])


def _same(actual, expected) -> bool:
    (k, v), (k0, v0) = actual, expected
    return k == k0 and (v == v0 or (math.isnan(v) and math.isnan(v0)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_random_tensors(dtype):
    g = torch.Generator().manual_seed(0)
    for size in (1, 2, 7, 1000, 100_003):
        flat = torch.randn(size, generator=g, dtype=dtype)
        assert _same(_largest(flat), _reference(flat))
        assert _same(_largest(-flat), _reference(-flat))


@pytest.mark.parametrize("values", [
    [1.0, -3.0, 3.0, 2.0],    # a tie, the negative first
    [3.0, -3.0, 1.0],         # a tie, the positive first
    [0.5, 2.0, 2.0, -1.0],    # a repeated maximum
    [-2.0, -2.0, 1.0],        # a repeated negative maximum
    [0.0, 0.0, 0.0],          # all zero
    [1.0, float("nan"), 5.0],
    [1.0, float("-inf"), float("inf")],
    [-1.0, float("-inf"), 2.0],
])
def test_edge_cases(values):
    for dtype in (torch.float32, torch.float64):
        flat = torch.tensor(values, dtype=dtype)
        assert _same(_largest(flat), _reference(flat)), (values, dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.complex64])
def test_other_dtypes(dtype):
    flat = torch.tensor([0.5, -4.0, 3.0, 4.0]).to(dtype)
    assert _same(_largest(flat), _reference(flat))
