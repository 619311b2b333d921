"""``--picture``: each Jacobian's nonzero pattern drawn beneath the display (the magics show
``r.view.pictures(r)`` once the result is shown; matplotlib is imported only then)."""
from __future__ import annotations

from ..run.choose import Subject
from . import Added, Asked

flags = ("picture",)
orders = (1,)
replays_record = False


def add(result, request: Asked, subject: Subject) -> Added:
    return Added(view={"pictured": True})
