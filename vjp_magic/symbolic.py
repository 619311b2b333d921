"""Stage 4b — symbolic derivatives with SymPy, cross-checked against autograd.

(To be filled by issue 6; ``attach`` is called by the magics when --symbolic is given.)
"""
from __future__ import annotations


def attach(result, *, source: str | None, namespace, output_source: str | None) -> None:
    """Fill ``result.symbolic`` / ``result.symbolic_check`` and add a rendering section."""
    return None
