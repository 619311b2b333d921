"""A pattern that is no stencil shows its first rows at the columns they read, looked up in
the CSR (core.sparse_layout.csr_block): the values against torch.autograd.functional.jacobian."""
import torch
from torch.autograd.functional import jacobian
from test_sparse_display import made

from vjp_magic.render import sparse as display

INDEX = torch.tensor([3, 0, 7, 7, 1, 5, 2, 9, 4, 6, 8, 0, 2, 2])


def scattered(x):
    return x[INDEX] ** 2 * x[INDEX.flip(0)]


def test_first_rows_are_the_jacobians_at_the_columns_they_read():
    x = torch.randn(10, dtype=torch.float64)
    r, _, _ = made(scattered, x)
    block, caption = display.values_block(r, "x")
    full = jacobian(scattered, x)
    shown = min(full.shape[0], display.FIRST_ROWS)
    cols = torch.unique(full[:shown].nonzero()[:, 1])
    assert (block.nrows, block.ncols) == (shown, len(cols))
    got = block.get_block(torch.arange(shown), torch.arange(len(cols)))
    torch.testing.assert_close(got, full[:shown][:, cols])
    picked = torch.tensor([4, 0]), torch.tensor([len(cols) - 1, 0, 0])  # any order, repeats
    torch.testing.assert_close(block.get_block(*picked), full[picked[0]][:, cols[picked[1]]])
