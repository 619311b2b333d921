"""The exact path of :func:`.compressed.sparse_jacobian`, and its NaN rule: the dense Jacobian
(one backward per output entry) in CSR, its NaN entries filled from forward mode as
:func:`vjp_magic.differentiate` fills them (:func:`.validation.nan_filled`), and those outside
the pattern the graph proves 0 (:func:`.validation.outside_proved_zeroed`: 0·∞ artefacts).

Reverse mode reads 0·NaN as NaN: one NaN in x, met by a zero seed at a node that multiplies
by it, makes a whole column of NaN where the true derivatives are numbers or 0; forward mode
does the same along rows. Between the two modes an entry is NaN only where both are. The
compressed passes (sums of one-hot seeds) show those NaN columns too, and cannot tell them
from true ones: a result holding NaN is computed again this way, within the memory budget.
"""
from __future__ import annotations

import torch

from .checked_batches import checked_batch, checked_components
from .derivatives import chunk_size, forward_jacobian
from .errors import VJPUsageError
from .indexmaps import proved_pattern
from .memory import gb, refuse_if_over
from .sparse_layout import csr_matrix, dense_to_csr
from .torch_api import guarded_grad
from .validation import nan_filled


NO_PATTERN = "No sparsity pattern paid off"


def exact_csr(output: torch.Tensor, x: torch.Tensor, budget: int,
              why: str = NO_PATTERN) -> torch.Tensor:
    """d output / d x from one VJP per output entry, as a 2-D CSR tensor (output.numel() ×
    x.numel()): non-finite entries outside the proved pattern 0, NaN entries filled from
    forward mode where it has a number. Over the budget, the proved pattern's entries only
    (:func:`proved_exact_csr`), else refused (saying NaN where x or the output holds NaN or
    inf; ``why`` begins the refusal's sentence: why no sparse Jacobian was taken)."""
    m, n, pattern = output.numel(), x.numel(), None
    if 2 * m * n * x.element_size() > budget:
        pattern = proved_pattern(output, x, budget)
        if pattern is not None and _held_bytes(pattern, x) <= budget // 2:
            return proved_exact_csr(output, x, pattern, budget)
    if 2 * m * n * x.element_size() > budget and not (
            bool(x.detach().isfinite().all()) and bool(output.detach().isfinite().all())):
        _refuse_nan(m, n, 2 * m * n * x.element_size())  # the likelier reason, said
    refuse_if_over(m * n * x.element_size(), budget,
                   f"{why}{_proved_count(output, x, pattern) if why == NO_PATTERN else ''}"
                   f", and the dense {m:,} × {n:,} Jacobian")
    (stacked,) = checked_components(output.reshape(-1), [x], (), budget)
    dense = stacked.detach().reshape(m, n)
    if not bool(dense.isfinite().all()):
        dense = nan_filled(dense, (lambda: forward_jacobian(output.reshape(-1), x).detach(),),
                           proved=lambda: proved_pattern(output, x, budget, dense=True))
    return dense_to_csr(dense)


def _proved_count(output: torch.Tensor, x: torch.Tensor, pattern) -> str:
    """" (the graph proves 4,501,500 nonzeros: in CSR they need 108 MB)" for a refusal, the
    pattern walked again within :data:`COUNT_BYTES` where the budget's walk stopped (it
    holds the index maps only for this sentence); '' where the graph proves none or its
    pattern is too large to count within that."""
    if pattern is None:
        pattern = proved_pattern(output, x, COUNT_BYTES, dense=True)
    if pattern is None:
        return ""
    return (f" (the graph proves {pattern.nnz:,} nonzeros: in CSR, with their passes' "
            f"workspace, they need {gb(2 * _held_bytes(pattern, x))})")


COUNT_BYTES = 1 << 27  # 128 MB: what a refusal may walk to count the proved nonzeros


def _held_bytes(pattern, x: torch.Tensor) -> int:
    return pattern.nnz * (8 + x.element_size()) + 8 * (pattern.shape[0] + 1)


def proved_exact_csr(output: torch.Tensor, x: torch.Tensor, pattern, budget: int) -> torch.Tensor:
    """:func:`exact_csr` where the dense Jacobian is over the budget but the pattern the graph
    proves is not: one-hot VJPs by chunks of rows within the budget, each keeping its rows'
    pattern entries only (0 outside: proved), then the pattern entries still NaN filled from
    forward mode, by chunks of their columns (J·u by double backward), where it has a
    number. The same values as the dense path, in O(nnz) memory and m backward passes."""
    flat, m, n = output.reshape(-1), output.numel(), x.numel()
    crow, col = pattern.crow, pattern.col
    rows = torch.repeat_interleave(torch.arange(m), torch.diff(crow))
    values = x.new_empty(pattern.nnz)
    step = max(1, min(chunk_size(flat, [x], budget // 4), budget // 4 // max(n * 8, 1)))
    for start in range(0, m, step):
        stop = min(m, start + step)
        v = torch.zeros(stop - start, m, dtype=flat.dtype, device=flat.device)
        v[torch.arange(stop - start), torch.arange(start, stop)] = 1
        (g,) = checked_batch(flat, [x], v)
        lo, hi = int(crow[start]), int(crow[stop])
        g = g.detach().reshape(stop - start, n)
        values[lo:hi] = g[(rows[lo:hi] - start).to(g.device), col[lo:hi].to(g.device)]
    bad = values.isnan()
    if bool(bad.any()):
        _fill_by_columns(flat, x, rows, col, values, bad, budget)
    return csr_matrix(crow, col, values.cpu(), (m, n)).to(x.device)


def _fill_by_columns(flat, x, rows, col, values, bad, budget: int) -> None:
    """``values`` (the pattern's, CSR order) NaN at ``bad``: filled in place from forward
    mode J·u, u one-hot on each of their columns, where it has a number."""
    v = torch.zeros_like(flat, requires_grad=True)
    try:
        (g,) = guarded_grad([flat], [x], [v], retain_graph=True, create_graph=True,
                            allow_unused=True)
    except (RuntimeError, NotImplementedError):  # no double backward: NaN stays
        return
    if g is None or not g.requires_grad:
        return
    g = g.reshape(-1)
    at = bad.nonzero().flatten()
    columns = torch.unique(col[at])
    step = max(1, budget // 4 // max(flat.numel() * 8, 1))
    for start in range(0, len(columns), step):
        chunk = columns[start:start + step]
        u = torch.zeros(len(chunk), x.numel(), dtype=x.dtype, device=x.device)
        u[torch.arange(len(chunk)), chunk.to(x.device)] = 1
        (ju,) = checked_batch(g, [v], u)  # (chunk × m): J·u, one column of J each
        ju = ju.detach().reshape(len(chunk), -1)
        mine = at[torch.isin(col[at], chunk)]
        where = torch.searchsorted(chunk, col[mine])
        found = ju[where.to(ju.device), rows[mine].to(ju.device)].to(values.dtype)
        values[mine] = torch.where(found.isnan(), values[mine], found)


def without_false_nan(output: torch.Tensor, x: torch.Tensor, matrix: torch.Tensor,
                      budget: int) -> torch.Tensor:
    """``matrix`` (compressed passes' CSR) where it holds no NaN; else :func:`exact_csr`
    (the proved pattern's entries only where the dense Jacobian is over ``budget``), or a
    refusal where neither fits."""
    values = matrix.values()  # a sum without NaN: no NaN (30x cheaper than isnan's mask)
    if not bool(values.sum().isnan()) or not bool(values.isnan().any()):
        return matrix
    m, n = output.numel(), x.numel()
    nbytes = 2 * m * n * x.element_size()  # the reverse Jacobian and the forward one
    if nbytes > budget:
        pattern = proved_pattern(output, x, budget)
        if pattern is not None and _held_bytes(pattern, x) <= budget // 2:
            return proved_exact_csr(output, x, pattern, budget)
        _refuse_nan(m, n, nbytes)
    return exact_csr(output, x, budget)


def _refuse_nan(m: int, n: int, nbytes: int):
    raise VJPUsageError(
        "x or a value computed from it holds NaN or inf, and a backward pass reads 0·NaN as "
        "NaN: telling a true NaN derivative from a zero one takes the dense "
        f"{m:,} × {n:,} Jacobian ({gb(nbytes)}), over the memory budget. Raise "
        "memory_budget, or find where the NaN comes from (torch.isnan(x).any()).")
