"""How wide MathJax or KaTeX sets a formula, and how tall JupyterLab sets an output: the one
calibration of typeset sizes.

Widths are counted in characters of 10 px, as the display budget is
(:data:`~.options.DISPLAY_WIDTH`), and estimated from what MathJax 3 / KaTeX set, in em (16 px
at JupyterLab's maths size): a digit is 0.5 em, a minus or plus 0.78 em, a point or comma
0.28 em, a letter about 0.55 em; a superscript or subscript marker (``^ _``) takes no room,
and a script is set at 70 % of its base's size. :func:`text_width` measures a plain spelling
(a matrix entry, a label); the layout rules built on it are ``render/matrix.py``'s (a matrix
of numbers) and ``symbolic/width.py``'s (a SymPy formula).

Heights are CSS px as JupyterLab draws a markdown output at 1024 × 768 (an output paragraph
572 px wide): a line of prose (14 px type), a paragraph's margin, a display formula's margins
and each row of its matrix, a code block's padding and each of its lines. They were fitted
(least squares) to the heights tests/clients/test_browser.py measured at 1024 × 768 for every
output of the demo notebooks and tests/clients/cells.ipynb (68 outputs: the sum is at most 22 px
short of the measured height, 21 px over on average); ``render/budget.py`` adds them up for a
document.
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
MONO_EM = 0.525  # any character of a \mathtt name (MathJax's and KaTeX's typewriter face)


def characters(em: float) -> float:
    """``em`` in counted characters."""
    return em / CHARACTER_EM


def text_width(text: str) -> float:
    """Counted characters ``text`` (a plain spelling) takes once typeset."""
    if text == "...":
        return characters(CDOTS_EM)
    return characters(sum(GLYPH_EM.get(ch, LETTER_EM) for ch in text))


def mono_width(text: str) -> float:
    """Counted characters ``text`` takes set in monospace (``\\mathtt``): every character one
    width, the ``[``, ``.`` and ``_`` of ``mlp[0].weight`` as wide as its letters."""
    return characters(MONO_EM * len(text))


COLUMN_GAP = characters(COLUMN_GAP_EM)
BRACKETS = characters(BRACKETS_EM)


# -- heights, in CSS px (see the module's note) ----------------------------------------------
CHARACTER_PX = CHARACTER_EM * 16  # a counted character of maths: 10 px
PROSE_WIDTH_PX = 572  # an output paragraph at 1024 × 768, file browser open
PROSE_CHARACTER_PX = 7.2  # a character of prose, on average (14 px sans-serif)
CODE_CHARACTER_PX = 8.4  # a character of inline code (13 px monospace, padded)
LINE_PX = 24  # a line of prose
PARAGRAPH_PX = 12  # a paragraph's margin
DISPLAY_PX = 36  # a display formula's margins
ROW_PX = 24.5  # a row of a matrix (or a line of display maths)
FRACTION_PX = 22  # a fraction's extra height on a one-row line
CODE_BLOCK_PX = 12  # a code block's padding and margin
CODE_LINE_PX = 19  # a line of a code block
OUTPUT_PX = 8  # the output area's own padding
LARGE_SCALE = 1.44  # \Large (presentation mode's result formulas) to the normal size


def prose_lines(pixels: float, width_px: float = PROSE_WIDTH_PX) -> int:
    """Lines a paragraph of ``pixels`` of text takes at ``width_px`` (at least one)."""
    return max(1, -int(-pixels // width_px))
