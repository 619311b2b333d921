"""A view merging the batch with other axes (core/axisrules/shape.py): the merged axis carries
the batch as a factor (``(0, Free(C))``), a split gives the batch axis back, and an op along
the merged axis that mixes it drops the carry. Every carry :func:`axisflow.prove` claims is
checked against the Jacobian (``torch.autograd.functional.jacobian``): an output entry may
depend only on input entries whose carried indices are those of its own position."""
from __future__ import annotations

import itertools
import math
import random

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from vjp_magic.core import axisflow
from vjp_magic.core.axisrules import Free


def _digits(index: int, sizes: list[int]) -> list[int]:
    """``index`` written row-major in ``sizes``."""
    out = []
    for n in reversed(sizes):
        out.append(index % n)
        index //= n
    return out[::-1]


def _violations(f, x: torch.Tensor) -> list:
    """(output axis, carry, output index, input index) where the Jacobian of ``f`` at ``x``
    is nonzero although the claimed carry says the output entry cannot read that input."""
    x = x.clone().requires_grad_()
    proof = axisflow.prove(f(x), x)
    y_shape = tuple(f(x).shape)
    jac = torch.autograd.functional.jacobian(f, x.detach()).reshape(math.prod(y_shape), -1)
    bad = []
    for axis, carry in proof.carries.items():
        sizes = [b.size if isinstance(b, Free) else x.shape[b] for b in carry]
        for yi, xi in (jac != 0).nonzero().tolist():
            y_at = _digits(yi, list(y_shape))
            x_at = _digits(xi, list(x.shape))
            digits = _digits(y_at[axis], sizes)
            if any(not isinstance(b, Free) and d != x_at[b] for b, d in zip(carry, digits)):
                bad.append((axis, carry, y_at, x_at))
                break
    return bad


def _random_step(rng: random.Random, y: torch.Tensor) -> torch.Tensor:
    """One of: a mixing matmul on the last axis, a merge of two neighbouring axes, a split,
    a permute, tanh, a mean coupling, a roll, a softmax, a prefix."""
    kind = rng.choice(["mix", "merge", "split", "permute", "tanh", "mean", "roll",
                       "softmax", "prefix"])
    axis = rng.randrange(y.dim())
    if kind == "mix":
        g = torch.Generator().manual_seed(rng.randrange(10**6))
        return y @ torch.randn(y.shape[-1], y.shape[-1], dtype=y.dtype, generator=g)
    if kind == "merge" and y.dim() > 1:
        axis = min(axis, y.dim() - 2)
        return y.flatten(axis, axis + 1)
    if kind == "split":
        n = y.shape[axis]
        divisors = [d for d in range(2, n) if n % d == 0]
        return y.unflatten(axis, (rng.choice(divisors), -1)) if divisors else y
    if kind == "permute":
        order = list(range(y.dim()))
        rng.shuffle(order)
        return y.permute(order).contiguous()
    if kind == "mean":
        return y + 0.1 * y.mean(axis, keepdim=True)
    if kind == "roll":
        return y.roll(1, axis)
    if kind == "softmax":
        return y.softmax(axis)
    if kind == "prefix" and y.shape[axis] > 2:
        return y.narrow(axis, 0, y.shape[axis] - 1)
    return y.tanh()


@pytest.mark.parametrize("seed", range(150))
def test_every_carry_proved_through_merges_and_splits_holds(seed):
    rng = random.Random(seed)
    steps = rng.randrange(3, 9)
    shape = [(3, 4, 2, 5), (2, 4, 2, 3), (4, 2, 6)][seed % 3]
    x = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))

    def f(t):
        inner = random.Random(seed * 7 + 1)
        for _ in range(steps):
            t = _random_step(inner, t)
        return t

    assert _violations(f, x) == []


def _carries(f, x):
    x = x.clone().requires_grad_()
    return axisflow.prove(f(x), x).carries


def _mix(y):  # mixes the channel axis 1 (a 1x1 convolution by hand)
    w = torch.linspace(-1, 1, y.shape[1] ** 2, dtype=y.dtype).reshape(y.shape[1], -1)
    return torch.einsum("dc,bcl->bdl", w, y)


X = torch.randn(4, 3, 5, dtype=torch.float64)


@pytest.mark.parametrize("f, expected", [
    # (B, C, L) -> (B*C, L) -> (B, C, L), channels mixed before: the batch comes back
    (lambda y: _mix(y).reshape(12, 5).tanh().reshape(4, 3, 5), {0: (0,), 2: (2,)}),
    # merged, the merged axis is the batch outer factor of (B*C)
    (lambda y: _mix(y).reshape(12, 5), {0: (0, Free(3)), 1: (2,)}),
    # the batch inner factor of (C*B) after a permute
    (lambda y: _mix(y).permute(1, 0, 2).reshape(12, 5), {0: (Free(3), 0), 1: (2,)}),
    # reshape instead of permute: (C, B) read as (B, C) mixes samples
    (lambda y: _mix(y).permute(1, 0, 2).reshape(4, 3, 5), {2: (2,)}),
    # a mean along the merged axis: no batch
    (lambda y: (lambda z: z - z.mean(0)).__call__(_mix(y).reshape(12, 5)).reshape(4, 3, 5),
     {2: (2,)}),
    # InstanceNorm's view: batch_norm over (1, B*C, L) keeps axis 1
    (lambda y: F.instance_norm(_mix(y)), {0: (0,)}),
    (lambda y: F.group_norm(_mix(y).unsqueeze(-1).expand(4, 3, 5, 2).reshape(4, 6, 5), 2),
     {0: (0,)}),
    # a prefix of the merged axis: the carry spans more than the axis, nothing claimed
    (lambda y: _mix(y).reshape(12, 5)[:8].reshape(2, 4, 5), {2: (2,)}),
])
def test_merged_batch_carries(f, expected):
    assert _carries(f, X) == expected
    assert _violations(f, X) == []


def test_a_prefix_of_a_merged_axis_split_on_its_factors_claims_nothing():
    """(B, C) = (2, 4) merged, its first 4 rows (all of sample 0) viewed as (2, 2): row 1
    reads sample 0, so the leading axis does not carry the batch."""
    x = torch.randn(2, 4, 5, dtype=torch.float64)

    def f(t):
        return _mix(t).reshape(8, 5)[:4].reshape(2, 2, 5)

    assert _carries(f, x) == {2: (2,)}
    assert _violations(f, x) == []


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("need_weights", [True, False])
def test_batch_first_attention_keeps_the_batch(need_weights):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(6, 2, batch_first=True).double()
    x = torch.randn(3, 4, 6, dtype=torch.float64)

    def f(t):
        return mha(t, t, t, need_weights=need_weights)[0]

    assert _carries(f, x) == {0: (0,)}
    assert _violations(f, x) == []


def test_fused_attention_keeps_its_batch_axes_only():
    q = torch.randn(2, 3, 4, 5, dtype=torch.float64)

    def f(t):
        return F.scaled_dot_product_attention(t, 2 * t, t.tanh())

    assert _carries(f, q) == {0: (0,), 1: (1,)}
    assert _violations(f, q) == []


def test_digits_are_row_major():
    assert [_digits(i, [2, 3]) for i in range(6)] == [list(p) for p in
                                                      itertools.product(range(2), range(3))]
