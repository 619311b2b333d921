"""Reading a magic's line: words split outside brackets and strings, ``%jacobian``'s grammar.

``%jacobian [OPTIONS] OUTPUT [INPUT ...]`` or ``%jacobian [OPTIONS] EXPRESSION wrt INPUT ...``:
only known options before the expression are options, so ``torch.clamp(x, -1, 1)`` and
``torch.where(x > 0, x, -x)`` are read as Python. A line that cannot be read is a
:class:`~vjp_magic.core.errors.VJPUsageError` saying how to write it.
"""
from __future__ import annotations

import ast
import io
import re
import tokenize
from dataclasses import dataclass, field

from ..core.errors import VJPUsageError

_SKIPPED_TOKENS = {tokenize.NEWLINE, tokenize.NL, tokenize.ENDMARKER, tokenize.INDENT,
                   tokenize.DEDENT, tokenize.COMMENT}
_FLAGS = {"--symbolic": "symbolic", "--picture": "picture"}
_NUMBERS = {"-p": "precision", "--precision": "precision", "--threshold": "threshold"}


@dataclass
class JacobianLine:
    """``%jacobian``'s line, read: its options, the output's source and the inputs named."""

    output_source: str
    input_names: list[str] = field(default_factory=list)
    symbolic: bool = False
    picture: bool = False
    precision: int | None = None
    threshold: int | None = None


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


def parse_jacobian_line(line: str, namespace, magic: str = "jacobian") -> JacobianLine | None:
    """``%jacobian``'s line read (or ``%hessian``'s: the same grammar, named ``magic`` in
    the messages); None for ``-h``/``--help``. ``namespace`` decides whether ``-p`` is an
    option or minus the user's own ``p``."""
    spans = word_spans(line)
    all_words = [line[a:b] for a, b in spans]
    if all_words[:1] in (["-h"], ["--help"]):
        return None
    parsed, used = _options(all_words, namespace, magic)
    rest = line[spans[used][0]:].strip() if used < len(spans) else ""
    if not rest:
        raise VJPUsageError(f"Name the output: %{magic} y x, or %{magic} (x**2).sum() wrt x.")
    rest_words = all_words[used:]
    if "wrt" in rest_words:
        at = spans[used + rest_words.index("wrt")]
        parsed.output_source = line[spans[used][0]:at[0]].strip()
        parsed.input_names = words(line[at[1]:], commas=True)
        if not parsed.output_source or not parsed.input_names:
            raise VJPUsageError("Give the output before 'wrt' and the inputs after it, e.g. "
                                f"%{magic} (x**2).sum() wrt x")
    elif _is_expression(rest):
        parsed.output_source = rest
    else:
        parsed.output_source = rest_words[0]
        parsed.input_names = words(" ".join(rest_words[1:]), True)
    return checked_numbers(parsed)


def _is_expression(source: str) -> bool:
    try:
        ast.parse(source, mode="eval")
    except SyntaxError:
        return False
    return True


def _options(line_words: list[str], namespace, magic: str) -> tuple[JacobianLine, int]:
    """The known options at the start of a ``%jacobian`` line, and how many words they take."""
    parsed = JacobianLine(output_source="")
    used = 0
    while used < len(line_words):
        word = line_words[used]
        if word in _FLAGS:
            setattr(parsed, _FLAGS[word], True)
            used += 1
            continue
        flag, value = ("-p", word[2:]) if re.fullmatch(r"-p-?\d+", word) else (
            word.partition("=")[::2] if word.startswith("--") else (word, ""))
        key = _NUMBERS.get(flag)
        if key is None:
            if re.fullmatch(r"--[A-Za-z][\w-]*(=.*)?", word):
                raise VJPUsageError(f"Unknown option {flag} for %{magic}: the options are "
                                    "--symbolic, --picture, -p N (--precision N) and --threshold N, "
                                    "before "
                                    "the expression.")
            break
        if not value:
            following = line_words[used + 1] if used + 1 < len(line_words) else ""
            if re.fullmatch(r"-?\d+", following):
                value, used = following, used + 1
            elif flag == "-p" and "p" in namespace:
                break  # -p is an expression: minus the user's own p
            else:
                raise VJPUsageError(f"{flag} takes a whole number, e.g. %{magic} {flag} 3 y x.")
        try:
            setattr(parsed, key, int(value))
        except ValueError:
            raise VJPUsageError(f"{flag} takes a whole number, not {value!r}.") from None
        used += 1
    return parsed, used


def checked_numbers(args):
    """Refuse a precision or threshold that cannot be shown (``args``: any object with
    ``precision`` and ``threshold``, None where not given)."""
    if args.precision is not None and not 1 <= args.precision <= 17:
        raise VJPUsageError(f"-p/--precision is a number of significant digits from 1 to 17, "
                            f"not {args.precision}.")
    if args.threshold is not None and args.threshold < 2:
        raise VJPUsageError(f"--threshold is how many rows/columns to show in full (at least "
                            f"2), not {args.threshold}.")
    return args


__all__ = ["JacobianLine", "checked_numbers", "parse_jacobian_line", "word_spans", "words"]
