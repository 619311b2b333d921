"""``--code``: the few lines of plain PyTorch that compute the derivatives by hand.

As short as the tutorial's own loop; the careful version (``.grad`` saved and restored,
``inputs=[...]``; for a sparse Jacobian, its coloured passes) is ``r.code``. Both come
from :mod:`vjp_magic.render.codegen`.
"""
from __future__ import annotations

from ..render.codegen import code_derivative_names
from ..render.document import Code, Section, paragraph


def code_section(result) -> Section:
    """A sentence pointing to ``r.code``; the loop itself is already in the display. Where an
    input was computed by compressed passes, ``r.code`` is those coloured passes (never the
    one-hot loop), and the sentence says so."""
    names = list(code_derivative_names(result).values())  # as r.code binds them
    coloured = [n for n, item in result.inputs.items() if getattr(item, "sparse", None)]
    what = "these coloured passes" if coloured else "this code"
    spans: list = [f"The careful version of {what}, which keeps each input's ",
                   Code(".grad"), " as it was and defines "]
    for k, name in enumerate(names):
        if k:
            spans.append(" and " if k == len(names) - 1 else ", ")
        spans.append(Code(name))
    if coloured:
        spans.append(" (a sparse tensor decompressed from them)" if len(coloured) == 1 else
                     " (sparse where coloured)")
    spans += [", is ", Code("r.code"), " (", Code("print(_.code)"), " right after this cell)."]
    return Section((paragraph(*spans),))
