"""The document model: what an output says, before it is spelled as markdown, LaTeX or text.

Builders (the derivatives display, explain, coaching, symbolic) return :class:`Section` s made
of these nodes; ``render/markdown.py``, ``render/latex.py`` and ``render/plain.py`` spell them.
Maths always carries two spellings, TeX and plain text, chosen once by the builder.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

from ..core.marked import Marked


# -- inline spans ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Text:
    """Prose. Plain characters only: the renderers escape what their format needs."""

    text: str


@dataclass(frozen=True)
class Math:
    """Inline maths: ``tex`` for MathJax/KaTeX/LaTeX, ``plain`` for a terminal (``∂s_i/∂x_j``)."""

    tex: str
    plain: str


@dataclass(frozen=True)
class Code:
    """Inline code (a name, a call): monospace and copyable."""

    text: str


Span = Union[Text, Math, Code]


# -- blocks ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Paragraph:
    """A paragraph that wraps; ``strong`` sets it as a short bold lead-in (a heading line)."""

    spans: tuple[Span, ...]
    strong: bool = False


@dataclass(frozen=True)
class Bullets:
    """A list of short paragraphs (numbered for steps)."""

    items: tuple[Paragraph, ...]
    numbered: bool = False


# One cell of a laid-out matrix (a number, a label or a dots marker): maths spelled both ways.
Entry = Math


@dataclass(frozen=True)
class Matrix:
    """A summarised, formatted matrix ready to spell (made by ``render/matrix.py``).

    ``rows`` are the shown rows of entries (dots markers included); ``row_labels`` /
    ``col_labels`` label them (``None``: unlabelled); ``factor`` is a common power of ten
    taken out of every entry (``-5`` reads ``10^{-5} ×``), ``None`` when there is none.
    ``scalar`` marks a 1 × 1 result written as a bare number. ``corner`` heads the row
    labels where both are labelled (a table's names, ``mlp`` above ``[0].weight``).
    """

    rows: tuple[tuple[Entry, ...], ...]
    row_labels: tuple[Entry, ...] | None = None
    col_labels: tuple[Entry, ...] | None = None
    factor: int | None = None
    scalar: bool = False
    corner: Entry | None = None


@dataclass(frozen=True)
class Formula:
    """A display formula: ``lhs = matrix`` (or just ``lhs`` when ``matrix`` is None), then
    an optional ``suffix`` (a shape, ``\\quad (5 \\times 5)``) and ``caption`` words beneath;
    ``large``: the result itself, shown first and larger (``--present``)."""

    lhs: Math
    matrix: Matrix | None = None
    suffix: Math | None = None
    caption: tuple[Span, ...] = ()
    large: bool = False  # set larger where the client can (presentation mode: markdown)


@dataclass(frozen=True)
class CodeBlock:
    """Python source in a fenced, highlighted, copyable block."""

    source: str


Block = Union[Paragraph, Bullets, Formula, CodeBlock]


@dataclass(frozen=True)
class Section:
    """A titled group of blocks (``title`` None: no heading)."""

    blocks: tuple[Block, ...]
    title: str | None = None


@dataclass(frozen=True)
class Document:
    sections: tuple[Section, ...] = field(default_factory=tuple)


# -- small helpers for builders -------------------------------------------------------------
def prose(text: str) -> tuple[Span, ...]:
    """A sentence as spans: a :class:`~vjp_magic.core.marked.Marked` one (a note, a hint,
    written with its code in backticks) as :class:`Text` and a :class:`Code` span per piece of
    code; a plain ``str`` as one :class:`Text`, never read for backticks."""
    if not isinstance(text, Marked):
        return (Text(text),)
    pieces = text.markup.split("`")
    return tuple((Code if k % 2 else Text)(piece) for k, piece in enumerate(pieces) if piece)


def paragraph(*spans: Span | str, strong: bool = False) -> Paragraph:
    """``paragraph("with respect to ", Code("a"), ".")``: strings become :class:`Text` (a
    marked sentence its text and code spans, :func:`prose`)."""
    return Paragraph(tuple(piece for s in spans
                           for piece in (prose(s) if isinstance(s, str) else (s,))), strong)
