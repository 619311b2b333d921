"""How wide MathJax or KaTeX sets a formula: the one calibration of typeset width.

Widths are counted in characters of 10 px, as the display budget is
(:data:`~.options.DISPLAY_WIDTH`), and estimated from what MathJax 3 / KaTeX set, in em (16 px
at JupyterLab's maths size): a digit is 0.5 em, a minus or plus 0.78 em, a point or comma
0.28 em, a letter about 0.55 em; a superscript or subscript marker (``^ _``) takes no room,
and a script is set at 70 % of its base's size. :func:`text_width` measures a plain spelling
(a matrix entry, a label); the layout rules built on it are ``render/matrix.py``'s (a matrix
of numbers) and ``symbolic/width.py``'s (a SymPy formula).
"""
from __future__ import annotations

CHARACTER_EM = 0.625  # one counted character: 10 px at 16 px per em
LETTER_EM = 0.55  # any glyph not in GLYPH_EM
GLYPH_EM = {**dict.fromkeys("0123456789", 0.5), "-": 0.78, "+": 0.78, "×": 0.78, "=": 0.78,
            ".": 0.28, ",": 0.28, ":": 0.28, "'": 0.3, "(": 0.39, ")": 0.39, "[": 0.28,
            "]": 0.28, "^": 0.0, "_": 0.0, " ": 0.28}
CDOTS_EM = 1.2  # \cdots
COLUMN_GAP_EM = 1.0  # bmatrix's space between two columns
BRACKETS_EM = 0.9375  # a matrix's [ and ], together
SCRIPT_SCALE = 0.7  # an exponent or subscript, to its base's size


def characters(em: float) -> float:
    """``em`` in counted characters."""
    return em / CHARACTER_EM


def text_width(text: str) -> float:
    """Counted characters ``text`` (a plain spelling) takes once typeset."""
    if text == "...":
        return characters(CDOTS_EM)
    return characters(sum(GLYPH_EM.get(ch, LETTER_EM) for ch in text))


COLUMN_GAP = characters(COLUMN_GAP_EM)
BRACKETS = characters(BRACKETS_EM)
