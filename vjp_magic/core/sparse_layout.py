"""Sparse layouts of a Jacobian, built without densifying: the COO derivatives of a sparse
result (``output.shape + input.shape``), the 2-D CSR of a point structure's block-diagonal
nonzeros, and entries J[rows, cols] read off a CSR matrix.

Flattening is row-major on both sides, as the full-Jacobian display labels it: row i is the
flat index of an output entry, column j that of an input entry.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from .pairing import Pairing


def _quiet(make):
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore")
        return make()


def fresh(shape, dtype: torch.dtype, device=None) -> torch.Tensor:
    """An uninitialised tensor; on the CPU (for dtypes numpy has) its memory from numpy:
    a fresh block of megabytes is faulted in about twice as fast as torch's own (measured
    here, one thread: 3·10⁶ float32 filled, 0.8 against 1.4 ms)."""
    device = torch.device("cpu") if device is None else torch.device(device)
    kind = _NUMPY.get(dtype)
    if device.type != "cpu" or kind is None:
        return torch.empty(shape, dtype=dtype, device=device)
    return torch.from_numpy(np.empty(shape, dtype=kind))


_NUMPY = {torch.float16: np.float16, torch.float32: np.float32, torch.float64: np.float64,
          torch.int32: np.int32, torch.int64: np.int64}


def csr_matrix(crow, col, values, shape) -> torch.Tensor:
    """A 2-D sparse CSR tensor from its parts (invariants not re-checked: the callers build
    sorted rows)."""
    return _quiet(lambda: torch.sparse_csr_tensor(crow, col, values, size=tuple(shape),
                                                  check_invariants=False))


def dense_to_csr(dense: torch.Tensor) -> torch.Tensor:
    """A 2-D dense tensor in the CSR layout."""
    return _quiet(dense.to_sparse_csr)


def csr_rows(crow: torch.Tensor) -> torch.Tensor:
    """The row of each nonzero of a CSR matrix (from its ``crow``), ascending, int64 (on the
    CPU by numpy's repeat: about twice as fast as torch's repeat_interleave)."""
    m, nnz = crow.numel() - 1, int(crow[-1]) if crow.numel() else 0
    if crow.device.type == "cpu" and m > 0:
        return torch.from_numpy(np.repeat(np.arange(m, dtype=np.int64),
                                          np.diff(crow.numpy()).astype(np.int64, copy=False)))
    return torch.repeat_interleave(torch.arange(max(m, 0), device=crow.device), crow.diff(),
                                   output_size=nnz)


def identity_pattern(crow: torch.Tensor, col: torch.Tensor) -> bool:
    """Whether the CSR (``crow``, ``col``) holds entry (r, r) alone in every row r (an
    elementwise map's pattern): two comparisons, no row expanded."""
    m = crow.numel() - 1
    if m < 0 or col.numel() != m:
        return False
    steps = torch.arange(m + 1, device=crow.device)
    return torch.equal(crow.long(), steps) and torch.equal(col.long(), steps[:m])


def coo_derivatives(matrix: torch.Tensor, out_shape, in_shape,
                    point_out_axes=()) -> torch.Tensor:
    """The 2-D CSR ``matrix`` as a coalesced sparse COO tensor of shape
    ``out_shape + in_shape`` (its rows and columns unravelled; the 2-D indices from torch's
    own conversion, up to :data:`NUMPY_COO_NNZ` nonzeros on the CPU, else numpy's repeat
    of the rows stacked with the columns: 1.3x slower than torch's at 10⁵ nonzeros, 1.5x
    faster at 3·10⁶, one thread). With ``point_out_axes`` (a point structure whose every
    nonzero lies on its points), those output axes are left out: the component shape +
    ``in_shape``, as ``r.derivatives`` holds a point structure's (each output point index is
    its input's)."""
    if point_out_axes:
        return _at_points(coo_derivatives(matrix, out_shape, in_shape), len(out_shape),
                          point_out_axes)
    out_shape, in_shape = tuple(out_shape), tuple(in_shape)
    crow = matrix.crow_indices()
    if crow.device.type == "cpu" and matrix.col_indices().numel() >= NUMPY_COO_NNZ:
        indices = torch.from_numpy(np.stack([csr_rows(crow).numpy(),
                                             matrix.col_indices().long().numpy()]))
        flat = _quiet(lambda: torch.sparse_coo_tensor(indices, matrix.values(), matrix.shape,
                                                      is_coalesced=True))
    else:
        flat = _quiet(matrix.to_sparse_coo)
    indices = flat.indices()
    if len(out_shape) != 1 or len(in_shape) != 1:  # unravel (or drop) each side's index
        parts = [*unravelled(indices[0], out_shape), *unravelled(indices[1], in_shape)]
        indices = torch.stack(parts) if parts else indices.new_zeros(0, indices.shape[1])
    # rows ascending, columns ascending within a row: already in coalesced (row-major) order
    return _quiet(lambda: torch.sparse_coo_tensor(indices, flat.values(),
                                                  out_shape + in_shape, is_coalesced=True))


NUMPY_COO_NNZ = 2_000_000


def _at_points(full: torch.Tensor, out_ndim: int, point_out_axes) -> torch.Tensor:
    """The COO ``full`` (out_shape + in_shape) without its output point axes, re-sorted."""
    keep = [d for d in range(full.dim()) if d >= out_ndim or d not in set(point_out_axes)]
    shape = tuple(full.shape[d] for d in keep)
    return _quiet(lambda: torch.sparse_coo_tensor(full.indices()[keep], full.values(), shape)
                  .coalesce())


def unravelled(flat: torch.Tensor, shape) -> list[torch.Tensor]:
    """Each axis's index of the flat (row-major) indices ``flat`` into ``shape``: one
    division per axis past the first (``torch.unravel_index`` imports SymPy on first use)."""
    shape = tuple(shape)
    if len(shape) <= 1:  # nothing to unravel (a division per entry saved)
        return [flat] if shape else []
    index, out = flat, []
    for size in reversed(shape[1:]):
        out.append(index.remainder(size))
        index = torch.div(index, size, rounding_mode="floor")
    return [index] + out[::-1]


def block_csr(derivatives: torch.Tensor, out_shape, pairing: Pairing) -> torch.Tensor:
    """The nonzeros of the full Jacobian of a point structure (``derivatives``: component
    shape + input shape; zero between different points) as a 2-D CSR tensor. Each entry of
    the derivatives sits at one (row, column): the column its input index, the row its
    component index along the component axes and the input index along the point axes."""
    out_shape = tuple(out_shape)
    points = dict(pairing)  # output axis → input axis
    component = [a for a in range(len(out_shape)) if a not in points]
    count = math.prod(out_shape[a] for a in component)
    in_shape = tuple(derivatives.shape[len(component):])
    n, m = math.prod(in_shape), math.prod(out_shape)
    device = derivatives.device
    strides = [math.prod(out_shape[a + 1:]) for a in range(len(out_shape))]
    comp_row = torch.zeros(count, dtype=torch.int64, device=device)
    for a, index in zip(component, unravelled(torch.arange(count, device=device),
                                            tuple(out_shape[a] for a in component))):
        comp_row += index * strides[a]
    in_row = torch.zeros(n, dtype=torch.int64, device=device)
    in_index = unravelled(torch.arange(n, device=device), in_shape)
    for a, b in points.items():
        in_row += in_index[b] * strides[a]
    values = derivatives.reshape(count, n)
    keep = values != 0
    rows = (comp_row[:, None] + in_row[None, :])[keep]
    cols = torch.arange(n, device=device).expand(count, n)[keep]
    values = values[keep]
    order = torch.argsort(rows * max(n, 1) + cols)
    rows, cols, values = rows[order], cols[order], values[order]
    crow = torch.zeros(m + 1, dtype=torch.int64, device=device)
    crow[1:] = torch.cumsum(torch.bincount(rows, minlength=m), 0)
    return _quiet(lambda: torch.sparse_csr_tensor(crow, cols, values, size=(m, n),
                                                  check_invariants=False))


def nonzero_positions(starts: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Indices into a CSR's ``col``/``values`` of the nonzeros of the rows starting at
    ``starts`` with ``lengths`` nonzeros each, row after row."""
    ends = torch.cumsum(lengths, 0)
    within = torch.arange(int(ends[-1]) if len(ends) else 0, device=starts.device) - \
        torch.repeat_interleave(ends - lengths, lengths)
    return torch.repeat_interleave(starts, lengths) + within


def csr_block(matrix: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Entries ``matrix[rows][:, cols]`` (dense, len(rows) × len(cols)) of a 2-D CSR matrix,
    reading only the requested rows' nonzeros."""
    crow, col, values = matrix.crow_indices(), matrix.col_indices(), matrix.values()
    rows, cols = rows.to(crow.device), cols.to(crow.device)
    lengths = crow[rows + 1] - crow[rows]
    local = torch.repeat_interleave(torch.arange(len(rows), device=crow.device), lengths)
    at = nonzero_positions(crow[rows], lengths)
    wanted, inverse = torch.unique(cols, return_inverse=True)
    place = torch.searchsorted(wanted, col[at]).clamp(max=max(len(wanted) - 1, 0))
    hit = wanted[place] == col[at] if len(wanted) else torch.zeros_like(at, dtype=torch.bool)
    block = values.new_zeros(len(rows), len(wanted))
    block[local[hit], place[hit]] = values[at[hit]]
    return block[:, inverse]
