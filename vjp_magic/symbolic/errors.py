"""Why the symbolic replay stops: an op it cannot follow, a bug in a rule, or a reason to give
no formula at all. (Running out of time is :class:`~.deadline.OutOfTime`.)"""
from __future__ import annotations


class Unsupported(Exception):
    """An op (or use of a symbolic tensor) the symbolic replay cannot follow."""

    def __init__(self, op: str, why: str = "is not supported"):
        super().__init__(f"{op} {why}")
        self.op = op


class UnsupportedAttribute(Unsupported, AttributeError):
    """An unknown attribute: also an AttributeError, so ``hasattr`` keeps working."""


class RuleBug(BaseException):
    """A rule raised something other than :class:`Unsupported`: a bug in this package."""

    def __init__(self, op: str, error: BaseException):
        super().__init__(f"symbolic rule {op!r} failed: {type(error).__name__}: {error}")
        self.op = op
        self.error = error


class Unavailable(Exception):
    """Why no formula can be given (shown as one line; the numbers are shown as usual)."""
