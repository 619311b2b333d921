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

from .derivatives import component_vjps, forward_jacobian
from .errors import VJPUsageError
from .indexmaps import proved_pattern
from .memory import gb, refuse_if_over
from .sparse_layout import dense_to_csr
from .validation import nan_filled


def exact_csr(output: torch.Tensor, x: torch.Tensor, budget: int) -> torch.Tensor:
    """d output / d x from one VJP per output entry, as a 2-D CSR tensor (output.numel() ×
    x.numel()): non-finite entries outside the proved pattern 0, NaN entries filled from
    forward mode where it has a number. Over the budget, refused (saying NaN where x or the
    output holds NaN or inf)."""
    m, n = output.numel(), x.numel()
    if 2 * m * n * x.element_size() > budget and not (
            bool(x.detach().isfinite().all()) and bool(output.detach().isfinite().all())):
        _refuse_nan(m, n, 2 * m * n * x.element_size())  # the likelier reason, said
    refuse_if_over(m * n * x.element_size(), budget,
                   f"No sparsity pattern paid off, and the dense {m:,} × {n:,} Jacobian")
    (stacked,), _ = component_vjps(output.reshape(-1), [x], (), budget)
    dense = stacked.detach().reshape(m, n)
    if not bool(dense.isfinite().all()):
        dense = nan_filled(dense, (lambda: forward_jacobian(output.reshape(-1), x).detach(),),
                           proved=lambda: proved_pattern(output, x, budget, dense=True))
    return dense_to_csr(dense)


def without_false_nan(output: torch.Tensor, x: torch.Tensor, matrix: torch.Tensor,
                      budget: int) -> torch.Tensor:
    """``matrix`` (compressed passes' CSR) where it holds no NaN; else :func:`exact_csr`,
    or a refusal where the dense Jacobian is over ``budget``."""
    values = matrix.values()  # a sum without NaN: no NaN (30x cheaper than isnan's mask)
    if not bool(values.sum().isnan()) or not bool(values.isnan().any()):
        return matrix
    m, n = output.numel(), x.numel()
    nbytes = 2 * m * n * x.element_size()  # the reverse Jacobian and the forward one
    if nbytes > budget:
        _refuse_nan(m, n, nbytes)
    return exact_csr(output, x, budget)


def _refuse_nan(m: int, n: int, nbytes: int):
    raise VJPUsageError(
        "x or a value computed from it holds NaN or inf, and a backward pass reads 0·NaN as "
        "NaN: telling a true NaN derivative from a zero one takes the dense "
        f"{m:,} × {n:,} Jacobian ({gb(nbytes)}), over the memory budget. Raise "
        "memory_budget, or find where the NaN comes from (torch.isnan(x).any()).")
