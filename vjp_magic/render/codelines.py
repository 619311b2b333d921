"""Code lines that fit: a code block's long lines broken between tokens, as Python allows.

JupyterLab sets output ``<pre>`` with ``word-break: break-all`` (its outputarea CSS), so a code
line wider than the output area breaks wherever the edge falls, mid-identifier
(``layer.weight.shap`` / ``e)``); nbconvert's HTML export bundles the same rule. A line no longer
than :data:`CODE_WIDTH` characters fits JupyterLab's output area at 1024 px with the file
browser open (about 60 characters of its code font fit there), so every spelling (markdown,
LaTeX, plain) shows each line of a code block at most that long where Python lets it break:
statements joined by ``;`` go on lines of their own (not after a compound statement's ``:``),
and a line inside brackets breaks, outermost brackets first, after a comma (the rest under
the bracket's first content) or after an opening parenthesis (the rest indented four
spaces). The code stays the same program; a line with nowhere to break is left as it is.
"""
from __future__ import annotations

import io
import tokenize

CODE_WIDTH = 56
# What JupyterLab's output area shows of a code line at all (572 px of 8.4 px characters): a
# line with no break within CODE_WIDTH is broken where its pieces fit this instead.
OUTPUT_WIDTH = 68
_AFTER = (tokenize.NEWLINE, tokenize.NL, tokenize.DEDENT, tokenize.ENDMARKER)  # past the line
_COMPOUND = {"for", "while", "if", "elif", "else", "with", "def", "class", "try", "except",
             "finally", "async", "match", "case"}


def fit_code(source: str, width: int = CODE_WIDTH) -> str:
    """``source`` (trailing newlines dropped) with each line longer than ``width`` broken
    between tokens where Python allows it."""
    lines: list[str] = []
    for line in source.rstrip("\n").split("\n"):
        lines += _fit_line(line, width)
    return "\n".join(lines)


def _ops(line: str) -> tuple[list[tuple[str, int, int]], bool] | None:
    """The operators of ``line`` as (text, start column, end column), and whether it opens
    a compound statement (``for …:``); None when the line is not a whole statement on its
    own (an open bracket or string, a backslash continuation)."""
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(line + "\n").readline))
    except (tokenize.TokenError, SyntaxError):
        return None
    if line.rstrip().endswith("\\") or any(t.start[0] != 1 or t.end[0] != 1 for t in tokens
                                            if t.type not in _AFTER):
        return None
    first = next((t for t in tokens if t.type == tokenize.NAME), None)
    compound = first is not None and first.string in _COMPOUND
    return [(t.string, t.start[1], t.end[1]) for t in tokens if t.type == tokenize.OP], compound


def _fit_line(line: str, width: int) -> list[str]:
    if len(line) <= width:
        return [line]
    found = _ops(line)
    if not found or not found[0]:
        return [line]
    ops, compound = found
    if compound and ops[-1][0] != ":":  # a body after the header's colon: left as it is
        return [line]
    indent = line[:len(line) - len(line.lstrip())]
    depth, cuts = 0, []
    for text, start, _ in ops:
        depth += (text in "([{") - (text in ")]}")
        if text == ";" and depth == 0 and not compound:
            cuts.append(start)
    if cuts:
        parts = [line[a + (a > 0):b] for a, b in zip([0] + cuts, cuts + [len(line)])]
        statements = [indent + p.strip() for p in parts if p.strip()]
        return [piece for s in statements for piece in _fit_line(s, width)]
    return _break_in_brackets(line, ops, width, indent)


def _break_in_brackets(line: str, ops, width: int, indent: str) -> list[str]:
    """Break ``line`` after commas or opening parentheses, outermost brackets first."""
    candidates = []  # (depth, column after the break, column of the bracket's first content)
    stack: list[int] = []
    for i, (text, _, end) in enumerate(ops):
        if text in "([{":
            stack.append(end + len(line[end:]) - len(line[end:].lstrip()))
            empty = i + 1 < len(ops) and ops[i + 1][0] in ")]}" and ops[i + 1][1] == end
            if text == "(" and not empty:
                candidates.append((len(stack), end, None))
        elif text in ")]}" and stack:
            stack.pop()
        elif text == "," and stack:
            candidates.append((len(stack), end, stack[-1]))
    pieces: list[tuple[int, int]] = []  # (start column in line, lead spaces) of each output line
    start, lead = 0, 0
    while lead + len(line[start:].rstrip()) > width:
        # within the width, else within what the output shows, else (last resort) the
        # shortest first piece: a long name's line is never left whole
        for limit in (width, max(width, OUTPUT_WIDTH), len(line)):
            fitting = [(depth, cut, content) for depth, cut, content in candidates
                       if cut > start and lead + len(line[start:cut].rstrip()) <= limit
                       and line[cut:].strip() and not line[cut:].lstrip().startswith("#")
                       and (content is None
                            or _shown(content, pieces + [(start, lead)]) <= width // 2)]
            if fitting:
                break
        if not fitting:
            break
        depth = min(f[0] for f in fitting)
        at_depth = [f for f in fitting if f[0] == depth]
        _, cut, content = at_depth[-1] if limit < len(line) else at_depth[0]
        pieces.append((start, lead))
        hanging = (lead if start else len(indent)) + 4  # four in from the line it leaves
        lead = hanging if content is None else _shown(content, pieces)
        start = cut + len(line[cut:]) - len(line[cut:].lstrip())
    pieces.append((start, lead))
    ends = [s for s, _ in pieces[1:]] + [len(line)]
    return [" " * lead_ + line[s:e].rstrip() for (s, lead_), e in zip(pieces, ends)]


def _shown(column: int, pieces: list[tuple[int, int]]) -> int:
    """Where ``column`` of the original line is shown once broken into ``pieces``."""
    start, lead = max((p for p in pieces if p[0] <= column), key=lambda p: p[0])
    return lead + column - start
