"""The shift-like path of the proved pattern (offset terms, vjp_magic.core.indexmaps.offsets)
gives exactly the CSR of the general path (index arrays), on random compositions of shifts,
pads, crops, slices, rolls (wrapping around), cat and split in 1-D, 2-D and 3-D, with
branches joined, and with ops that force the general path halfway (flip, a strided slice)."""
import random

import pytest
import torch
import torch.nn.functional as F

from vjp_magic.core.indexmaps import proved_pattern, walk

BUDGET = 2**32


def _general_pattern(output, x, monkeypatch):
    with monkeypatch.context() as patch:
        patch.setattr(walk, "SHIFTS", {})
        return proved_pattern(output, x, BUDGET)


def _same(output, x, monkeypatch):
    fast = proved_pattern(output, x, BUDGET)
    slow = _general_pattern(output, x, monkeypatch)
    assert (fast is None) == (slow is None)
    if fast is None:
        return None
    assert fast.shape == slow.shape
    assert torch.equal(fast.crow, slow.crow)
    assert torch.equal(fast.col, slow.col)
    return fast


def _pad(ndim, a, lo, hi):
    """F.pad's list padding dim ``a`` of an ``ndim``-d tensor by (lo, hi)."""
    pad = [0] * (2 * (ndim - a))
    pad[2 * (ndim - 1 - a)], pad[2 * (ndim - 1 - a) + 1] = lo, hi
    return pad


def _step(t, rng: random.Random):
    """One random op that keeps the shape."""
    a = rng.randrange(t.ndim)
    size = t.shape[a]
    k = rng.randrange(1, max(2, size))
    choice = rng.randrange(11)
    if choice == 9:  # a flat shift through views: the terms end in other coordinates
        return F.pad(t.reshape(-1), (k, 0))[:t.numel()].reshape(t.shape)
    if choice == 10:
        return t.unsqueeze(0).squeeze(0).reshape(t.shape[::-1]).reshape(t.shape)
    if choice == 0:  # shift right, zero fill (pad then cut)
        return F.pad(t, _pad(t.ndim, a, k, 0)).narrow(a, 0, size)
    if choice == 1:  # shift left (cut then pad)
        return F.pad(t.narrow(a, k, size - k) if k < size else t, _pad(t.ndim, a, 0, min(k, size)))[
            (slice(None),) * a + (slice(0, size),)]
    if choice == 2:  # crop both sides, pad back (negative pads)
        lo, hi = rng.randrange(0, size), rng.randrange(0, size)
        if lo + hi >= size:
            return t.sin()
        return F.pad(F.pad(t, _pad(t.ndim, a, -lo, -hi)), _pad(t.ndim, a, hi, lo))
    if choice == 3:
        dims = rng.sample(range(t.ndim), rng.randrange(1, t.ndim + 1))
        return t.roll([rng.randrange(-2 * size, 2 * size) for _ in dims], dims)
    if choice == 4:  # cat of two slices swapped (a rotation by split)
        first, second = torch.split(t, [k, size - k] if k < size else [size, 0], dim=a)
        return torch.cat([second * 2.0, first], dim=a)
    if choice == 5:  # cat with a constant part
        zeros = torch.zeros(t.shape[:a] + (min(k, size),) + t.shape[a + 1:])
        return torch.cat([zeros, t.narrow(a, 0, size - min(k, size))], dim=a)
    if choice == 6:
        return t ** 3
    if choice == 7:
        return t.flip(a)  # not shift-like: the general path takes over
    return t.exp()


def _composition(x, rng: random.Random, depth: int):
    t = x
    for _ in range(depth):
        if rng.random() < 0.3:  # two branches joined
            t = _step(t, rng) + _step(t, rng)
        else:
            t = _step(t, rng)
    return t


SHAPES = [(37,), (1,), (2,), (9, 11), (1, 7), (4, 5, 6), (3, 1, 4), (300,), (3, 70), (2, 3, 80)]


@pytest.mark.parametrize("shape", SHAPES)
def test_offsets_equal_the_general_path_on_random_compositions(shape, monkeypatch):
    rng = random.Random(hash(shape) % 1000)
    checked = 0
    for trial in range(40):
        x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
        y = _composition(x, rng, rng.randrange(1, 6))
        if trial % 3 == 0:  # an output shaped otherwise: padded, cropped, sliced
            a = rng.randrange(x.ndim)
            hi = rng.randrange(-min(1, y.shape[a] - 1), 3)
            y = F.pad(y, _pad(y.ndim, a, rng.randrange(3), hi))
            y = y.narrow(a, rng.randrange(2) if y.shape[a] > 1 else 0, 1) if hi < 0 else y
        if _same(y, x, monkeypatch) is not None:
            checked += 1
    assert checked > 20


@pytest.mark.parametrize("n", [2, 3, 1000])
def test_roll_wraps_around(n, monkeypatch):
    x = torch.randn(n, requires_grad=True)
    pattern = _same(x.roll(1) - 2 * x + x.roll(-1), x, monkeypatch)
    cols = pattern.col.reshape(n, -1) if pattern.nnz == 3 * n else None
    if n >= 3:
        assert cols is not None
        assert cols[0].tolist() == [0, 1, n - 1]
        assert cols[-1].tolist() == [0, n - 2, n - 1]


def test_stencil_rows_at_the_edges(monkeypatch):
    n = 10_000
    x = torch.randn(n, requires_grad=True)
    y = F.pad(x, (1, 0))[:-1] + x ** 3 + F.pad(x, (0, 1))[1:]
    pattern = _same(y, x, monkeypatch)
    assert pattern.nnz == 3 * n - 2
    assert pattern.col[:2].tolist() == [0, 1]
    assert pattern.col[-2:].tolist() == [n - 2, n - 1]


def test_laplacian_and_a_gradient_graph(monkeypatch):
    x = torch.randn(30, 40, requires_grad=True)
    y = (4 * x - F.pad(x, (1, 0))[:, :-1] - F.pad(x, (0, 1))[:, 1:]
         - F.pad(x, (0, 0, 1, 0))[:-1] - F.pad(x, (0, 0, 0, 1))[1:])
    assert _same(y, x, monkeypatch).nnz == 5 * 1200 - 2 * 30 - 2 * 40
    z = torch.randn(500, dtype=torch.float64, requires_grad=True)
    f = (100 * (z[1:] - z[:-1] ** 2) ** 2 + (1 - z[:-1]) ** 2).sum()
    g, = torch.autograd.grad(f, z, create_graph=True)
    assert _same(g, z, monkeypatch).nnz == 3 * 500 - 2


def test_general_path_halfway_and_strided_slices(monkeypatch):
    x = torch.randn(6, 8, requires_grad=True)
    y = F.pad(x.flip(0), (2, 1))[:, ::2].roll(1, 1) + x[:, 1:7].repeat(1, 1) ** 2
    _same(y, x, monkeypatch)
    _same(torch.cat([x, x.roll(3, 0)], dim=0).sum(0), x, monkeypatch)  # a reduction at the end


def test_views_at_both_ends(monkeypatch):
    k = 40
    x = torch.randn(k * k, requires_grad=True)
    u = x.reshape(k, k)
    p = F.pad(u, (1, 1, 1, 1))
    y = (p[:-2, 1:-1] + p[2:, 1:-1] + p[1:-1, :-2] + p[1:-1, 2:] - 4 * u + u ** 3).reshape(-1)
    assert _same(y, x, monkeypatch).nnz == 5 * k * k - 4 * k
    w = x.reshape(k, k)
    mixed = (w.roll(1, 0) + x.roll(3).reshape(k, k)).reshape(-1)  # parts in other coordinates
    assert _same(mixed, x, monkeypatch).nnz == 2 * k * k
    _same(x.reshape(2, -1).unsqueeze(0)[:, :, 1:] * 2, x, monkeypatch)


CONVS = [  # (dims, in channels, out channels, kernel, padding, dilation, stride, groups)
    (1, 1, 1, 3, 1, 1, 1, 1), (1, 3, 2, 5, 2, 1, 1, 1), (1, 2, 4, 3, 0, 2, 1, 1),
    (1, 4, 4, 3, 3, 3, 1, 4), (1, 4, 4, 3, 1, 1, 1, 2), (1, 2, 2, 3, 1, 1, 2, 1),
    (2, 2, 3, 3, 1, 1, 1, 1), (2, 3, 3, (3, 1), (0, 1), (2, 1), 1, 3), (3, 1, 2, 3, 1, 1, 1, 1),
]


@pytest.mark.parametrize("spec", CONVS)
@pytest.mark.parametrize("batched", [True, False])
def test_convolution_stacks(spec, batched, monkeypatch):
    dims, c_in, c_out, kernel, padding, dilation, stride, groups = spec
    conv = [torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d][dims - 1]
    first = conv(c_in, c_out, kernel, stride, padding, dilation, groups)
    second = conv(c_out, c_out, 3, 1, 1, 1, 1)
    spatial = {1: (80,), 2: (20, 14), 3: (12, 10, 9)}[dims]
    size = (1, c_in) + spatial if batched else (c_in,) + spatial
    x = torch.randn((2,) + size[1:] if batched else size, requires_grad=True)
    pattern = _same(second(first(x).roll(1, -1)).sin(), x, monkeypatch)
    assert pattern is not None
    _same(first(F.pad(x, (1, 2) * dims)) ** 2, x, monkeypatch)


@pytest.mark.parametrize("gap", [0, 1, 2])
def test_pieces_of_one_offset_with_and_without_gaps(gap, monkeypatch):
    n = 50
    x = torch.randn(n, requires_grad=True)
    y = F.pad(x[:10], (0, n - 10)) + F.pad(x[10 + gap:], (10 + gap, 0)) + F.pad(x[20:30], (20, 20))
    pattern = _same(y, x, monkeypatch)
    read = [i for i in range(n) if not 10 <= i < 10 + gap]
    assert pattern.col.tolist() == read
    assert torch.equal(torch.repeat_interleave(torch.arange(n), pattern.crow.diff()), pattern.col)
    u = torch.randn(6, 7, requires_grad=True)
    corners = F.pad(u[:3, :3], (0, 4, 0, 3)) + F.pad(u[3 + gap:, 3:], (3, 0, 3 + gap, 0))
    assert _same(corners, u, monkeypatch).nnz == 9 + (3 - gap) * 4
