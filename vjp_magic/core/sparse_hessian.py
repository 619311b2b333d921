"""Sparse Hessians of a scalar: one Hessian-vector product per colour of a symmetric
colouring, read off into a torch sparse CSR matrix, checked by random probes.

From the gradient d = ∇f (kept with its graph by :mod:`.hessian`): the pattern of ∂d/∂x is
found at this x (:mod:`.pattern`), made symmetric with its diagonal, and coloured so that
every nonzero can be read directly from the products H·v_c, v_c = 1 on the entries of colour
c (:func:`.colouring.colour_symmetric`: distance-2 or star colouring). Each product is one
backward pass through d (vᵀ∂d/∂x = (Hv)ᵀ, H symmetric). The result is then checked as a
sparse Jacobian is (full random probes vᵀH against vᵀH_sparse, each entry within the probe
rule's tolerance of |v|ᵀ|H_sparse| times :data:`SECOND_ORDER_SLACK`); a coupling the
pattern missed, or an H that is not symmetric, fails there, and the caller
takes the exact path instead. The memory budget counts nonzeros here.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from . import memory, probes
from . import pattern as patterns
from .colouring import colour_count, colour_symmetric, recover_symmetric, symmetrised
from .derivatives import chunk_size, plain_vjp, vjp_batch
from .sparse_check import probe_values
from .sparse_layout import csr_matrix, csr_rows, dense_to_csr
from .tolerances import tolerances

# Up to this many colours, plain backward passes one after another (faster on CPU than one
# vectorised backward of the same vectors); batched beyond.
LOOP_PASSES = 64
# A probe through the double-backward graph sums terms larger than the second derivatives
# they cancel to: vᵀH is judged with this many times the probe rule's tolerance (float32:
# 5e-4 of the magnitudes; a coupling the pattern missed is of the order of the entries).
SECOND_ORDER_SLACK = 64
# A Hessian is tried sparse from this many entries of x (n² ≥ 2²² entries dense): smaller
# ones keep the dense display the tutorial's examples show.
SPARSE_FROM = 2048


class SparseHessian(NamedTuple):
    """The sparse Hessian and how it was found (what the display states)."""

    matrix: torch.Tensor  # sparse CSR, x.numel() × x.numel() (flattened row-major)
    colours: torch.Tensor  # int64, one per entry of x: the products' indicator vectors
    count: int  # Hessian-vector products (colours)
    probes: int  # backward passes spent finding the pattern
    evidence: str = "observed"

    @property
    def nnz(self) -> int:
        return int(self.matrix.col_indices().numel())

    def summary(self) -> str:
        """One sentence: "tridiagonal Hessian: 299,998 nonzeros from 3 Hessian-vector
        products"."""
        kind = band_name(self.matrix)
        products = "product" if self.count == 1 else "products"
        how = "the pattern proved from the graph for every x" if self.evidence == "proved" \
            else f"the pattern found at this x by {self.probes:,} probes"
        return (f"{kind} Hessian: {self.nnz:,} nonzeros from {self.count:,} Hessian-vector "
                f"{products} ({how}; the values checked with random probes).")


def band_name(matrix: torch.Tensor) -> str:
    """"Diagonal", "tridiagonal", "banded (half-width k)" or "sparse", from the nonzeros."""
    n = matrix.shape[0]
    crow, col = matrix.crow_indices().cpu(), matrix.col_indices().cpu()
    rows = csr_rows(crow)
    width = int((rows - col).abs().max()) if col.numel() else 0
    if width == 0:
        return "Diagonal"
    if width == 1:
        return "Tridiagonal"
    if width <= 8 and col.numel() > 0.5 * n * (2 * width + 1):
        return f"Banded (half-width {width})"
    return f"Sparse ({col.numel() / max(n, 1):.1f} nonzeros a row)"


def sparse_hessian(d: torch.Tensor, x: torch.Tensor, budget: int, seed: int,
                   name: str = "x") -> SparseHessian | None:
    """The Hessian whose gradient ``d`` (shaped like x, with its graph) is given, sparse, or
    None: no pattern that pays, no colouring, or the probes disagreed. A pattern whose
    nonzeros exceed the memory budget is refused (VJPUsageError, with the count)."""
    n = x.numel()
    finder = getattr(patterns, "find_pattern", None) or patterns.observed_pattern
    pattern = finder(d, x, budget, seed)
    if pattern is None:
        return None
    if pattern.nnz == 0:  # d does not depend on x here: f is linear (checked below)
        matrix = empty_csr(x)
        if not checked(d, x, matrix, seed, budget):
            return None
        return SparseHessian(matrix, torch.zeros(n, dtype=torch.int64), 0, pattern.probes,
                             str(getattr(pattern, "evidence", "observed")))
    crow, col = symmetrised(pattern.crow.numpy(), pattern.col.numpy(), n)
    nnz = len(col)
    memory.refuse_if_over(nnz * (8 + x.element_size()) + 8 * (n + 1), budget,
                          f"The sparse Hessian with respect to {name} ({nnz:,} nonzeros)")
    colours = colour_symmetric(crow, col, n, shape=tuple(x.shape), symmetric=True)
    if colours is None:
        return None
    count = colour_count(colours)
    products = _products(d.reshape(-1), x, torch.from_numpy(colours), count, budget)
    values = recover_symmetric(crow, col, colours, products)
    matrix = csr_matrix(torch.from_numpy(crow), torch.from_numpy(col), values.cpu(),
                        (n, n)).to(x.device)
    if not checked(d, x, matrix, seed, budget):
        return None
    return SparseHessian(matrix, torch.from_numpy(colours), count, pattern.probes,
                         str(getattr(pattern, "evidence", "observed")))


def _products(flat: torch.Tensor, x: torch.Tensor, colours: torch.Tensor, count: int,
              budget: int) -> torch.Tensor:
    """(count × n): H·v_c for v_c = 1 on the entries of colour c (vᵀ∂d/∂x, H symmetric),
    from plain backward passes up to :data:`LOOP_PASSES` colours, batched beyond."""
    colours = colours.to(flat.device)
    if count <= LOOP_PASSES:
        rows = [plain_vjp(flat, [x], (colours == c).to(flat.dtype))[0].detach().reshape(-1)
                for c in range(count)]
        return torch.stack(rows) if rows else x.new_zeros(0, x.numel())
    ids = torch.arange(count, device=flat.device)
    return _batched(flat, x, (colours[None, :] == ids[:, None]).to(flat.dtype), budget)


def _batched(flat: torch.Tensor, x: torch.Tensor, vectors: torch.Tensor,
             budget: int | None) -> torch.Tensor:
    """vᵀ∂flat/∂x for each row v of ``vectors`` (count × n), in batches the budget allows."""
    limit = len(vectors) if budget is None else chunk_size(flat, [x], budget)
    passes = []
    for start in range(0, len(vectors), max(limit, 1)):
        part = vectors[start:start + max(limit, 1)]
        (g,) = vjp_batch(flat, [x], part)
        passes.append(g.detach().reshape(len(part), -1))
    return torch.cat(passes) if passes else x.new_zeros(0, x.numel())


def checked(d: torch.Tensor, x: torch.Tensor, matrix: torch.Tensor, seed: int,
            budget: int | None = None) -> bool:
    """Full random probes v (:func:`_check_probes`, the run's seed): vᵀ∂d/∂x from
    autograd against vᵀH_sparse, entry by entry (as :func:`.compressed.checked`). Entry j is
    judged against Σ_i |v_i|·Σ_k |H[i, k]| over the rows i that meet column j, times the probe
    tolerance and :data:`SECOND_ORDER_SLACK`: autograd forms H[j, j] from terms as large as
    the entries of the neighbouring rows (Rosenbrock: 1200x_j² - 400x_(j+1) + 202), which
    may cancel to far less than column j alone. The probes go through one batched backward
    (vmap: faster here than a loop); the products they check came from plain ones, so a
    batching rule that went wrong shows as a disagreement, never as a wrong result."""
    flat = d.reshape(-1)
    vectors = _check_probes(flat, seed)
    count = len(vectors)
    observed = _batched(flat, x, vectors, budget)
    crow, col, values = matrix.crow_indices(), matrix.col_indices(), matrix.values()
    rows = csr_rows(crow)
    row_sums = values.abs().new_zeros(matrix.shape[0]).index_add_(0, rows, values.abs())
    v_rows = vectors.to(values.device, values.dtype)[:, rows]  # count × nnz
    shape = (count, matrix.shape[1])
    predicted = values.new_zeros(shape).index_add_(1, col, v_rows * values)
    v_rows.abs_().mul_(row_sums[rows])
    scale = values.new_zeros(shape).index_add_(1, col, v_rows)
    observed = observed.to(predicted.device)
    if not (_finite(observed) and _finite(predicted)):
        return False
    allowed = scale * (tolerances(flat.dtype).probe * SECOND_ORDER_SLACK) + \
        torch.finfo(scale.dtype).tiny
    return bool(((observed - predicted).abs() <= allowed).all())


def _finite(t: torch.Tensor) -> bool:
    """Every entry finite (the sum first: one pass, and exact whenever it is finite)."""
    return bool(torch.isfinite(t.sum())) or bool(torch.isfinite(t).all())


def _check_probes(flat: torch.Tensor, seed: int) -> torch.Tensor:
    """The check's probes (count × n): random signed powers of two, the count and values of
    :func:`.probes.probe_plan` for the dtype, drawn all at once from the run's seed on a
    stream of their own."""
    plan = probes.probe_plan(flat.dtype)
    table = probe_values(flat.dtype)
    codes = torch.randint(0, plan.values, (plan.probes * flat.numel(),), dtype=torch.int32,
                          generator=probes.probe_generator(seed, "sparse-hessian-check"))
    return torch.index_select(table, 0, codes).reshape(plan.probes, -1).to(flat.device)


def empty_csr(x: torch.Tensor) -> torch.Tensor:
    """The n × n CSR with no nonzeros (n = x.numel()), on x's device and dtype."""
    n = x.numel()
    return csr_matrix(torch.zeros(n + 1, dtype=torch.int64, device=x.device),
                      torch.zeros(0, dtype=torch.int64, device=x.device), x.new_zeros(0), (n, n))


def dense_as_csr(hessian: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """A dense Hessian as a 2-D CSR tensor (rows × cols, row-major)."""
    return dense_to_csr(hessian.reshape(rows, cols))


def sparse_as_dense(sparse: SparseHessian, shape) -> torch.Tensor:
    """The sparse Hessian densified into ``shape`` (output.shape + x.shape + x.shape)."""
    return sparse.matrix.to_dense().reshape(shape)
