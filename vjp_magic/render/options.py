"""How a result is displayed: the numbers' precision and how big a matrix may be."""
from __future__ import annotations

from dataclasses import dataclass

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


@dataclass
class RenderOptions:
    """How a result is displayed (the magics fill these from ``%config`` and flags).

    ``precision``: significant digits at most (fewer where the dtype resolves fewer);
    ``threshold``: a matrix axis longer than this is summarised to ``edgeitems`` at each end;
    ``width``: counted characters one display line may take (fewer digits, then fewer edge
    columns, when entries are wide);
    ``index_base``: where the maths counts components and points from (1: the tutorial's
    f_1′, v_1, x^{(1)}; 0: as the code does). Code and tensor labels (``y[0]``) always
    count from 0.
    """

    precision: int = 4
    threshold: int = 10
    edgeitems: int = 3
    width: int = DISPLAY_WIDTH
    index_base: int = 1
