"""Index-map rules added in session 37 (F9): index_put / setitem by index tensors, sort / topk,
transposed convolutions, avg_pool with ceil_mode, and a constant convolution kernel's exact-zero
taps. Each is fuzzed against torch.func.jacrev's nonzero pattern (random values, so a
structural nonzero is a numeric one): the proved pattern must hold every nonzero, and equal
the pattern exactly where no entry is overwritten."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vjp_magic.core.indexmaps import proved_pattern

BUDGET = 2**30


def _patterns(f, x, must_prove=True):
    y = f(x)
    found = proved_pattern(y, x, BUDGET, dense=True)
    if found is None:
        assert not must_prove, "the rules should prove this graph"
        return None, None
    jacobian = torch.func.jacrev(f)(x.detach()).reshape(y.numel(), x.numel())
    proved = torch.zeros(y.numel(), x.numel(), dtype=torch.bool)
    rows = torch.repeat_interleave(torch.arange(y.numel()), found.crow.diff())
    proved[rows, found.col] = True
    return proved, jacobian != 0


def _check(f, x, exact, must_prove=True):
    proved, actual = _patterns(f, x.clone().requires_grad_(), must_prove)
    if proved is None:
        return
    missed = actual & ~proved
    assert not missed.any(), f"the proved pattern misses {int(missed.sum())} nonzeros"
    if exact:
        assert torch.equal(proved, actual), \
            f"{int((proved & ~actual).sum())} entries claimed that are zero"


def _rng(seed):
    return np.random.default_rng(seed)


# -- index_put / setitem ---------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(40))
def test_index_put_fuzz(seed):
    rng = _rng(seed)
    ndim = int(rng.integers(1, 4))
    shape = tuple(int(s) for s in rng.integers(2, 6, ndim))
    n = int(np.prod(shape))
    lead = int(rng.integers(1, ndim + 1))  # dims indexed by tensors
    count = int(rng.integers(1, 7))
    unique = bool(rng.integers(2))
    if unique:  # distinct positions: nothing written twice
        flat = rng.choice(int(np.prod(shape[:lead])), size=min(count, int(np.prod(shape[:lead]))),
                          replace=False)
        idx = [torch.from_numpy(a) for a in np.unravel_index(flat, shape[:lead])]
    else:  # negative and repeated indices
        idx = [torch.from_numpy(rng.integers(-s, s, count)) for s in shape[:lead]]
    count = idx[0].numel()
    values_shape = (count,) + shape[lead:]
    if rng.integers(3) == 0 and len(values_shape) > 1:
        values_shape = values_shape[1:]  # broadcast along the indexed entries
    k = int(np.prod(values_shape))
    accumulate = bool(rng.integers(2))
    how = int(rng.integers(3))
    x = torch.randn(n + k, dtype=torch.float64)

    def f(x):
        dest, v = torch.exp(x[:n].reshape(shape) / 3), torch.sin(x[n:]).reshape(values_shape)
        if how == 0:
            return dest.index_put(tuple(idx), v, accumulate=accumulate) * 2
        if how == 1 and not accumulate:
            y = dest.clone()
            y[tuple(idx)] = v  # setitem by index tensors
            return y
        return torch.index_put(dest, tuple(idx), v, accumulate) ** 2
    exact = accumulate or unique
    _check(f, x, exact)


@pytest.mark.parametrize("seed", range(12))
def test_setitem_with_a_mask_or_a_slice_before_the_index(seed):
    rng = _rng(100 + seed)
    shape = tuple(int(s) for s in rng.integers(2, 6, 2))
    n = int(np.prod(shape))
    mask = torch.from_numpy(rng.integers(0, 2, shape).astype(bool))
    idx = torch.from_numpy(rng.choice(shape[1], size=int(rng.integers(1, shape[1] + 1)),
                                      replace=False))
    x = torch.randn(n + n, dtype=torch.float64)

    def masked(x):
        y = x[:n].reshape(shape).clone()
        y[mask] = 3 * x[n:n + int(mask.sum())]
        return y

    def columns(x):
        y = torch.cos(x[:n]).reshape(shape)
        return y.index_put((torch.arange(shape[0])[:, None], idx[None, :]),
                           x[n:n + shape[0] * idx.numel()].reshape(shape[0], idx.numel()))
    _check(masked, x, exact=True)
    _check(columns, x, exact=True)


# -- sort / topk -----------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(20))
def test_sort_and_topk_fuzz(seed):
    rng = _rng(200 + seed)
    ndim = int(rng.integers(1, 4))
    shape = tuple(int(s) for s in rng.integers(2, 7, ndim))
    dim = int(rng.integers(-ndim, ndim))
    descending = bool(rng.integers(2))
    k = int(rng.integers(1, shape[dim] + 1))
    x = torch.randn(int(np.prod(shape)), dtype=torch.float64)

    def sorted_(x):
        t = x.reshape(shape)
        return t.sort(dim, descending=descending).values * t

    def top(x):
        return torch.topk(x.reshape(shape) ** 3, k, dim, largest=descending).values

    _check(sorted_, x, exact=True)
    _check(top, x, exact=True)


# -- transposed convolutions -----------------------------------------------------------------------
def _weight(rng, shape, zeros):
    w = torch.from_numpy(rng.standard_normal(shape))
    if zeros:
        w[torch.from_numpy(rng.random(shape) < 0.4)] = 0.0
    return w


@pytest.mark.parametrize("seed", range(30))
def test_conv_transpose_fuzz(seed):
    rng = _rng(300 + seed)
    d = int(rng.integers(1, 3))
    groups = int(rng.integers(1, 3))
    c_in, c_out = groups * int(rng.integers(1, 3)), groups * int(rng.integers(1, 3))
    kernel = tuple(int(v) for v in rng.integers(1, 4, d))
    stride = tuple(int(v) for v in rng.integers(1, 4, d))
    dilation = tuple(int(v) for v in rng.integers(1, 3, d))
    padding = tuple(int(rng.integers(0, dl * (k - 1) + 1)) for k, dl in zip(kernel, dilation))
    extra = tuple(int(rng.integers(0, max(s, dl))) for s, dl in zip(stride, dilation))
    sizes = tuple(int(v) for v in rng.integers(2, 6, d))
    batched = bool(rng.integers(2))
    shape = ((2,) if batched else ()) + (c_in,) + sizes
    zeros = bool(rng.integers(2))
    w = _weight(rng, (c_in, c_out // groups) + kernel, zeros)
    trainable = bool(rng.integers(3) == 0)
    if trainable:  # a weight the graph differentiates: its zero taps may not be dropped
        w.requires_grad_()
    op = F.conv_transpose1d if d == 1 else F.conv_transpose2d
    x = torch.randn(int(np.prod(shape)), dtype=torch.float64)

    def f(x):
        return torch.tanh(op(x.reshape(shape), w, stride=stride, padding=padding,
                             output_padding=extra, groups=groups, dilation=dilation))
    try:
        f(x)
    except RuntimeError:
        pytest.skip("an output size PyTorch refuses")
    _check(f, x, exact=not trainable)


# -- a constant kernel's zero taps (convolutions, both the shift and the table path) -----------
@pytest.mark.parametrize("seed", range(30))
def test_conv_zero_taps_fuzz(seed):
    rng = _rng(400 + seed)
    d = int(rng.integers(1, 3))
    groups = int(rng.integers(1, 3))
    c_in = groups * int(rng.integers(1, 3))
    c_out = c_in if rng.integers(2) else groups * int(rng.integers(1, 3))
    if rng.integers(3) == 0:
        groups = c_out = c_in  # depthwise
    kernel = tuple(int(v) for v in rng.integers(1, 4, d))
    stride = tuple(int(v) for v in (rng.integers(1, 3, d) if rng.integers(2) else [1] * d))
    dilation = tuple(int(v) for v in rng.integers(1, 3, d))
    padding = tuple(int(rng.integers(0, dl * (k - 1) + 1)) for k, dl in zip(kernel, dilation))
    sizes = tuple(int(v) for v in rng.integers(5, 9, d))
    shape = (2, c_in) + sizes
    w = _weight(rng, (c_out, c_in // groups) + kernel, zeros=True)
    op = F.conv1d if d == 1 else F.conv2d
    x = torch.randn(int(np.prod(shape)), dtype=torch.float64)

    def f(x):
        return op(x.reshape(shape), w, stride=stride, padding=padding, groups=groups,
                  dilation=dilation) + 0.5

    _check(f, x, exact=True)


def test_a_laplacian_kernel_is_a_five_point_stencil_and_a_trained_one_nine():
    laplace = torch.tensor([[[[0., 1., 0.], [1., -4., 1.], [0., 1., 0.]]]], dtype=torch.float64)
    x = torch.randn(1, 1, 12, 10, dtype=torch.float64, requires_grad=True)
    found = proved_pattern(F.conv2d(x, laplace, padding=1), x, BUDGET)
    assert found.nnz == 5 * 120 - 2 * 12 - 2 * 10  # each pixel and its in-bounds neighbours
    trained = laplace.clone().requires_grad_()  # its zeros may move: every tap is claimed
    found = proved_pattern(F.conv2d(x, trained, padding=1), x, BUDGET)
    assert found.nnz == 9 * 120 - 3 * (2 * 12 + 2 * 10) + 4


# -- avg_pool with ceil_mode ------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(30))
def test_avg_pool_ceil_mode_fuzz(seed):
    rng = _rng(500 + seed)
    d = int(rng.integers(1, 4))
    kernel = tuple(int(v) for v in rng.integers(1, 5, d))
    stride = tuple(int(v) for v in rng.integers(1, 4, d))
    padding = tuple(int(rng.integers(0, k // 2 + 1)) for k in kernel)
    sizes = tuple(int(v) for v in rng.integers(4, 9, d))
    shape = (2, 2) + sizes
    include = bool(rng.integers(2))
    op = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[d - 1]
    x = torch.randn(int(np.prod(shape)), dtype=torch.float64)

    def f(x):
        return op(x.reshape(shape), kernel, stride=stride, padding=padding, ceil_mode=True,
                  count_include_pad=include) * 3

    _check(f, x, exact=True)


# -- points over the budget: the sparse Jacobian coloured whole, or named by the refusal ---------
LAPLACE = torch.tensor([[[[0., 1., 0.], [1., -4., 1.], [0., 1., 0.]]]], dtype=torch.float64)
POINTED = {  # each proves points along axis 0 (one block per row / image) with sparse blocks
    "batched stencil": ((3, 1, 20, 20), lambda t: F.conv2d(t, LAPLACE, padding=1) + t ** 3),
    "rolled rows": ((4, 300), lambda t: t.roll(1, 1) * t + torch.sin(t.roll(-2, 1))),
    "sorted rows": ((4, 300), lambda t: t.sort(1).values * t),
}


@pytest.mark.parametrize("name", list(POINTED))
def test_points_over_the_budget_are_coloured_whole(name):
    import vjp_magic
    shape, f = POINTED[name]
    x = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    leaf = x.clone().requires_grad_()
    y = f(leaf)
    n = x.numel()
    budget = n * (n // shape[0]) * 8 // 2  # the points' dense blocks: twice the budget
    r = vjp_magic.differentiate(y, leaf, names=["x"], output_name="y", memory_budget=budget,
                                seed=0)
    sparse = r.inputs["x"].sparse
    assert sparse is not None and sparse.count < n // shape[0]
    expected = torch.func.jacrev(f)(x).reshape(y.numel(), n)
    torch.testing.assert_close(r.jacobian("x", layout=torch.sparse_csr).to_dense(), expected)


def test_a_refusal_of_points_names_the_sparse_jacobians_nonzeros_and_bytes():
    import vjp_magic
    x = torch.rand(2, 1, 64, 64, requires_grad=True)
    y = F.conv2d(x, LAPLACE.float(), padding=1) + x ** 3
    nnz = 2 * (5 * 64 * 64 - 4 * 64)
    need = nnz * (4 + 8) + (y.numel() + 1) * 8  # float32 values, int64 columns and row pointers
    with pytest.raises(vjp_magic.VJPUsageError) as caught:
        vjp_magic.differentiate(y, x, output_name="y", memory_budget=need // 2)
    text = str(caught.value)
    assert f"{nnz:,} nonzeros" in text, text
    assert f"{round(need / 1e3)} kB" in text, text
