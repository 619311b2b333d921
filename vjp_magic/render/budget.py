"""The height budget: how tall an output is, estimated in the document model, and how much of
it is shown so that it fits one screen (``RenderOptions.height``: 1024 × 768 with JupyterLab's
file browser open).

:func:`fitted` builds an output's body at the first :data:`LEVELS` whose estimated height
(:func:`height`, the calibration of ``render/typeset.py``) fits what the sections around it
leave: fewer rows at each edge of a summarised matrix, then the first and last inputs only
(and any a finding blames, ``--gradcheck``'s or ``--check``'s: never cut; the rest named,
each in ``r.derivatives[name]``), one row at each edge, no v_0 or index
formula, no table of sensitivities (named as left out), the first and last components only
(the rest counted); as last resorts, the first input only, then the first component only,
then v and the loop of backward calls (pointed to in ``r.code``: the loop is the tutorial's
lesson, so it goes last).
``--full-matrix`` shows everything (the output may be taller). Each level builds twice where
its matrices disagree: once to note each matrix's own layout, once to lay out every matrix of
a shape alike (:class:`.matrix.Plan`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from .codelines import fit_code
from .document import Bullets, Code, CodeBlock, Formula, Math, Paragraph, Section, Text
from .matrix import Plan
from .typeset import (CHARACTER_PX, CODE_BLOCK_PX, CODE_CHARACTER_PX, CODE_LINE_PX,
                      DISPLAY_PX, FRACTION_PX, LARGE_SCALE, LINE_PX, OUTPUT_PX, PARAGRAPH_PX,
                      PROSE_CHARACTER_PX, ROW_PX, prose_lines, text_width)

SHOWN_COMPONENTS = 3  # matrices shown when each component is a matrix (else first, ⋮, last)


@dataclass(frozen=True)
class Fit:
    """How much of one output is shown: ``rows`` at each edge of a summarised matrix at most
    (None: ``edgeitems``); the ``inputs`` whose derivatives are shown (2: the first and the
    last, 1: the first; None: all); ``components``: matrices shown per input when each
    component is a matrix (3: all of 3, else first, ⋮, last; 1: the first, the rest
    counted); ``extras``: v_0 and the index formula; ``sensitivity``: the table of
    sensitivities (a finding, so it goes after the teaching extras); ``loop``: v in words
    and the loop of backward calls (else one line pointing to ``r.code``); ``plan``: the output's
    layout plan."""

    rows: int | None = None
    inputs: int | None = None
    components: int = SHOWN_COMPONENTS
    extras: bool = True
    sensitivity: bool = True
    loop: bool = True
    plan: Plan | None = field(default=None, compare=False)
    memo: dict | None = field(default=None, compare=False)  # what every level computes alike


LEVELS = (
    Fit(),
    Fit(rows=2),
    Fit(rows=2, inputs=2),
    Fit(rows=1, inputs=2),
    Fit(rows=1, inputs=2, extras=False),
    Fit(rows=1, inputs=2, extras=False, sensitivity=False),
    Fit(rows=1, inputs=2, components=2, extras=False, sensitivity=False),
    Fit(rows=1, inputs=1, components=2, extras=False, sensitivity=False),  # the last resorts
    Fit(rows=1, inputs=1, components=1, extras=False, sensitivity=False),
    Fit(rows=1, inputs=1, components=1, extras=False, sensitivity=False, loop=False),
)


def fit_of(options) -> Fit:
    """The options' :class:`Fit` (everything shown when none is set)."""
    fit = getattr(options, "fit", None)
    return fit if isinstance(fit, Fit) else LEVELS[0]


def fitted(build, options, spent: float = 0.0) -> tuple[Section, ...]:
    """``build(options)``'s sections at the first level that fits ``options.height`` less
    ``spent`` (px the sections around them take), else at the last level."""
    levels = LEVELS[:1] if options.full_matrix else LEVELS
    sections: tuple[Section, ...] = ()
    memo: dict = {}
    for k, level in enumerate(levels):
        plan = Plan()
        fit_options = replace(options, fit=replace(level, plan=plan, memo=memo))
        sections = tuple(build(fit_options))
        last = k == len(levels) - 1
        if not last and height(sections) + spent > options.height:
            continue
        if plan.differs:  # lay out every matrix of a shape alike
            plan.collecting = False
            sections = tuple(build(fit_options))
        if last or height(sections) + spent <= options.height:
            break
    return sections


def least(build, options) -> float:
    """The height of ``build(options)``'s sections at the level :func:`fitted` ends at: the
    least they take (what the sections around them may take is the rest of the budget)."""
    level = LEVELS[0] if options.full_matrix else LEVELS[-1]
    return height(build(replace(options, fit=replace(level, plan=Plan(), memo={}))))


def remembered(options, key, compute):
    """``compute()``, computed once while :func:`fitted` tries its levels (the options'
    memo; every time without one)."""
    fit = getattr(options, "fit", None)
    memo = fit.memo if isinstance(fit, Fit) else None
    if memo is None:
        return compute()
    if key not in memo:
        memo[key] = compute()
    return memo[key]


def spent(sections, options, share: float = 0.5) -> float:
    """What the features' sections around the derivatives take of the height budget: their
    height, at most ``share`` of it (the derivatives keep the rest; --explain, --code or a
    long coaching may make the output taller than one screen). The output area's own padding
    is counted once, in the derivatives' height, not again here."""
    taken = height(sections) - OUTPUT_PX if sections else 0.0
    return min(taken, options.height * share)


# -- heights -------------------------------------------------------------------------------
def _span_px(span) -> float:
    if isinstance(span, Text):
        return len(span.text) * PROSE_CHARACTER_PX
    if isinstance(span, Code):
        return len(span.text) * CODE_CHARACTER_PX
    if isinstance(span, Math):
        return text_width(span.plain) * CHARACTER_PX
    return 0.0


def paragraph_height(spans) -> float:
    """A paragraph's margin and its lines at 572 px."""
    return PARAGRAPH_PX + LINE_PX * prose_lines(sum(_span_px(s) for s in spans))


_TEX_TOKEN = re.compile(r"\\\\|\\begin\{[^}]*\}|\\end\{[^}]*\}|(?<!\\)&")
_FRACTION = re.compile(r"\\[dt]?frac(?![a-z])")


def tex_height(tex: str) -> float:
    """CSS px of one line of display TeX: a row per line, each a fraction's extra height
    taller where it holds one; an environment (a matrix, cases, aligned, array) as tall as
    its rows, each row as tall as its tallest cell, nested environments alike."""
    stack: list = [[[[]]]]  # open environments, each its rows of cells of pieces
    at = 0
    for match in _TEX_TOKEN.finditer(tex):
        stack[-1][-1][-1].append(tex[at:match.start()])
        at, token = match.end(), match.group()
        if token == "\\\\":
            stack[-1].append([[]])
        elif token == "&":
            stack[-1][-1].append([])
        elif token.startswith("\\begin"):
            stack.append([[[]]])
        elif len(stack) > 1:  # \end{...}: the environment is a piece of the cell around it
            inner = stack.pop()
            stack[-1][-1][-1].append(_rows_px(inner))
    stack[-1][-1][-1].append(tex[at:])
    while len(stack) > 1:  # an environment left open: its rows count all the same
        inner = stack.pop()
        stack[-1][-1][-1].append(_rows_px(inner))
    return _rows_px(stack[0])


def _rows_px(rows) -> float:
    """Rows of cells: each row as tall as its tallest cell (a trailing empty row is none)."""
    if len(rows) > 1 and all(not "".join(p for p in cell if isinstance(p, str)).strip()
                             and not any(isinstance(p, float) for p in cell)
                             for cell in rows[-1]):
        rows = rows[:-1]
    return sum(max(_cell_px(cell) for cell in row) for row in rows)


def _cell_px(cell) -> float:
    text = "".join(p for p in cell if isinstance(p, str))
    line = ROW_PX + (FRACTION_PX if _FRACTION.search(text) else 0.0)
    return max([line, *(p for p in cell if isinstance(p, float))])


def formula_height(formula: Formula) -> float:
    """A display formula: its margins, a row per matrix row (a header row too), a fraction's
    extra height on a one-row line, or its TeX's rows (:func:`tex_height`: a symbolic
    matrix, cases, a sum broken over lines) where they are taller, then its caption."""
    matrix = formula.matrix
    rows = 1
    if matrix is not None and not matrix.scalar:
        rows = len(matrix.rows) + (matrix.col_labels is not None)
    px = ROW_PX * rows
    if rows <= 2 and _FRACTION.search(formula.lhs.tex):
        px += FRACTION_PX
    px = max(px, tex_height(formula.lhs.tex))
    px = DISPLAY_PX + px * (LARGE_SCALE if formula.large else 1.0)
    return px + (paragraph_height(formula.caption) if formula.caption else 0.0)


def block_height(block) -> float:
    """Estimated CSS px of one block as JupyterLab draws it at 1024 × 768."""
    if isinstance(block, Paragraph):
        return paragraph_height(block.spans)
    if isinstance(block, Bullets):
        return sum(paragraph_height(item.spans) for item in block.items)
    if isinstance(block, Formula):
        return formula_height(block)
    if isinstance(block, CodeBlock):
        return CODE_BLOCK_PX + CODE_LINE_PX * (fit_code(block.source).count("\n") + 1)
    return 0.0


def height(sections) -> float:
    """Estimated CSS px of an output made of ``sections`` (titles a line each)."""
    px = OUTPUT_PX
    for section in sections:
        if section.title:
            px += paragraph_height((Text(section.title),))
        px += sum(block_height(b) for b in section.blocks)
    return px
