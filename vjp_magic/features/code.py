"""``--code``: beneath the derivatives, a pointer to ``r.code`` (the careful plain-PyTorch
version of the display's backward loop)."""
from __future__ import annotations

from ..run.choose import Subject
from ..teach.code import code_section
from . import Added, Asked

flags = ("code",)
orders = (1,)
replays_record = False


def add(result, request: Asked, subject: Subject) -> Added:
    return Added(after=(code_section(result),))
