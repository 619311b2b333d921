"""Index-map rules of scatter, scatter_add, index_add and as_strided (core.indexmaps.scatters):
the proved pattern holds every nonzero of torch.func.jacrev's Jacobian (random values, so a
structural nonzero is a numeric one), exactly where nothing is overwritten; random shapes,
dims and indices, float32 and float64."""
import numpy as np
import pytest
import torch

from vjp_magic.core.indexmaps import proved_pattern

BUDGET = 2**30


def _patterns(f, x):
    y = f(x)
    found = proved_pattern(y, x, BUDGET)
    assert found is not None, "the rules should prove this graph"
    jacobian = torch.func.jacrev(f)(x.detach()).reshape(y.numel(), x.numel())
    proved = torch.zeros(y.numel(), x.numel(), dtype=torch.bool)
    rows = torch.repeat_interleave(torch.arange(y.numel()), found.crow.diff())
    proved[rows, found.col] = True
    return proved, jacobian != 0


def _random_case(rng, dtype):
    """(f, x, exact): a scatter-like op on pieces of x composed with elementwise maps; exact
    where nothing is overwritten and no entry is read twice into one."""
    ndim = int(rng.integers(1, 4))
    shape = tuple(int(s) for s in rng.integers(2, 6, ndim))
    dim = int(rng.integers(ndim))
    n = int(np.prod(shape))
    x = torch.randn(2 * n, dtype=dtype,
                    generator=torch.Generator().manual_seed(int(rng.integers(99))))
    kind = int(rng.integers(4))
    if kind in (0, 1):  # scatter_add / scatter of src (of index's shape, smaller) into self
        small = tuple(int(rng.integers(1, s + 1)) for s in shape)
        index = torch.from_numpy(rng.integers(0, shape[dim], small))
        op, k = ("scatter_add" if kind == 0 else "scatter"), int(np.prod(small))

        def f(x):  # (autograd wants src shaped as the index)
            dest, src = x[:n].reshape(shape), torch.sin(x[n:n + k]).reshape(small)
            return getattr(dest, op)(dim, index, src) ** 2
        return f, x, kind == 0
    if kind == 2:  # index_add of a source with index.numel() slices along dim
        k = int(rng.integers(1, 2 * shape[dim] + 1))
        source_shape = shape[:dim] + (k,) + shape[dim + 1:]
        index = torch.from_numpy(rng.integers(0, shape[dim], k))
        m = int(np.prod(source_shape))
        x = torch.randn(n + m, dtype=dtype)

        def f(x):
            return torch.exp(x[:n].reshape(shape) / 3).index_add(
                dim, index, x[n:].reshape(source_shape), alpha=2.0)
        return f, x, True
    size = tuple(int(s) for s in rng.integers(1, 5, 2))  # as_strided of the leaf itself
    stride = tuple(int(s) for s in rng.integers(0, 4, 2))
    offset = int(rng.integers(0, 4))
    x = torch.randn(24, dtype=dtype)  # beyond offset + Σ (size - 1) · stride ≤ 21

    def f(x):
        return x.as_strided(size, stride, offset) ** 3
    return f, x, not any(s == 0 and k > 1 for s, k in zip(stride, size))


def _one(seed, dtype):
    rng = np.random.default_rng(seed)
    f, x, exact = _random_case(rng, dtype)
    x.requires_grad_(True)
    proved, nonzero = _patterns(f, x)
    assert not (nonzero & ~proved).any(), f"seed {seed}: a nonzero the rules missed"
    if exact:
        assert (proved == nonzero).all(), f"seed {seed}: claimed more than the op reads"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("seed", range(30))
def test_random_scatters(seed, dtype):
    _one(seed, dtype)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_many_random_scatters(dtype):
    for seed in range(1000, 2500):
        _one(seed, dtype)


def test_scatter_add_collisions_read_every_source():
    x = torch.randn(8, dtype=torch.float64, requires_grad=True)
    index = torch.tensor([2, 2, 2, 0])
    proved, nonzero = _patterns(lambda x: x[:4].scatter_add(0, index, x[4:]), x)
    assert proved[2].tolist() == [False, False, True, False, True, True, True, False]
    assert (proved == nonzero).all()


def test_scatter_claims_the_overwritten_entries_too():
    x = torch.randn(8, dtype=torch.float64, requires_grad=True)
    index = torch.tensor([1, 3])
    proved, nonzero = _patterns(lambda x: x[:6].scatter(0, index, x[6:]), x)
    assert not (nonzero & ~proved).any()
    assert proved[1, 1] and not nonzero[1, 1]  # a superset: never a missed entry


def test_as_strided_of_anything_but_a_contiguous_leaf_is_unproved():
    x = torch.randn(12, dtype=torch.float64, requires_grad=True)
    assert proved_pattern((2 * x).as_strided((3, 3), (3, 1)), x, BUDGET) is None
    assert proved_pattern(x[1:].as_strided((3, 3), (3, 1)), x, BUDGET) is None
    y = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    assert proved_pattern(y.t().as_strided((3, 3), (1, 3)), y, BUDGET) is None
