"""``--symbolic``: formulas from SymPy for the derivatives, crosschecked against autograd.

The tour: :mod:`.report` (:func:`derive`, the one entry point for first and second
derivatives, and :class:`SymbolicReport`) → :mod:`.replay` (the pruned steps of the one replay
engine, :mod:`vjp_magic.run.plan`, run with symbols; :mod:`.calls` maps one step to its rule) →
:mod:`.tensor` (:class:`SymTensor`) → :mod:`.registry` (the ONE rule table) with the rules in
:mod:`.rules` and :mod:`.rules_shape` (a new op rule goes there) → :mod:`.arrays`,
:mod:`.functions`; then :mod:`.formulas` (differentiating, :func:`sympy.derive_by_array`),
:mod:`.crosscheck` (comparing with autograd), :mod:`.display` (the document nodes);
:mod:`.deadline` is the time budget.
"""
from __future__ import annotations

from . import rules, rules_shape  # noqa: F401 - registers the op rules
from .report import SymbolicReport, derive

__all__ = ["SymbolicReport", "derive"]
