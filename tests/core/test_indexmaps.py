"""Patterns proved from the autograd graph: on random compositions, when proved, exactly the
nonzeros of torch.func.jacrev's Jacobian at a random x (float64: an exact zero there is
structural); nothing proved through a custom autograd.Function or an op without a rule."""
import pytest
import torch
import torch.nn.functional as F
from compositions import composition
from custom_functions import Twice

from stencils import dense
from vjp_magic.core.indexmaps import proved_pattern
from vjp_magic.core.pairing import Evidence

BUDGET = 2**28


def structural(f, x: torch.Tensor) -> torch.Tensor:
    """The nonzeros of jacrev's Jacobian at a random point, in float64."""
    jacobian = torch.func.jacrev(f)(x.detach().double())
    return jacobian.reshape(-1, x.numel()) != 0


def assert_csr_sorted(pattern):
    assert pattern.crow[0] == 0 and pattern.crow[-1] == pattern.nnz
    for r in range(pattern.shape[0]):
        cols = pattern.col[pattern.crow[r]:pattern.crow[r + 1]]
        assert bool((cols.diff() > 0).all())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_random_compositions_prove_the_structural_pattern(dtype):
    proved = 0
    for seed in range(200):
        f, n = composition(seed, dtype)
        x = torch.randn(n, dtype=dtype, generator=torch.Generator().manual_seed(seed))
        x.requires_grad_(True)
        y = f(x)
        pattern = proved_pattern(y, x, BUDGET)
        if pattern is None:
            continue
        proved += 1
        assert pattern.shape == (y.numel(), n) and pattern.probes == 0
        assert pattern.evidence == Evidence.PROVED
        assert torch.equal(dense(pattern), structural(f, x)), f"seed {seed}"
        assert_csr_sorted(pattern)
        assert x.grad is None
    assert proved >= 150  # all but the dense ones (a row reading over 1/8 of x)


def test_tridiagonal_stencil():
    x = torch.randn(50, requires_grad=True)
    y = F.pad(x, (1, 1))[2:] + F.pad(x, (1, 1))[:-2] - 2 * x + x ** 3
    pattern = proved_pattern(y, x, BUDGET)
    assert torch.equal(dense(pattern), torch.ones(50, 50).triu(-1).tril(1).bool())
    assert pattern.nnz == 3 * 50 - 2


def test_periodic_stencil_wraps_around():
    x = torch.randn(20, dtype=torch.float64, requires_grad=True)
    pattern = proved_pattern(x.roll(1) - 2 * x + x.roll(-1), x, BUDGET)
    assert pattern.crow.diff().tolist() == [3] * 20
    assert pattern.col[:3].tolist() == [0, 1, 19]


def test_five_point_laplacian_in_2d():
    def laplacian(x):
        u = x.reshape(12, 15)
        p = F.pad(u, (1, 1, 1, 1))
        return (p[:-2, 1:-1] + p[2:, 1:-1] + p[1:-1, :-2] + p[1:-1, 2:] - 4 * u
                + u ** 3).reshape(-1)

    x = torch.randn(12 * 15, dtype=torch.float64, requires_grad=True)
    pattern = proved_pattern(laplacian(x), x, BUDGET)
    per_row = pattern.crow.diff().reshape(12, 15)
    assert bool((per_row[1:-1, 1:-1] == 5).all())
    assert per_row[0, 0] == 3 and per_row[0, 5] == 4
    assert torch.equal(dense(pattern), structural(laplacian, x))


def test_conv2d_stride_dilation_groups_and_a_linear_layer():
    weight = torch.randn(4, 2, 3, 2, dtype=torch.float64)
    matrix = torch.randn(5, 6, dtype=torch.float64)

    def f(x):
        image = x.reshape(2, 4, 9, 8)
        out = F.conv2d(image, weight, stride=(2, 1), dilation=(1, 2), padding=(1, 0), groups=2)
        return F.linear(out.reshape(-1, 6), matrix, torch.ones(5, dtype=x.dtype)).reshape(-1)

    x = torch.randn(2 * 4 * 9 * 8, dtype=torch.float64, requires_grad=True)
    pattern = proved_pattern(f(x), x, BUDGET)
    assert pattern is not None
    assert torch.equal(dense(pattern), structural(f, x))


def test_unbatched_conv1d_and_matmul_family():
    kernel = torch.randn(3, 2, 3, dtype=torch.float64)
    vector = torch.randn(7, dtype=torch.float64)
    batch = torch.randn(10, 7, 3, dtype=torch.float64)

    def f(x):  # each row reads at most one signal: 18 of 180 entries
        single = F.conv1d(x[:18].reshape(2, 9), kernel)  # unbatched: (3, 7)
        signals = F.conv1d(x.reshape(10, 2, 9), kernel)  # (10, 3, 7)
        return torch.cat([(signals @ vector).reshape(-1), (signals @ batch).reshape(-1),
                          torch.addmv(torch.ones(3, dtype=x.dtype), single, vector),
                          (single[0] @ vector)[None], (vector @ single.t()) * 2])

    x = torch.randn(180, dtype=torch.float64, requires_grad=True)
    pattern = proved_pattern(f(x), x, BUDGET)
    assert pattern is not None
    assert torch.equal(dense(pattern), structural(f, x))


def test_split_unbind_take_and_diagonal():
    def f(x):
        m = x.reshape(6, 6)
        a, b = m.split([2, 4], dim=1)
        rows = m.unbind(0)
        return torch.cat([a.reshape(-1) * 2, b.sum(1), rows[3] ** 2, x.take(
            torch.tensor([[0, 35], [7, 7]])).reshape(-1), m.diagonal(1), m.triu(1).reshape(-1)])

    x = torch.randn(36, dtype=torch.float64, requires_grad=True)
    pattern = proved_pattern(f(x), x, BUDGET)
    assert pattern is not None
    assert torch.equal(dense(pattern), structural(f, x))


def test_an_intermediate_input_and_a_constant_output():
    x0 = torch.randn(10, requires_grad=True)
    x = x0 * 2  # not a leaf: below it everything is constant
    y = x.roll(1) + x0.sum()  # x0 itself is a constant here
    pattern = proved_pattern(y, x, BUDGET)
    assert torch.equal(dense(pattern), torch.eye(10).roll(1, 0).bool())
    unrelated = torch.randn(3, requires_grad=True) * 2
    assert proved_pattern(unrelated, x, BUDGET).nnz == 0
    assert proved_pattern(x, x, BUDGET).nnz == 10


def test_a_custom_function_or_an_op_without_a_rule_proves_nothing():
    x = torch.randn(10, requires_grad=True)
    assert proved_pattern(Twice.apply(x).roll(1), x, BUDGET) is None
    assert proved_pattern(torch.cummax(x, 0).values, x, BUDGET) is None  # (sort: s37F9)
    assert proved_pattern(torch.fft.fft(x).real, x, BUDGET) is None
    # a custom function on a branch that does not reach x is no obstacle
    other = torch.randn(10, requires_grad=True)
    assert proved_pattern(x.roll(1) * Twice.apply(other), x, BUDGET) is not None


def test_dense_rows_and_a_small_budget_are_refused():
    x = torch.randn(64, requires_grad=True)
    assert proved_pattern(x * x.sum(), x, BUDGET) is None
    assert proved_pattern(x.cumsum(0), x, BUDGET) is None  # the last row reads all of x
    y = F.pad(x, (1, 1))[2:] + x
    assert proved_pattern(y, x, 2**10) is None
    assert proved_pattern(y, x, BUDGET) is not None


def test_float32_matches_float64():
    for dtype in (torch.float32, torch.float64):
        x = torch.randn(30, dtype=dtype, requires_grad=True)
        y = F.conv1d(x[None, None], torch.ones(1, 1, 5, dtype=dtype), padding=2)[0, 0] * x
        pattern = proved_pattern(y, x, BUDGET)
        assert pattern.nnz == 5 * 30 - 6


def test_a_gradients_own_graph_rosenbrock_hessian_is_tridiagonal():
    def rosenbrock(x):
        return (100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2).sum()

    def pointed(x):
        return x.select(0, 1) ** 3 + x[-1] ** 3 + (x ** 4).sum() + (x[2:] * x[:-2]).sum()

    for f in (rosenbrock, pointed):
        x = torch.randn(40, dtype=torch.float64, requires_grad=True)
        (gradient,) = torch.autograd.grad(f(x), x, create_graph=True)
        pattern = proved_pattern(gradient, x, BUDGET)
        assert torch.equal(dense(pattern), torch.func.hessian(f)(x.detach()) != 0)


def test_pooling_and_max_along_a_dim_read_what_the_graph_saved():
    pools = [
        lambda x: F.max_pool2d(x.reshape(2, 3, 8, 8), 3, stride=2, padding=1),
        lambda x: F.max_pool1d(x.reshape(6, 64), 4),
        lambda x: F.avg_pool2d(x.reshape(2, 3, 8, 8), 3, stride=2, padding=1),
        lambda x: F.avg_pool2d(x.reshape(6, 8, 8), (2, 3), stride=(1, 2)),
        lambda x: F.avg_pool3d(x.reshape(1, 3, 2, 8, 8), 2),
        lambda x: x.reshape(6, 8, 8).max(2).values,
        lambda x: x.reshape(6, 8, 8).min(0, keepdim=True).values,
        lambda x: x.reshape(6, 64).median(1).values,
        lambda x: x.reshape(12, 4, 8).norm(dim=(1, 2)) + x.reshape(12, 32).std(1),
        lambda x: torch.linalg.vector_norm(x.reshape(48, 8), dim=0, keepdim=True) * 2,
    ]
    for pool in pools:
        def f(x, pool=pool):
            return pool(x).reshape(-1)

        x = torch.randn(384, dtype=torch.float64, requires_grad=True)
        pattern = proved_pattern(f(x), x, BUDGET)
        assert torch.equal(dense(pattern), structural(f, x))
