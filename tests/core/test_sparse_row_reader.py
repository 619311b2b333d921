"""The compressed Jacobian's row reader (:class:`vjp_magic.core.sparse_choice._RowReader` through
SparseChoice.row_reader): its ``nonzero`` gives exactly what the dense row's ``nonzero()``
gives (torch's own), for inputs of any rank, explicit zeros and NaN included."""
import pytest
import torch

from vjp_magic.core.sparse_choice import _RowReader
from vjp_magic.core.sparse_layout import csr_matrix


@pytest.mark.parametrize("shape", [(12,), (3, 4), (2, 3, 2), ()])
def test_nonzero_matches_the_dense_row(shape):
    generator = torch.Generator().manual_seed(7)
    n = 1
    for size in shape:
        n *= size
    dense = torch.randn(6, n, generator=generator) * (torch.rand(6, n, generator=generator) < .5)
    dense[0, 0] = float("nan")
    keep = torch.ones_like(dense, dtype=torch.bool)
    keep[1] = False  # an empty row
    crow = torch.cat([torch.zeros(1, dtype=torch.int64), keep.sum(1).cumsum(0)])
    col = torch.arange(n).expand(6, n)[keep]
    matrix = csr_matrix(crow, col, dense[keep], (6, n))  # explicit zeros stored
    reader = _RowReader(matrix, shape)
    for flat in range(6):
        expected = dense[flat].reshape(shape).nonzero() if flat != 1 else \
            torch.zeros(0, len(shape), dtype=torch.int64)
        assert torch.equal(reader.nonzero(flat), expected)
        assert torch.equal(reader(flat).nonzero(), expected)
