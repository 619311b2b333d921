"""Presentation mode (``--present``, or ``%config VJPMagics.present = True``): the result
first, larger, the headline beneath it (for a projector).

The view puts each input's derivatives (``%jacobian``: the Jacobian; ``%hessian``: the second
derivatives) above everything else, set ``\\Large`` in markdown (MathJax 3 and KaTeX); the
shapes, the headline, v and the loop follow as usual. The LaTeX and plain spellings keep their
size (LaTeX refuses a size change inside maths). Nothing is hidden: under ``--check`` without
``--reveal`` the derivatives stay hidden.
"""
from __future__ import annotations

from ..run.choose import Subject
from . import Added, Asked

flags = ("present",)
orders = (1, 2)
replays_record = False


def add(result, request: Asked, subject: Subject) -> Added:
    return Added(view={"present": True})
