"""Compressed passes: equal to torch.func.jacrev on random local maps, analytic on a large
stencil, and a coupling the probes cannot see falls back to the exact path."""
import random

import pytest
import torch
import torch.nn.functional as F

import vjp_magic
from vjp_magic.core.compressed import compressed_jacobian


def _ops(rng: random.Random, n: int, dtype):
    kernel = torch.randn(1, 1, 3, dtype=dtype, generator=torch.Generator().manual_seed(
        rng.randrange(2**31)))
    index = torch.tensor([rng.randrange(n) for _ in range(n)])
    shift = rng.choice([-2, -1, 1, 3])
    return [
        lambda x: x.roll(shift),
        lambda x: F.pad(x, (1, 0))[:-1] + x ** 3 + F.pad(x, (0, 1))[1:],
        lambda x: F.conv1d(x[None, None], kernel, padding=1)[0, 0],
        lambda x: x.index_select(0, index),
        lambda x: x.gather(0, index) * x,
        lambda x: torch.sin(x) * 2 + x.roll(1) * x,
        lambda x: torch.tanh(x),
    ]


def _composition(seed: int, dtype):
    rng = random.Random(seed)
    n = rng.randrange(4, 64)
    chosen = rng.choices(_ops(rng, n, dtype), k=rng.randrange(1, 4))

    def f(x):
        for op in chosen:
            x = op(x)
        return x

    return f, n


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_random_compositions_equal_jacrev(dtype):
    sparse_paths = 0
    for seed in range(150):
        f, n = _composition(seed, dtype)
        x = torch.randn(n, dtype=dtype, generator=torch.Generator().manual_seed(seed))
        x.requires_grad_(True)
        y = f(x)
        expected = torch.func.jacrev(f)(x.detach()).reshape(y.numel(), n)
        direct = compressed_jacobian(y, x, 2**28, seed)
        sparse_paths += direct is not None
        got = vjp_magic.sparse_jacobian(y, x, seed=seed)
        assert got.layout == torch.sparse_csr and got.shape == (y.numel(), n)
        torch.testing.assert_close(got.to_dense(), expected, msg=f"seed {seed}")
    assert sparse_paths > 100  # most of these maps are sparse enough to colour


def test_tridiagonal_cube_stencil_at_100_000_from_mathematics():
    # y_i = x_{i-1} + x_i³ + x_{i+1}: dy_i/dx_i = 3 x_i², dy_i/dx_{i±1} = 1
    n = 100_000
    x = torch.linspace(-2, 2, n, dtype=torch.float64, requires_grad=True)
    y = F.pad(x, (1, 0))[:-1] + x ** 3 + F.pad(x, (0, 1))[1:]
    sparse = compressed_jacobian(y, x, 2**30, seed=3)  # dense: 80 GB
    assert sparse is not None
    jacobian = sparse.matrix
    assert jacobian._nnz() == 3 * n - 2
    crow, col, values = jacobian.crow_indices(), jacobian.col_indices(), jacobian.values()
    rows = torch.repeat_interleave(torch.arange(n), crow.diff())
    assert torch.equal((col - rows).abs().max(), torch.tensor(1))
    diagonal = col == rows
    torch.testing.assert_close(values[diagonal], 3 * x.detach() ** 2)
    assert bool((values[~diagonal] == 1).all())


class _HiddenCoupling(torch.autograd.Function):
    """Identity forward; its backward adds the neighbour's gradient only when every entry of
    the incoming gradient is non-zero: the set probes (zeros off their set) see a diagonal."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        if bool((grad != 0).all()):
            return grad + grad.roll(1)
        return grad


def test_a_coupling_the_probes_cannot_see_fails_the_check_and_falls_back():
    n = 40
    x = torch.randn(n, dtype=torch.float64, requires_grad=True)
    y = _HiddenCoupling.apply(x)
    assert compressed_jacobian(y, x, 2**28, seed=5) is None
    got = vjp_magic.sparse_jacobian(y, x, seed=5).to_dense()
    expected = torch.stack([torch.autograd.grad(y, x, torch.eye(n, dtype=x.dtype)[i] + 0,
                                                retain_graph=True)[0] for i in range(n)])
    torch.testing.assert_close(got, expected)  # the exact path, one backward per row
    assert x.grad is None


def test_refusal_names_the_dense_size():
    x = torch.randn(2000, requires_grad=True)
    with pytest.raises(vjp_magic.VJPUsageError, match="Jacobian would need"):
        vjp_magic.sparse_jacobian(x.sum() * x, x, memory_budget=10**6)
