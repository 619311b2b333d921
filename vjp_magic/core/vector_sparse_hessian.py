"""Sparse second derivatives of a vector output whose Jacobian pattern is proved sparse.

If y[i] does not read x[j] for any x (a pattern proved from the graph,
:func:`.indexmaps.proved_pattern`), then ∂²y[i]/∂x[j]∂x[k] = 0 for every k: y[i]'s Hessian
H_i lives on supp(i)×supp(i), supp(i) the entries of x that y[i] reads. The outputs are
row-coloured (:func:`.colouring.colour_rows`: outputs of one colour read disjoint entries of
x); for colour c, s_c = Σ_{i∈c} y[i] has the Hessian Σ_{i∈c} H_i, whose blocks
supp(i)×supp(i) are disjoint, so every H_i is read off it exactly. Each colour's Hessian is
computed as a scalar's sparse Hessian is (:mod:`.sparse_hessian`): d_c = ∇s_c with its
graph, one Hessian-vector product per colour of a symmetric colouring of the known pattern
∪_{i∈c} supp(i)×supp(i), then checked by a random probe vᵀ∂d_c/∂x against vᵀH_c (a coupling
outside the pattern, or a wrong pattern, fails there: None, and the caller refuses).
The pass count is independent of the size: (groups) × (1 + products + probes).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

from . import memory
from .colouring import (colour_count, colour_rows, colour_symmetric, recover_symmetric,
                        valid_rows)
from .indexmaps import proved_pattern
from .sparse_hessian import checked, colour_products, direct_values
from .sparse_layout import csr_matrix, unravelled
from .torch_api import guarded_grad as autograd_grad  # every pass under pass_guard


class SparseBlocks(NamedTuple):
    """The second derivatives of a vector output y, sparse: ``index`` (3 × nnz, int64) the
    flat output entry i and flat entries j, k of x of each nonzero ∂²y[i]/∂x[j]∂x[k]
    (sorted by i, j, k), ``values`` them; ``y_shape``, ``x_shape``; ``reads``: the most
    entries of x one y[i] reads; ``groups``: the output colours (sums s_c); ``products``:
    the Hessian-vector products, ``passes``: backward passes in all (gradients, products,
    checks); ``offsets``: for a 1-D y and x whose y[i] read x[i + d] for d in a few fixed
    offsets, those d (the display's words), else None."""

    index: torch.Tensor
    values: torch.Tensor
    y_shape: tuple[int, ...]
    x_shape: tuple[int, ...]
    reads: int
    groups: int
    products: int
    passes: int
    evidence: str = "proved"
    conditional_on: tuple[str, ...] = ()
    offsets: tuple[int, ...] | None = None

    @property
    def nnz(self) -> int:
        return int(self.values.numel())

    @property
    def shape(self) -> tuple[int, ...]:
        return self.y_shape + self.x_shape + self.x_shape

    def coo(self) -> torch.Tensor:
        """A sparse COO tensor of shape y.shape + x.shape + x.shape (coalesced)."""
        parts = unravelled(self.index[0], self.y_shape) + \
            unravelled(self.index[1], self.x_shape) + unravelled(self.index[2], self.x_shape)
        index = torch.stack(parts) if parts else self.index[:0]
        return torch.sparse_coo_tensor(index, self.values, self.shape, is_coalesced=True,
                                       check_invariants=False)

    def csr(self, budget: int, what: str) -> torch.Tensor:
        """The 2-D CSR (y.numel()·x.numel() × x.numel(), row-major), refused over ``budget``
        (its row pointers count)."""
        m, n = math.prod(self.y_shape), math.prod(self.x_shape)
        memory.refuse_if_over(8 * (m * n + 1) + self.nnz * (8 + self.values.element_size()),
                              budget, f"{what} ({self.nnz:,} nonzeros in {m * n:,} rows)")
        rows = self.index[0] * n + self.index[1]
        crow = torch.zeros(m * n + 1, dtype=torch.int64, device=rows.device)
        crow[1:] = torch.cumsum(torch.bincount(rows, minlength=m * n), 0)
        return csr_matrix(crow, self.index[2].clone(), self.values, (m * n, n))


def block_entries(crow: np.ndarray, col: np.ndarray) -> tuple[np.ndarray, ...]:
    """(i, j, k) of every pair j, k of entries read by one row i of the pattern, sorted by
    (i, j, k): Σ_i |supp(i)|² of them."""
    reads = np.diff(crow)
    row_of = np.repeat(np.arange(len(reads), dtype=np.int64), reads)  # per nonzero (i, j)
    width = reads[row_of]  # each nonzero (i, j) pairs with |supp(i)| entries k
    starts = np.cumsum(width) - width
    total = int(width.sum())
    nonzero = np.repeat(np.arange(len(col), dtype=np.int64), width)
    step = np.arange(total, dtype=np.int64) - np.repeat(starts, width)
    i = row_of[nonzero]
    return i, col[nonzero], col[crow[i] + step]


def vector_sparse_hessian(output: torch.Tensor, x: torch.Tensor, budget: int, seed: int,
                          name: str = "x") -> SparseBlocks | None:
    """The sparse second derivatives of ``output`` (a vector) with respect to ``x`` (module
    docstring), or None: no proved pattern, no colouring, or a check disagreed. Refused
    (VJPUsageError) where the nonzeros alone exceed the budget."""
    pattern = proved_pattern(output, x, budget)
    if pattern is None or pattern.nnz == 0:
        return None
    crow, col = pattern.crow.numpy(), pattern.col.numpy()
    n = x.numel()
    reads = np.diff(crow)
    nnz = int((reads * reads).sum())
    memory.refuse_if_over(nnz * (24 + x.element_size()), budget,
                          f"The sparse second derivatives with respect to {name} "
                          f"({nnz:,} nonzeros)")
    groups = colour_rows(crow, col, n, shape=(tuple(output.shape), tuple(x.shape)),
                         lattice=pattern.lattice)
    if groups is None:
        return None
    i, j, k = block_entries(crow, col)
    values = x.new_zeros(len(i))
    flat = output.reshape(-1)
    passes = products = 0
    for c in range(colour_count(groups)):
        found = _group_values(flat, x, groups, c, (i, j, k), budget, seed)
        if found is None:
            return None
        at, group_values, spent, count = found
        values[torch.from_numpy(at).to(values.device)] = group_values.to(values.dtype)
        passes, products = passes + spent, products + count
    index = torch.from_numpy(np.stack([i, j, k])).to(x.device)
    return SparseBlocks(index, values, tuple(output.shape), tuple(x.shape),
                        int(reads.max()), colour_count(groups), products, passes,
                        "proved", tuple(pattern.conditional_on), _offsets(crow, col, output, x))


def _group_values(flat, x, groups, c: int, entries, budget: int, seed: int):
    """One output colour's Hessian Σ_{i∈c} H_i on its known pattern: (the positions of its
    entries in ``entries``, their values, backward passes spent, products), or None where
    the check disagreed."""
    i, j, k = entries
    at = np.flatnonzero(groups[i] == c)
    order = np.lexsort((k[at], j[at]))  # the group's pattern as CSR rows j (one i per j)
    at = at[order]
    n = x.numel()
    crow = np.zeros(n + 1, dtype=np.int64)
    crow[1:] = np.cumsum(np.bincount(j[at], minlength=n))
    col = k[at]
    vector = torch.from_numpy(groups == c).to(flat.device, flat.dtype)
    (d,) = autograd_grad([flat], [x], [vector], retain_graph=True, create_graph=True,
                         materialize_grads=True)
    if not d.requires_grad:  # s_c is linear in x
        return at, x.new_zeros(len(at)), 1, 0
    colours = colour_symmetric(crow, col, n, shape=tuple(x.shape), symmetric=True)
    if colours is None:
        return None
    count = colour_count(colours)
    d = d.reshape(-1)
    products = colour_products(d, x, torch.from_numpy(colours), count, budget)
    rows = torch.from_numpy(np.repeat(np.arange(n, dtype=np.int64), np.diff(crow)))
    values = direct_values(rows, col, colours, products) \
        if valid_rows(crow, col, n, colours) else recover_symmetric(crow, col, colours, products)
    matrix = csr_matrix(torch.from_numpy(crow), torch.from_numpy(col), values.cpu(),
                        (n, n)).to(x.device)
    if not checked(d, x, matrix, seed, budget, 1, rows.to(x.device)):
        return None
    return at, values, 2 + count, count


# The display names a 1-D stencil's neighbours where its rows read at most this many offsets.
FEW_OFFSETS = 9


def _offsets(crow, col, output, x) -> tuple[int, ...] | None:
    """The offsets d with y[i] reading x[i + d] (1-D y and x, a few of them), else None."""
    if output.dim() != 1 or x.dim() != 1 or len(col) == 0:
        return None
    rows = np.repeat(np.arange(len(crow) - 1, dtype=np.int64), np.diff(crow))
    found = np.unique(col - rows)
    return tuple(int(d) for d in found) if len(found) <= FEW_OFFSETS else None
