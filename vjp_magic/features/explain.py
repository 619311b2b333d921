"""``--explain``: the tutorial's steps for this cell (J, each v, vᵀJ), above the derivatives,
which then do not say again what v is."""
from __future__ import annotations

from ..run.choose import Subject
from ..teach.explain import SYMPY_NAMES
from ..teach.sparse_explain import explained_sections
from . import Added, Asked

flags = ("explain",)
orders = (1,)
replays_record = False


def add(result, request: Asked, subject: Subject) -> Added:
    token = SYMPY_NAMES.set(bool(request.flag("symbolic")))  # its plain names match SymPy's
    try:
        before = explained_sections(result, request.options, log=subject.log)
    finally:
        SYMPY_NAMES.reset(token)
    return Added(before=before, view={"explained": True})
