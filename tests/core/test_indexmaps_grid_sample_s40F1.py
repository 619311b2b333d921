"""The index-map rule of grid_sample (2-D: bilinear, nearest, bicubic; 3-D: trilinear,
nearest; padding_mode zeros, border, reflection; align_corners both). Each output entry reads
the entries around its grid point, which the grid's values decide: the proved pattern is
conditional on grid_sample, must hold every nonzero of torch.func.jacrev (a superset is
sound, a missed entry never), read at most the kernel's entries a row at generic points, and
the sparse Jacobian must equal jacrev. A grid in the graph (requires grad, or computed from
x) proves nothing."""
import pytest
import torch
import torch.nn.functional as F

import vjp_magic
from vjp_magic.core.indexmaps import proved_pattern

KERNEL = {"bilinear": 2, "nearest": 1, "bicubic": 4}
PADDINGS = ["zeros", "border", "reflection"]
CASES = [(d, mode, padding, corners) for d, modes in ((2, KERNEL), (3, ("bilinear", "nearest")))
         for mode in modes for padding in PADDINGS for corners in (False, True)]


def _grid(d, dtype, ties: bool, seed=0):
    """Points over and past the input (-1.3..1.3); ``ties``: on a lattice of quarters, where
    coordinates land on entries and halfway between them, each moved by 0 to 2 units in the
    last place either way (every rounding question)."""
    generator = torch.Generator().manual_seed(seed)
    shape = (2, 5, 4, d) if d == 2 else (2, 3, 2, 4, d)
    if ties:
        grid = (torch.randint(-6, 7, shape, generator=generator) / 4).to(dtype)
        for _ in range(2):
            step = torch.randint(-1, 2, shape, generator=generator).to(dtype)
            grid = torch.nextafter(grid, grid + step)
        return grid
    return (torch.rand(shape, generator=generator, dtype=torch.float64) * 2.6 - 1.3).to(dtype)


def _x(d, dtype, seed=1):
    shape = (2, 3, 5, 6) if d == 2 else (2, 2, 3, 4, 5)
    return torch.randn(shape, dtype=dtype, generator=torch.Generator().manual_seed(seed))


def _dense(found, shape):
    proved = torch.zeros(shape, dtype=torch.bool)
    rows = torch.repeat_interleave(torch.arange(shape[0]), found.crow.diff())
    proved[rows, found.col] = True
    return proved


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("d, mode, padding, corners", CASES)
def test_grid_sample_is_proved_for_its_grid_and_holds_every_nonzero(d, mode, padding, corners,
                                                                    dtype, ties):
    grid = _grid(d, dtype, ties)
    f = lambda t: F.grid_sample(t * t, grid, mode=mode, padding_mode=padding,  # noqa: E731
                                align_corners=corners)
    x = _x(d, dtype).requires_grad_()
    y = f(x)
    found = proved_pattern(y, x, 2**30, dense=True)
    assert found is not None and found.conditional_on == ("grid_sample",)
    proved = _dense(found, (y.numel(), x.numel()))
    actual = torch.zeros_like(proved)
    for seed in (1, 2):
        actual |= torch.func.jacrev(f)(_x(d, dtype, seed)).reshape(y.numel(), x.numel()) != 0
    assert not (actual & ~proved).any(), "the proved pattern misses a nonzero"
    kernel = KERNEL[mode] + ties  # a tie may read either neighbour: one more a side
    assert int(proved.sum(1).max()) <= kernel ** d


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("d, mode, padding, corners",
                         [c for c in CASES if c[2] != "border" or c[3]])
def test_the_sparse_jacobian_of_grid_sample_is_jacrevs(d, mode, padding, corners, dtype):
    grid = _grid(d, dtype, ties=False, seed=3)
    f = lambda t: F.grid_sample(t.sin(), grid, mode=mode, padding_mode=padding,  # noqa: E731
                                align_corners=corners)
    x = _x(d, dtype).requires_grad_()
    csr = vjp_magic.sparse_jacobian(f(x), x, seed=0)
    assert csr.layout == torch.sparse_csr
    expected = torch.func.jacrev(f)(x.detach()).reshape(-1, x.numel())
    torch.testing.assert_close(csr.to_dense(), expected)


def test_differentiate_gives_the_sparse_layout_of_a_bilinear_warp():
    grid = _grid(2, torch.float64, ties=False, seed=4)
    f = lambda t: F.grid_sample(t ** 3, grid, align_corners=False)  # noqa: E731
    x = _x(2, torch.float64).requires_grad_()
    r = vjp_magic.differentiate(f(x), x, names=["x"], output_name="y", seed=0)
    csr = r.jacobian("x", layout=torch.sparse_csr)
    torch.testing.assert_close(csr.to_dense(), torch.func.jacrev(f)(x.detach()).reshape(
        -1, x.numel()))


@pytest.mark.parametrize("case", ["grid requires grad", "grid from x", "grid holds NaN"])
def test_a_grid_in_the_graph_or_not_finite_proves_nothing(case):
    x = _x(2, torch.float64).requires_grad_()
    grid = _grid(2, torch.float64, ties=False)
    if case == "grid requires grad":
        grid.requires_grad_()
    elif case == "grid from x":
        grid = grid + 0.01 * x[:, :1, :5, :4].reshape(2, 5, 4, 1).tanh()
    else:
        grid[0, 0, 0, 0] = float("nan")
    assert proved_pattern(F.grid_sample(x * x, grid, align_corners=False), x, 2**30) is None
