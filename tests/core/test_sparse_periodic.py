"""Colours that repeat along the flat rows (a 1-D stencil's i mod p): the passes built by
strided fills of one vector and read off by one window copy per residue must give exactly
what the general path (one comparison per colour, one gather per diagonal) gives, and the
Jacobian torch.func.jacrev gives; the period claimed must hold on the colours themselves."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stencils import tridiagonal
from vjp_magic.core.colouring import periodic_lattice, row_colouring
from vjp_magic.core.compressed import colour_passes, compressed_jacobian, periodic_fits
from vjp_magic.core.indexmaps import proved_pattern

BUDGET = 2**30


def _wide(x):  # keys -2..2 (evenly spaced), zero outside
    return F.pad(x, (2, 0))[:-2] - F.pad(x, (0, 2))[2:] + x.sin() + \
        F.pad(x, (1, 0))[:-1] * F.pad(x, (0, 1))[1:]


def _spaced(x):  # keys -2, 0, 2 (spacing 2)
    return F.pad(x, (2, 0))[:-2] * x + F.pad(x, (0, 2))[2:] ** 2


def _shorter(x):  # m = n - 2: rows read x[i], x[i + 1], x[i + 2]
    return x[:-2] * x[1:-1] + x[2:].exp()


def _rows(x):  # a (4, k) output, a stencil along each row (k divisible by 3: flat period 3)
    u = x.reshape(4, -1)
    return (F.pad(u, (1, 0))[:, :-1] + u ** 3 + F.pad(u, (0, 1))[:, 1:]).reshape(-1)


def _copy(x):  # the backward hands the vector itself back: the pass must not follow it
    return x.clone()


MAPS = [(tridiagonal, 3000), (_wide, 2000), (_spaced, 1500), (_shorter, 1000),
        (_rows, 4 * 300), (_copy, 700)]


def _coloured(f, n, dtype):
    x = torch.linspace(-1.5, 1.3, n, dtype=dtype, requires_grad=True)
    y = f(x)
    pattern = proved_pattern(y, x, BUDGET)
    assert pattern is not None and pattern.diagonals is not None
    colours, period = row_colouring(pattern.crow.numpy(), pattern.col.numpy(),
                                    pattern.shape[1], lattice=pattern.lattice,
                                    shape=(tuple(y.shape), tuple(x.shape)))
    return x, y, pattern, torch.from_numpy(colours), period


@pytest.mark.parametrize("f, n", MAPS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_periodic_passes_equal_the_general_ones_and_jacrev(f, n, dtype):
    x, y, pattern, colours, period = _coloured(f, n, dtype)
    assert period > 0
    count = int(colours.max()) + 1
    assert periodic_fits(pattern.diagonals, y.numel(), x.numel(), period, count)
    fast = colour_passes(y, x, pattern, colours, BUDGET, count, period)
    general = colour_passes(y, x, pattern, colours, BUDGET, count)
    assert torch.equal(fast.held, general.held)
    assert torch.equal(fast.values, general.values)  # stacked when read
    assert torch.equal(fast.at, general.at)
    expected = torch.func.jacrev(f)(x.detach())
    dense = torch.sparse_csr_tensor(pattern.crow, pattern.col, fast.held,
                                    size=pattern.shape).to_dense()
    assert torch.equal(dense, expected)


@pytest.mark.parametrize("f, n", MAPS)
def test_compressed_jacobian_on_the_periodic_path_equals_jacrev(f, n):
    x = torch.linspace(-1.5, 1.3, n, dtype=torch.float64, requires_grad=True)
    sparse = compressed_jacobian(f(x), x, BUDGET, seed=3)
    assert sparse is not None
    assert torch.equal(sparse.matrix.to_dense(), torch.func.jacrev(f)(x.detach()))


@pytest.mark.parametrize("shape, offsets", [
    ((900,), [(-1,), (0,), (1,)]),
    ((30, 30), [(0, -1), (0, 0), (0, 1)]),
    ((30, 30), [(-1, 0), (0, 0), (1, 0), (0, 1), (0, -1)]),
    ((7, 9, 11), [(0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1)]),
    ((4, 300), [(0, -1), (0, 0), (0, 1)]),
    ((1, 500), [(0, -2), (0, 0), (0, 2)]),
])
def test_a_claimed_period_holds_on_the_colours(shape, offsets):
    from vjp_magic.core.pattern import lattice_of

    terms = []
    for d in offsets:  # row o reads o + d where inside the grid
        lo = tuple(max(0, -a) for a in d)
        hi = tuple(min(s, s - a) for s, a in zip(shape, d))
        terms.append((d, lo, hi))
    lattice = lattice_of(shape, shape, terms)
    found = periodic_lattice(lattice)
    assert found is not None
    colours, period = found
    if period:
        r = np.arange(len(colours))
        assert np.array_equal(colours, colours[r % period])
    if shape == (900,) or shape == (4, 300):  # i mod 3 on the flat rows
        assert period == 3


def test_small_or_ragged_patterns_keep_the_general_path():
    x, y, pattern, colours, period = _coloured(tridiagonal, 40, torch.float32)
    assert not periodic_fits(pattern.diagonals, y.numel(), x.numel(), period, 3)  # 2 edge rows
    x, y, pattern, colours, period = _coloured(tridiagonal, 400, torch.float32)
    assert periodic_fits(pattern.diagonals, y.numel(), x.numel(), period, 3)
    assert not periodic_fits(pattern.diagonals, y.numel(), x.numel(), 0, 3)  # no period
