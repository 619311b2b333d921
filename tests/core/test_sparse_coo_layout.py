"""coo_derivatives on both of its ways (torch's CSR→COO conversion, and numpy's repeat of
the rows above NUMPY_COO_NNZ nonzeros) gives the dense Jacobian's own entries: expected
values from torch's to_dense of the CSR matrix, reshaped to output.shape + input.shape."""
import pytest
import torch

from vjp_magic.core import sparse_layout
from vjp_magic.core.sparse_layout import coo_derivatives, dense_to_csr


@pytest.mark.parametrize("threshold", [0, 10**9])  # numpy's way always, torch's always
@pytest.mark.parametrize("shapes", [((6,), (8,)), ((2, 3), (4, 2)), ((6,), (2, 2, 2))])
def test_coo_derivatives_either_way(monkeypatch, threshold, shapes):
    monkeypatch.setattr(sparse_layout, "NUMPY_COO_NNZ", threshold)
    out_shape, in_shape = shapes
    generator = torch.Generator().manual_seed(3)
    dense = torch.randn(6, 8, generator=generator) * (torch.rand(6, 8, generator=generator) < .4)
    dense[2] = 0  # an empty row
    coo = coo_derivatives(dense_to_csr(dense), out_shape, in_shape)
    assert coo.is_coalesced() and coo.shape == out_shape + in_shape
    assert torch.equal(coo.to_dense(), dense.reshape(out_shape + in_shape))
    assert torch.equal(coo.indices(), coo.coalesce().indices())
