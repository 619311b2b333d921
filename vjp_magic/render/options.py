"""How a result is displayed: the numbers' precision and how big a matrix may be."""
from __future__ import annotations

from dataclasses import dataclass

# The width budget, in characters of one display line ("f'(x) = [-4  -2  0  2  4]", counted as the
# plain-text rendering spells it: one character per digit, two between columns).
#
# JupyterLab at 1024 × 768 with the file browser open: 1024 px less the activity bar (33 px),
# the file browser (≈ 250 px), the cell's prompt column (64 px), paddings and the scroll bar
# (≈ 60 px) leaves ≈ 600 px of output area, of which ≈ 560 px take maths without clipping.
# MathJax 3 sets a digit 0.5 em wide, ≈ 8 px at JupyterLab's 14–16 px; minus signs, brackets,
# subscripted labels and \cdots are wider than a digit, so ≈ 10 px per counted character is the
# honest average: 560 px / 10 px ≈ 56 characters. The same budget keeps a matrix inside the
# text width of nbconvert's LaTeX/PDF page (≈ 470 pt, ≈ 5 pt per character at 10 pt).
DISPLAY_WIDTH = 56


@dataclass
class RenderOptions:
    """How a result is displayed (the magics fill these from ``%config`` and flags).

    ``precision``: significant digits at most (fewer where the dtype resolves fewer);
    ``threshold``: a matrix axis longer than this is summarised to ``edgeitems`` at each end;
    ``width``: characters one display line may take (fewer edge columns when entries are wide).
    """

    precision: int = 4
    threshold: int = 10
    edgeitems: int = 3
    width: int = DISPLAY_WIDTH
