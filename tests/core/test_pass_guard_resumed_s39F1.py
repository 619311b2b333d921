"""A generator closed at a free during a pass is the interpreter's doing, not a hook (s39 F1).

Found while testing G28-1: a generator the guard stopped in an earlier pass (a contextlib
wrapper around a hook) was collected during a later pass; its close resumed its frame, the
guard raised inside the finaliser, and Python dropped the profiler with the error: the later
pass ran unguarded and called the user's hook. A frame resumed (standing at a ``yield``) is
never one the engine calls; a fresh start still is, and stays refused.
"""
from __future__ import annotations

import sys

from vjp_magic.core.pass_guard import resumed


def _gen():
    try:
        yield 1
        yield 2
    finally:
        pass


def _events(drive, code=_gen.__code__) -> list:
    """``resumed`` at each call event of ``code``'s frames (``_gen``'s) while ``drive`` runs."""
    seen = []

    def profiler(frame, event, arg):
        if event == "call" and frame.f_code is code:
            seen.append(resumed(frame, frame.f_code))

    previous = sys.getprofile()
    sys.setprofile(profiler)
    try:
        drive()
    finally:
        sys.setprofile(previous)
    return seen


def test_a_started_generator_is_not_resumed_and_its_close_is():
    g = _gen()
    assert _events(lambda: (next(g), next(g), g.close())) == [False, True, True]


def test_a_generator_collected_mid_way_is_resumed():
    g = _gen()
    next(g)

    def drop():
        nonlocal g
        g = None  # its close runs now, at the free

    assert _events(drop) == [True]


def test_a_plain_function_is_never_resumed():
    def hook(grad):
        return grad

    assert _events(lambda: hook(1), hook.__code__) == [False]
