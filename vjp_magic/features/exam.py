"""Exam mode (``%config VJPMagics.exam = True``): a cell shows the verdict of ``--check`` and
nothing that would give the answer away.

While it is on, only the features that say ``in_exam = True`` run (grading and this one,
:func:`~vjp_magic.features.gather`): no derivatives, no coaching with its corrected code, no
``--explain``, ``--code``, ``--symbolic``, ``--gradcheck`` or ``--picture``, and ``--reveal``
reveals nothing. Beneath the verdict (or alone, in a cell without ``--check``) one sentence
says that the derivatives are hidden, which flags were left off, and how to turn it off. A
display mode, not a lock: ``r.derivatives`` still holds the numbers. Where the cell's own
``backward`` stopped it, PyTorch's error is shown above, as a plain cell shows it (the
coaching's why and corrected code are not).
"""
from __future__ import annotations

from ..core.marked import code, marked
from ..render.document import Code, Section, paragraph
from ..run.choose import Subject
from . import Added, Asked

flags = ("exam",)
orders = (1, 2)
replays_record = False
in_exam = True
# the flags that would show derivatives or code: off in an exam
SHOWING = ("reveal", "explain", "code", "symbolic", "gradcheck", "picture")
TURN_OFF = "%config VJPMagics.exam = False"


def add(result, request: Asked, subject: Subject) -> Added:
    off = [f"--{name}" for name in SHOWING if request.flag(name)]
    left = (f" ({', '.join(code(f) for f in off)} {'is' if len(off) == 1 else 'are'} off.)"
            if off else "")
    if request.flag("check"):
        said = f"Exam mode: the derivatives are hidden.{left}"
    elif request.order == 2:  # %hessian: --check grades first derivatives only
        said = (f"Exam mode hides the derivatives. Second derivatives are not graded (a "
                f"{code('%%vjp --check NAME')} cell grades first derivatives only); "
                f"{code(TURN_OFF)} shows them again.{left}")
    elif request.jacobian:  # %jacobian: no --check of its own
        said = (f"Exam mode hides the derivatives: a {code('%%vjp --check NAME')} cell grades "
                f"the answer in NAME. {code(TURN_OFF)} shows them again.{left}")
    else:
        said = (f"Exam mode hides the derivatives: {code('--check NAME')} grades the answer in "
                f"NAME. {code(TURN_OFF)} shows them again.{left}")
    return Added(before=_stopped(subject), after=(Section((paragraph(marked(said)),)),),
                 view={"hidden": True})


def _stopped(subject: Subject) -> tuple[Section, ...]:
    """The error that stopped the cell at its own ``backward``, PyTorch's words, if one did."""
    mistake = getattr(getattr(subject, "log", None), "mistake", None)
    if mistake is None:
        return ()
    line = mistake.line
    text = mistake.source_line(line)
    where = [f"The cell stopped at line {line} (", Code(text.strip()), "): "] \
        if line is not None and text else ["The cell stopped: "]
    return (Section((paragraph(*where, mistake.message(), strong=True),)),)
