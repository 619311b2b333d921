"""How a result is displayed: the numbers' precision and how big a matrix may be."""
from __future__ import annotations

from dataclasses import dataclass, field

# The width budget, in counted characters of 10 px (16 px per em) of one display line, a
# formula's width estimated as MathJax/KaTeX set it (render/typeset.py: digits 0.5 em, minus
# 0.78 em, 1 em between a matrix's columns).
#
# JupyterLab at 1024 × 768 with the file browser open leaves a 572 px wide output paragraph
# (measured by tests/clients/test_browser.py). At 56 counted characters the estimate let the widest
# real outputs (10^5 rows with a factored power of ten and row labels) reach 639 px; 50 keeps
# every output of the demo notebooks and tests/clients/cells.ipynb inside. The same budget keeps
# a matrix inside the text width of nbconvert's LaTeX/PDF page.
DISPLAY_WIDTH = 50
# The height budget, in CSS px: JupyterLab at 1024 × 768 with the file browser open shows 647 px
# of notebook (tests/clients/test_browser.py measures it). Heights are estimated in the document
# model (render/typeset.py: a paragraph line, a matrix row, a code line), calibrated there.
DISPLAY_HEIGHT = 647
# --full-matrix shows every entry of a matrix of at most this many (wider than the width
# budget: in column blocks stacked vertically); larger ones are summarised as always.
FULL_MATRIX_ENTRIES = 400


@dataclass
class RenderOptions:
    """How a result is displayed (the magics fill these from ``%config`` and flags).

    ``precision``: significant digits at most (fewer where the dtype resolves fewer);
    ``threshold``: a matrix axis longer than this is summarised to ``edgeitems`` at each end;
    ``width``: counted characters one display line may take (fewer digits, then fewer edge
    columns, when entries are wide);
    ``height``: CSS px one output may take (fewer rows, components and inputs shown, each
    counted, when it is taller; ``render/budget.py``);
    ``full_matrix``: every entry of a matrix up to :data:`FULL_MATRIX_ENTRIES` entries, in
    column blocks where it is wider than ``width`` (``--full-matrix``: the output may then be
    taller than ``height``);
    ``index_base``: where the maths counts components and points from (1: the tutorial's
    f_1′, v_1, x^{(1)}; 0: as the code does). Code and tensor labels (``y[0]``) always
    count from 0.
    """

    precision: int = 4
    threshold: int = 10
    edgeitems: int = 3
    width: int = DISPLAY_WIDTH
    height: int = DISPLAY_HEIGHT
    full_matrix: bool = False
    # how much of one output is shown to fit ``height``, and its layout plan (render/budget.py
    # sets it while it builds the output; None: everything, each matrix on its own)
    fit: object = field(default=None, repr=False, compare=False)
    index_base: int = 1
