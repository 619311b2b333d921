"""Closed sets of words (a dependency's kind, how a structure is known) as enums whose members
are their words: ``Kind.BAND == "band"``, and ``str``, ``format`` and ``repr`` give the word
on every Python (3.10's ``str``-mixin enums and 3.12's differ there; ``enum.StrEnum`` is 3.11+).
"""
from __future__ import annotations

import enum


class TextEnum(str, enum.Enum):
    """A ``str`` enum that reads as its value everywhere (compare, hash, print, f-string)."""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    def __repr__(self) -> str:
        return repr(self.value)
