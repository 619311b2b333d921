"""Reading a magic's line: its words, and ``%jacobian``'s OUTPUT split from its INPUTs.

The options are each magic's own ``magic_arguments`` parser's business
(:mod:`vjp_magic.magics.options`); this module only splits the text around them:

- :func:`words`: the line's words, split at whitespace outside brackets and strings, so
  ``torch.clamp(x, -1, 1)`` and ``--wrt x[0, 1]`` stay one word each;
- :func:`split_at_wrt`: the expression that ``%jacobian``/``%hessian`` take after their
  options, as (output, inputs): ``y x``, ``(x**2).sum() wrt x, w``, or an expression alone
  (the inputs then come from the autograd graph).

A line that cannot be split is a :class:`~vjp_magic.core.errors.VJPUsageError` saying how
to write it.
"""
from __future__ import annotations

import ast
import io
import re
import tokenize

from ..core.errors import VJPUsageError

_SKIPPED_TOKENS = {tokenize.NEWLINE, tokenize.NL, tokenize.ENDMARKER, tokenize.INDENT,
                   tokenize.DEDENT, tokenize.COMMENT}


def word_spans(text: str, commas: bool = False) -> list[tuple[int, int]]:
    """(start, end) of each word of a one-line ``text``, split at whitespace (and commas)
    outside brackets and strings: ``f(x, -1) wrt x[0, 1]`` has three words."""
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(text).readline))
    except (tokenize.TokenError, SyntaxError):  # an unclosed bracket or string
        return [m.span() for m in re.finditer(r"[^\s,]+" if commas else r"\S+", text)]
    spans: list[list[int]] = []
    depth, joined = 0, False
    for token in tokens:
        if token.type in _SKIPPED_TOKENS or token.start[0] != 1:
            continue
        (_, start), (_, end) = token.start, token.end
        if commas and depth == 0 and token.string == ",":
            joined = False
            continue
        if spans and joined and (depth > 0 or start == spans[-1][1]):
            spans[-1][1] = end
        else:
            spans.append([start, end])
        joined = True
        if token.type == tokenize.OP:
            depth += (token.string in "([{") - (token.string in ")]}")
    return [(a, b) for a, b in spans]


def words(text: str, commas: bool = False) -> list[str]:
    """The words of ``text`` (see :func:`word_spans`)."""
    return [text[a:b] for a, b in word_spans(text, commas)]


def split_at_wrt(source: str, magic: str = "jacobian") -> tuple[str, list[str]]:
    """``%jacobian``'s expression as (the output's source, the inputs' names):

    - ``EXPRESSION wrt INPUT [INPUT ...]`` (inputs split at spaces or commas);
    - one Python expression alone (no inputs: they come from the autograd graph);
    - else ``OUTPUT [INPUT ...]``: names, the first the output.

    ``magic`` names the magic in the messages (``hessian`` reads the same way)."""
    source = source.strip()
    if not source:
        raise VJPUsageError(f"Name the output: %{magic} y x, or %{magic} (x**2).sum() wrt x.")
    spans = word_spans(source)
    found = [source[a:b] for a, b in spans]
    if "wrt" in found:
        at = spans[found.index("wrt")]
        output, inputs = source[:at[0]].strip(), words(source[at[1]:], commas=True)
        if not output or not inputs:
            raise VJPUsageError("Give the output before 'wrt' and the inputs after it, e.g. "
                                f"%{magic} (x**2).sum() wrt x")
        return output, inputs
    if _is_expression(source):
        return source, []
    return found[0], words(" ".join(found[1:]), commas=True)


def _is_expression(source: str) -> bool:
    try:
        ast.parse(source, mode="eval")
    except SyntaxError:
        return False
    return True


__all__ = ["split_at_wrt", "word_spans", "words"]
