"""``%hessian --symbolic``: second-derivative formulas, as :func:`~.report.derive` makes them.

:func:`~.report.derive` is the one entry point for first and second derivatives: given a
:class:`~vjp_magic.core.hessian.HessianResult` it replays the record with symbols,
differentiates each entry of the output twice by one point's variables
(:func:`sympy.derive_by_array`), evaluates the formula at every point in float64 and
crosschecks it against the per-point Hessians. :func:`derive_hessian` is that call.
"""
from __future__ import annotations

from .report import SymbolicReport, derive


def derive_hessian(h, *, record, namespace, output_source: str | None = None) -> SymbolicReport:
    """Formulas for ``h``'s second derivatives, crosschecked at every point: ``derive(h, ...)``.

    ``formulas[name]``: one point's Hessian as SymPy (a scalar f″, a column of f_k″, an
    m × m matrix, or a tuple of them, one per component).
    """
    return derive(h, record=record, namespace=namespace, output_source=output_source)
