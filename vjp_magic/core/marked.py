"""Sentences that name code: a note, a hint or a verdict written with its code in backticks.

``marked("pass `retain_graph=True` to it")`` is a :class:`Marked`: a ``str`` whose value is
the plain sentence (``"pass retain_graph=True to it"``, the backticks dropped), so it reads
as plain text wherever a string is used (``r.notes``, ``verdict.hint``, an ``AssertionError``),
and whose ``markup`` keeps the backticks, from which ``render.document.prose`` makes
:class:`~vjp_magic.render.document.Code` spans (monospace in markdown, ``\\texttt`` in LaTeX).
A plain ``str`` is never read for backticks. Code itself never holds a backtick.
"""
from __future__ import annotations


class Marked(str):
    """A sentence whose code is marked: the ``str`` is the plain text, ``markup`` the text
    with each piece of code between backticks."""

    markup: str

    def __new__(cls, markup: str) -> Marked:
        self = super().__new__(cls, markup.replace("`", ""))
        self.markup = markup
        return self

    def __reduce__(self):  # pickled and copied as what it was made from
        return (Marked, (self.markup,))


def marked(text: str) -> Marked:
    """``text`` (code between backticks) as a :class:`Marked` sentence."""
    return text if isinstance(text, Marked) else Marked(text)


def markup(text: str) -> str:
    """The backticked spelling of ``text``: a :class:`Marked` one's ``markup``, a plain
    one as it is (to put inside another marked sentence)."""
    return text.markup if isinstance(text, Marked) else text


def code(text: str) -> str:
    """``text`` as code inside a marked sentence: ```` `text` ````."""
    return f"`{text}`"


__all__ = ["Marked", "code", "marked", "markup"]
