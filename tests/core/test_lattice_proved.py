"""The proved lattice colouring (pattern.Lattice, colouring.proved_lattice): a pattern proved on
the shift-only path carries its exact conflict differences, and (a·o) mod p is then valid by
argument alone. Checked against a brute-force reading of the CSR pattern (every pair of rows
sharing a column), valid_rows, and end to end against torch.func.jacrev."""
import random

import numpy as np
import pytest
from stencils import laplacian, tridiagonal
import torch
import torch.nn.functional as F

import vjp_magic
from vjp_magic.core import colouring
from vjp_magic.core.colouring import _lattice_colours, proved_lattice, valid_rows
from vjp_magic.core.indexmaps import proved_pattern
from vjp_magic.core.pattern import lattice_of

BUDGET = 2**32


def _pad(ndim, a, lo, hi):
    pad = [0] * (2 * (ndim - a))
    pad[2 * (ndim - 1 - a)], pad[2 * (ndim - 1 - a) + 1] = lo, hi
    return pad


def _step(t, rng: random.Random):
    """One random shape-keeping op, shift-like but for the last two (the general path)."""
    a = rng.randrange(t.ndim)
    size = t.shape[a]
    k = rng.randrange(1, max(2, size))
    choice = rng.randrange(9)
    if choice == 0:  # shift right, zero fill
        return F.pad(t, _pad(t.ndim, a, k, 0)).narrow(a, 0, size)
    if choice == 1:  # shift left
        return F.pad(t, _pad(t.ndim, a, 0, k)).narrow(a, k, size)
    if choice == 2:
        return t.roll(rng.randrange(-size, size + 1), a)
    if choice == 3:  # a rotation by split and cat
        first, second = torch.split(t, [k, size - k] if k < size else [size, 0], dim=a)
        return torch.cat([second * 2.0, first], dim=a)
    if choice == 4:
        return t ** 3
    if choice == 5:
        return t.sin()
    if choice == 6:  # a flat shift through views: the terms end in other coordinates
        return F.pad(t.reshape(-1), (k, 0))[:t.numel()].reshape(t.shape)
    if choice == 7 and rng.random() < 0.3:
        return t.flip(a)  # not shift-like
    return t.exp()


def _composition(x, rng: random.Random, depth: int):
    t = x
    for _ in range(depth):
        t = _step(t, rng) + _step(t, rng) if rng.random() < 0.5 else _step(t, rng)
    return t


def _conflicts(crow, col, grid):
    """Brute force: the multi-index differences o1 - o2 of every pair of rows sharing a
    column, and the most rows reading one column."""
    rows = np.repeat(np.arange(len(crow) - 1), np.diff(crow))
    by_col: dict = {}
    for r, c in zip(rows.tolist(), col.tolist()):
        by_col.setdefault(c, []).append(r)
    found = set()
    for readers in by_col.values():
        index = np.stack(np.unravel_index(np.array(readers), grid), 1) if grid else None
        for i in range(len(readers)):
            for j in range(len(readers)):
                if i != j:
                    found.add(tuple((index[i] - index[j]).tolist()))
    return found, max((len(r) for r in by_col.values()), default=0)


def _pairwise_valid(crow, col, colours) -> bool:
    seen = {}
    rows = np.repeat(np.arange(len(crow) - 1), np.diff(crow))
    for r, c in zip(rows.tolist(), col.tolist()):
        if (c, int(colours[r])) in seen:
            return False
        seen[(c, int(colours[r]))] = r
    return True


SHAPES = [(31,), (2,), (7, 9), (1, 12), (4, 5, 6), (3, 1, 8), (5, 33)]


@pytest.mark.parametrize("shape", SHAPES)
def test_lattice_holds_every_conflict_and_its_colouring_is_valid_and_optimal(shape):
    rng = random.Random(sum(shape) * 7 + len(shape))
    coloured = 0
    for _ in range(30):
        x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
        y = _composition(x, rng, rng.randrange(1, 5))
        pattern = proved_pattern(y, x, BUDGET)
        if pattern is None or pattern.lattice is None:
            continue
        crow, col = pattern.crow.numpy(), pattern.col.numpy()
        lattice = pattern.lattice
        assert int(np.prod(lattice.grid)) == y.numel()
        found, most = _conflicts(crow, col, lattice.grid)
        listed = {tuple(d) for d in lattice.deltas.tolist()}
        assert found <= listed, "a conflict the lattice does not list"
        assert lattice.bound <= most
        colours = proved_lattice(lattice)
        if colours is not None:
            coloured += 1
            assert len(colours) == y.numel()
            assert _pairwise_valid(crow, col, colours)
            assert valid_rows(crow, col, x.numel(), colours)
            assert colours.max() + 1 == max(most, 1)  # the lower bound: optimal
            assert set(colours.tolist()) == set(range(colours.max() + 1))
    assert coloured >= 3


def test_random_terms_against_the_brute_force():
    """lattice_of on random terms whose boxes keep o + d inside the tensor (the offsets
    module's invariant), the CSR built by hand."""
    rng = np.random.default_rng(5)
    for trial in range(200):
        ndim = int(rng.integers(1, 4))
        grid = tuple(int(s) for s in rng.integers(1, 9, ndim))
        terms = []
        for _ in range(int(rng.integers(1, 6))):
            d = tuple(int(v) for v in rng.integers(-3, 4, ndim))
            lo = tuple(max(0, -v) + int(rng.integers(0, 2)) for v in d)
            hi = tuple(min(s, s - v) - int(rng.integers(0, 2)) for s, v in zip(grid, d))
            if all(h > low for low, h in zip(lo, hi)):
                terms.append((d, lo, hi))
        rows: dict = {}
        for d, lo, hi in terms:
            for o in np.ndindex(*grid):
                if all(a <= v < b for v, a, b in zip(o, lo, hi)):
                    rows.setdefault(np.ravel_multi_index(o, grid), set()).add(
                        int(np.ravel_multi_index(tuple(v + e for v, e in zip(o, d)), grid)))
        m = int(np.prod(grid))
        crow = np.concatenate([[0], np.cumsum([len(rows.get(r, ())) for r in range(m)])])
        col = np.array([c for r in range(m) for c in sorted(rows.get(r, ()))], dtype=np.int64)
        lattice = lattice_of(grid, grid, terms)
        found, most = _conflicts(crow, col, grid)
        assert found <= {tuple(d) for d in lattice.deltas.tolist()}
        assert lattice.bound <= most
        colours = proved_lattice(lattice)
        if colours is not None:
            assert _pairwise_valid(crow, col, colours), (trial, grid, terms)


@pytest.mark.parametrize("grid", [(1,), (7,), (10,), (3, 4), (6, 1, 5), (2, 3, 4, 5)])
@pytest.mark.parametrize("p", [2, 3, 5, 7])
def test_lattice_colours_are_the_formula(grid, p):
    rng = np.random.default_rng(p + len(grid))
    coeffs = tuple(int(a) for a in rng.integers(0, p, len(grid)))
    index = np.stack(np.unravel_index(np.arange(int(np.prod(grid))), grid), 1)
    raw = (index @ np.array(coeffs)) % p
    used = np.unique(raw)
    expected = np.searchsorted(used, raw)  # unused colours dropped, order kept
    assert np.array_equal(_lattice_colours(grid, coeffs, p), expected)


def _periodic(x):
    return x.roll(1, 0) - 2 * x + x.roll(-1, 0)


@pytest.mark.parametrize("f, n, count", [(tridiagonal, 1000, 3), (laplacian, 900, 5),
                                         (_periodic, 999, 3), (_periodic, 1001, None)])
def test_stencils_take_the_proved_lattice_without_reading_the_pattern(f, n, count, monkeypatch):
    """No verification over the pattern where the lattice is proved; a periodic stencil whose
    length 3 does not divide has no 3-colour lattice and takes the verified path."""
    x = torch.randn(n, dtype=torch.float64, requires_grad=True)
    y = f(x)
    pattern = proved_pattern(y, x, BUDGET)
    colours = proved_lattice(pattern.lattice)
    if count is None:
        assert colours is None
        return
    assert colours.max() + 1 == count
    monkeypatch.setattr(colouring, "valid_rows", _refused)
    matrix = vjp_magic.sparse_jacobian(y, x, seed=3)
    expected = torch.func.jacrev(f)(x.detach())
    torch.testing.assert_close(matrix.to_dense(), expected)


def _refused(*args):
    raise AssertionError("the pattern was read to verify a proved lattice")


@pytest.mark.parametrize("seed", range(12))
def test_sparse_jacobian_of_random_compositions_equals_jacrev(seed):
    rng = random.Random(seed)
    shape = [(40,), (6, 9), (3, 4, 5)][seed % 3]
    x = torch.randn(shape, dtype=torch.float64)
    depth = rng.randrange(1, 4)

    def f(t):
        return _composition(t, random.Random(seed * 31 + depth), depth)

    leaf = x.clone().requires_grad_(True)
    y = f(leaf)
    matrix = vjp_magic.sparse_jacobian(y, leaf, seed=seed)
    expected = torch.func.jacrev(f)(x).reshape(y.numel(), x.numel())
    torch.testing.assert_close(matrix.to_dense(), expected)


def _conv(x):
    weight = torch.arange(18, dtype=x.dtype).reshape(2, 1, 3, 3) / 7 - 1
    return torch.nn.functional.conv2d(x.reshape(1, 1, 12, 10), weight, padding=1).sin()


OTHER_SHAPES = [
    (lambda x: x[1:] - x[:-1], (50,)),  # fewer rows than x
    (lambda x: F.pad(x, (2, 3)) ** 2 + F.pad(x, (4, 1)), (50,)),  # more rows
    (lambda x: (x[:, 1:] * x[:, :-1]).reshape(-1), (6, 9)),  # a flat output of a grid
    (lambda x: x.reshape(6, 9)[1:-1, 1:-1] + x.reshape(6, 9)[2:, :-2], (54,)),
    (_conv, (120,)),  # channels: an axis of conflicts of its own
]


@pytest.mark.parametrize("case", range(len(OTHER_SHAPES)))
def test_outputs_shaped_unlike_x_get_a_valid_optimal_lattice(case, monkeypatch):
    f, shape = OTHER_SHAPES[case]
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    y = f(x)
    pattern = proved_pattern(y, x, BUDGET)
    assert pattern is not None and pattern.lattice is not None
    crow, col = pattern.crow.numpy(), pattern.col.numpy()
    found, most = _conflicts(crow, col, pattern.lattice.grid)
    assert found <= {tuple(d) for d in pattern.lattice.deltas.tolist()}
    colours = proved_lattice(pattern.lattice)
    if colours is not None:
        assert _pairwise_valid(crow, col, colours)
        assert colours.max() + 1 == max(most, 1)
    matrix = vjp_magic.sparse_jacobian(y, x, seed=case)
    expected = torch.func.jacrev(f)(x.detach()).reshape(y.numel(), x.numel())
    torch.testing.assert_close(matrix.to_dense(), expected)


def test_terms_reaching_outside_the_tensor_claim_nothing():
    """o + d past the tensor's edge would let flat indices meet where multi-indices do not
    (row 0 reading entry (1, 4) + (0, 1) = flat 10 = (2, 0)): no lattice then."""
    assert lattice_of((5,), (5,), [((1,), (0,), (5,))]) is None
    assert lattice_of((3, 5), (3, 5), [((0, 1), (0, 0), (3, 5))]) is None
    inside = lattice_of((3, 5), (3, 5), [((0, 1), (0, 0), (3, 4)), ((0, 0), (0, 0), (3, 5))])
    assert {tuple(d) for d in inside.deltas.tolist()} == {(0, 1), (0, -1)}
    assert inside.bound == 2
