"""Teaching features on a sparse Jacobian (``r.inputs[name].sparse``, issue 20).

The teaching code (grading, the backward notes) compares answers entry by entry with the
derivatives as a strided tensor. A sparse Jacobian is densified for it only where it is small
enough to show whole: at most :data:`DENSE_ENTRIES` entries and within the result's memory
budget; a larger one is worked on in its CSR form (:func:`column_sums`, :func:`csr_row`).
"""
from __future__ import annotations

import math
from dataclasses import replace

import torch

from ..core import memory

DENSE_ENTRIES = 1 << 22  # entries: a sparse Jacobian up to this size is graded densified
# entries: a point structure whose values came from the colours (a large batch of stencils)
# is graded on its dense blocks (components × input entries: the per-row answer's size) up to
# this size
POINTS_DENSE_ENTRIES = 1 << 24


def is_sparse(item) -> bool:
    return getattr(item, "sparse", None) is not None


def fits_dense(result, name: str) -> bool:
    """The sparse Jacobian of input ``name`` may be densified (entries and memory budget):
    with points, its dense blocks (as ``r.derivatives`` holds a point structure's)."""
    item = result.inputs[name]
    if item.has_points:
        size, most = math.prod(result.component_shape(name)) * item.numel(), \
            POINTS_DENSE_ENTRIES
    else:
        size, most = result.output.numel() * item.numel(), DENSE_ENTRIES
    budget = result.memory_budget or memory.resolve_budget(None, result.output.device)
    return size <= most and 8 * size <= budget


def densified(result, names=None):
    """``result`` with each sparse input (of ``names``, default all) that fits as an
    ordinary dense one: ``derivatives`` strided (shape output.shape + input.shape; with
    points, the component shape + input.shape, the pairing kept), ``sparse`` None. Inputs
    too large stay sparse (:func:`too_large` names them)."""
    inputs = dict(result.inputs)
    for name, item in result.inputs.items():
        if (names is None or name in names) and is_sparse(item) and fits_dense(result, name):
            if item.has_points:
                dense = item.derivatives.to_dense()
            else:
                shape = tuple(result.output.shape) + tuple(item.shape)
                dense = item.sparse.matrix.to_dense().reshape(shape)
            inputs[name] = replace(item, derivatives=dense, sparse=None)
    if all(inputs[n] is result.inputs[n] for n in inputs):
        return result
    return replace(result, inputs=inputs)


def too_large(result) -> list[str]:
    """The inputs whose Jacobian is sparse and too large to densify."""
    return [n for n, item in result.inputs.items() if is_sparse(item)]


def column_sums(matrix: torch.Tensor, absolute: bool = False) -> torch.Tensor:
    """vᵀJ with v = ones for a 2-D CSR ``matrix`` (or the sums of |J| with ``absolute``):
    float64, one entry per column."""
    values = matrix.values().detach().double()
    if absolute:
        values = values.abs()
    out = torch.zeros(matrix.shape[1], dtype=torch.float64, device=values.device)
    return out.index_add_(0, matrix.col_indices(), values)


def csr_row(matrix: torch.Tensor, k: int) -> torch.Tensor:
    """Row ``k`` of a 2-D CSR ``matrix`` as a dense float64 vector."""
    crow = matrix.crow_indices()
    lo, hi = int(crow[k]), int(crow[k + 1])
    out = torch.zeros(matrix.shape[1], dtype=torch.float64, device=crow.device)
    out[matrix.col_indices()[lo:hi]] = matrix.values()[lo:hi].detach().double()
    return out


__all__ = ["DENSE_ENTRIES", "POINTS_DENSE_ENTRIES", "column_sums", "csr_row", "densified",
           "fits_dense", "is_sparse", "too_large"]
