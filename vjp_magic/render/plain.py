"""The document spelled as plain text: terminal IPython and ``repr``.

Paragraphs wrap at :data:`WRAP`; matrices keep their columns aligned, ``...`` and ``:`` where
they are summarised; code is indented four spaces, its lines those of
:func:`.codelines.fit_code`.
"""
from __future__ import annotations

import re
import textwrap

from .codelines import fit_code
from .document import (Bullets, Code, CodeBlock, Document, Formula, Math, Matrix, Paragraph,
                       Section, Span, Text)
PLAIN_GAP = 2  # spaces between two columns of a plain-text matrix

WRAP = 79


def _span(span: Span) -> str:
    if isinstance(span, Text):
        return span.text
    if isinstance(span, Math):
        return span.plain
    if isinstance(span, Code):  # one piece of code: no line breaks inside (:func:`_wrap`)
        return span.text.replace(" ", _GLUE)
    raise TypeError(f"not a span: {span!r}")


def _spans(spans) -> str:
    return "".join(_span(s) for s in spans)


_GLUE = "\ue000"  # a space no line breaks at (private use: never in the text itself)
_NUMBER_ENDS = re.compile(r" (\d[\d,]*\.)(?= |$)")
_TIMES = re.compile(r" × ")  # a shape, 3 × 8, is one piece
_CLOSING = {")": "(", "]": "[", "}": "{"}
_PROSE = re.compile(r"[^\W\d_]{2,} [^\W\d_]{2,}")  # two words: a parenthesis of prose


def _wrap(text: str, first: str = "", rest: str = "") -> str:
    """``text`` wrapped at :data:`WRAP`, at spaces outside code, brackets (an index,
    ``u[i, j-1]``), parentheses other than prose (a shape, ``(3 × 8)``) and shapes; a
    number ending a sentence ("m = 6.") stays on its line: at the start of the next it would
    read as the next numbered step. A piece longer than a line breaks at its spaces after
    all."""
    glued = _glued_groups(_TIMES.sub(f"{_GLUE}×{_GLUE}", _NUMBER_ENDS.sub(_GLUE + r"\1", text)))
    room = WRAP - max(len(first), len(rest))
    glued = " ".join(piece if len(piece) <= room else piece.replace(_GLUE, " ")
                     for piece in glued.split(" "))
    return textwrap.fill(glued, WRAP, initial_indent=first, subsequent_indent=rest,
                         break_long_words=False, break_on_hyphens=False).replace(_GLUE, " ")


def _glued_groups(text: str) -> str:
    """``text`` with the spaces inside each bracketed group glued (:data:`_GLUE`): every
    ``[…]`` and ``{…}``, a ``(…)`` but one of prose (two words in a row, :data:`_PROSE`)."""
    chars, opened = list(text), []
    for i, ch in enumerate(text):
        if ch in "([{":
            opened.append((ch, i))
        elif ch in _CLOSING and opened and opened[-1][0] == _CLOSING[ch]:
            start = opened.pop()[1]
            if ch != ")" or not _PROSE.search(text, start, i):
                chars[start:i] = [_GLUE if c == " " else c for c in chars[start:i]]
    return "".join(chars)


def matrix_lines(matrix: Matrix) -> list[str]:
    """Rows of right-aligned entries in brackets, labels at the left (and a header on top)."""
    if matrix.scalar:
        return [matrix.rows[0][0].plain]
    if not matrix.rows or not matrix.rows[0]:
        return ["[]"]
    table = [[e.plain for e in row] for row in matrix.rows]
    if matrix.col_labels is not None:
        table.insert(0, [e.plain for e in matrix.col_labels])
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))] if table else []
    side = [e.plain for e in matrix.row_labels] if matrix.row_labels is not None else None
    if side is not None and matrix.col_labels is not None:
        side.insert(0, matrix.corner.plain if matrix.corner else "")
    side_width = max(len(s) for s in side) if side else 0
    factor = f"10^{matrix.factor} × " if matrix.factor is not None else ""
    lines = []
    for i, row in enumerate(table):
        body = (" " * PLAIN_GAP).join(cell.rjust(w) for cell, w in zip(row, widths))
        header = matrix.col_labels is not None and i == 0
        prefix = (side[i].rjust(side_width) + " ") if side else ""
        lead = factor if i == (1 if matrix.col_labels is not None else 0) else " " * len(factor)
        lines.append(prefix + lead + (f" {body} " if header else f"[{body}]"))
    return [line.rstrip() for line in lines]


def formula_lines(formula: Formula) -> list[str]:
    """``lhs = matrix`` with the matrix's later rows under its first, then the caption."""
    lhs = formula.lhs.plain
    suffix = f"  {formula.suffix.plain}" if formula.suffix is not None else ""
    if formula.matrix is None:
        lines = [lhs + suffix]
    else:
        rows = matrix_lines(formula.matrix)
        lead = f"{lhs} = "
        lines = [lead + rows[0] + suffix] + [" " * len(lead) + row for row in rows[1:]]
    if formula.caption:
        lines.append(_wrap(_spans(formula.caption), "  ", "  "))
    return lines


def _block(block) -> str:
    if isinstance(block, Paragraph):
        return _wrap(_spans(block.spans))
    if isinstance(block, Bullets):
        items = []
        for n, item in enumerate(block.items, 1):
            mark = f"{n}. " if block.numbered else "- "
            items.append(_wrap(_spans(item.spans), mark, " " * len(mark)))
        return "\n".join(items)
    if isinstance(block, Formula):
        return "\n".join(formula_lines(block))
    if isinstance(block, CodeBlock):
        return textwrap.indent(fit_code(block.source), "    ")
    raise TypeError(f"not a block: {block!r}")


def _section(section: Section) -> str:
    parts = [section.title] if section.title else []
    return "\n\n".join(parts + [_block(b) for b in section.blocks])


def render(document: Document) -> str:
    """The whole document as text (blocks apart by a blank line)."""
    return "\n\n".join(_section(s) for s in document.sections if s.blocks or s.title)
