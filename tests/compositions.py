"""Seeded random compositions of the ops whose index maps the graph rules prove (shifts,
pads, slices, roll, flip, cat, stack, conv1d / conv2d, gathers, indexing, elementwise maps,
reductions, matmul), each a function of a 1-D x for ``torch.func.jacrev`` to check against.
Constants (kernels, matrices, indices) come from the seed, so the derivative of every
composition is generic: an exact zero of its Jacobian at a random x is structural. (Products
of two entries are left out: one may be a constant zero, a padded or masked entry, which would
cancel a dependence that the op structurally has.)"""
from __future__ import annotations

import random

import torch
import torch.nn.functional as F


def _const(rng: random.Random, shape, dtype):
    generator = torch.Generator().manual_seed(rng.randrange(2**31))
    return torch.randn(shape, generator=generator, dtype=dtype)


def _reshaped(op, rows: int):
    """``op`` on x as a (rows, ·) matrix (x zero-padded to a multiple of rows), flattened."""
    def f(x):
        extra = -x.numel() % rows
        return op(F.pad(x, (0, extra)).reshape(rows, -1)).reshape(-1)
    return f


def unary_ops(rng: random.Random, n: int, dtype) -> list:
    """Ops from a 1-D tensor of n entries to a 1-D tensor."""
    k = rng.randrange(1, 4)
    lo, hi = rng.randrange(0, 3), rng.randrange(0, 3)
    index = torch.tensor([rng.randrange(n) for _ in range(rng.randrange(1, 2 * n))])
    mask = torch.tensor([rng.random() < 0.5 for _ in range(n)])
    kernel = _const(rng, (1, 1, rng.randrange(1, 5)), dtype)
    kernel2 = _const(rng, (2, 1, 3, 3), dtype)
    matrix = _const(rng, (rng.randrange(1, 4), 2), dtype)
    stride, dilation = rng.randrange(1, 3), rng.randrange(1, 3)
    return [
        lambda x: F.pad(x, (1, 0))[:-1] + x ** 3 + F.pad(x, (0, 1))[1:],
        lambda x: F.pad(x, (lo, hi), value=0.5),
        lambda x: F.pad(x[None], (min(lo, x.numel() - 1), min(hi, x.numel() - 1)),
                        mode="reflect")[0],
        lambda x: F.pad(x[None], (lo, hi), mode="replicate")[0],
        lambda x: x[lo::k],
        lambda x: x.narrow(0, 0, max(1, x.numel() - hi)),
        lambda x: x.roll(k) * 1.5 + torch.sin(x.flip(0).roll(-1)) + x.roll(-k) ** 3,
        lambda x: torch.cat([x, torch.ones(2, dtype=x.dtype), x[:k] * 2]),
        lambda x: torch.stack([x, x.roll(1)], 1).reshape(-1),
        lambda x: F.conv1d(x[None, None], kernel.to(x.dtype), padding=kernel.shape[-1] // 2,
                           stride=stride, dilation=dilation)[0, 0],
        lambda x: F.conv2d(F.pad(x, (0, -x.numel() % 3)).reshape(1, 1, 3, -1), kernel2.to(x.dtype),
                           padding=1).reshape(-1),
        lambda x: x.gather(0, index % x.numel()) + x[:1],
        lambda x: x.index_select(0, index % x.numel()),
        lambda x: x[index % x.numel()] + 1,
        lambda x: x[mask[: x.numel()]] if x.numel() == n else x.tanh(),
        lambda x: torch.sin(x) * 2 + x.exp() * 0.1,
        lambda x: torch.where(mask[: x.numel()], x, x.roll(1) ** 2) if x.numel() == n
        else x * 3,
        lambda x: x.unfold(0, min(3, x.numel()), 1).sum(-1),
        _reshaped(lambda m: m.sum(0), 2),
        _reshaped(lambda m: m.mean(1, keepdim=True), 3),
        _reshaped(lambda m: m.t(), 2),
        _reshaped(lambda m: m.softmax(0), 2),
        _reshaped(lambda m: m.cumsum(1), 4),
        _reshaped(lambda m: matrix.to(m.dtype) @ m, 2),
        _reshaped(lambda m: m.t() @ matrix.t().to(m.dtype), 2),
        _reshaped(lambda m: torch.tril(m) * 2, 3),
        lambda x: x.repeat(2) + x.sum() if x.numel() < 6 else x.repeat(2),
    ]


def composition(seed: int, dtype, most: int = 3):
    """(f, n): a composition of 1 to ``most`` random ops and the size of its input."""
    rng = random.Random(seed)
    n = rng.randrange(4, 40)
    sizes = [n]
    chosen = []
    for _ in range(rng.randrange(1, most + 1)):
        op = rng.choice(unary_ops(rng, sizes[-1], dtype))
        try:  # an op that does not fit the size (a kernel longer than x) ends the chain
            size = op(torch.zeros(sizes[-1], dtype=dtype)).numel()
        except RuntimeError:
            break
        if size == 0:
            break
        chosen.append(op)
        sizes.append(size)

    def f(x):
        for op in chosen:
            x = op(x)
        return x

    return f, n
