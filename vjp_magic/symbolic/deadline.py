"""The symbolic stage's time budget: a context manager that makes ops raise :class:`OutOfTime`.

SymPy can take arbitrarily long on a large expression; every rule calls :func:`spend` between
ops (and before work it can size), and in the main thread a real-time timer (SIGALRM) also
interrupts one long SymPy call in the middle.
"""
from __future__ import annotations

import math
import signal
import threading
import time


class OutOfTime(BaseException):
    """The replay's time budget is spent (a BaseException: a cell's ``except`` won't hide it)."""


_SECONDS_PER_TERM = 2e-5  # a rough cost of one SymPy operation, to refuse hopeless ops early
_deadline: list[float] = [math.inf]


class deadline:
    """Context manager: ops raise :class:`OutOfTime` once ``seconds`` have passed.

    In the main thread (where Python runs signal handlers) a real-time timer also interrupts
    a long SymPy call in the middle; any handler or timer set before is put back on exit.
    Elsewhere, or when a timer is already running, the budget is checked between ops only.
    """

    def __init__(self, seconds: float):
        self.seconds = seconds
        self._armed = False
        self._installed = False
        self._previous = None
        self._saved = math.inf

    def _alarm(self, signum, frame):
        if self._armed:
            self._armed = False
            raise OutOfTime

    def __enter__(self):
        self._saved = _deadline[0]
        _deadline[0] = time.monotonic() + self.seconds
        self._installed = False
        if hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread():
            try:
                if signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0):
                    self._previous = signal.signal(signal.SIGALRM, self._alarm)
                    self._installed = self._armed = True
                    signal.setitimer(signal.ITIMER_REAL, max(self.seconds, 1e-3))
            except (ValueError, OSError):  # not allowed here: check between ops only
                self._armed = False
        return self

    def __exit__(self, *exc):
        self._armed = False  # a late alarm does nothing from here on
        if self._installed:
            self._installed = False
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM,
                          signal.SIG_DFL if self._previous is None else self._previous)
        _deadline[0] = self._saved
        return False


def ends_at() -> float:
    """When the current budget runs out (``time.monotonic()`` scale; inf outside a deadline)."""
    return _deadline[0]


def spend(terms: int = 0) -> None:
    """Raise :class:`OutOfTime` if the budget is spent or ``terms`` operations cannot fit."""
    left = _deadline[0] - time.monotonic()
    if left <= 0 or terms * _SECONDS_PER_TERM > left:
        raise OutOfTime
