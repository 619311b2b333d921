"""How a result shows itself: the document (what it says) and its three spellings.

A result of either order (``VJPResult``, ``HessianResult``) holds a :class:`View` (made by
the pipeline from the features' sections and flags); the result's ``_repr_mimebundle_``,
``__repr__`` and ``code`` delegate to it. Its body is the derivatives' sections for first
derivatives (:mod:`.sections`), the second derivatives' for second ones (:mod:`.hessian`).
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass, field

from . import latex, markdown, plain
from .codegen import reproducing_code
from .document import Document, Section
from .hessian import hessian_sections
from .options import RenderOptions
from .sections import derivatives_sections


@dataclass
class View:
    """``before`` and ``after``: sections around the derivatives (the features': coaching,
    explain, code, symbolic, ...); ``jacobian``: show the full Jacobian (``%jacobian``)
    instead of the derivatives;
    ``explained``: the explanation above already says what v is (not said twice);
    ``hidden``: the derivatives are not shown (an exercise graded without ``--reveal``);
    ``pictured``: a picture of each Jacobian's pattern is asked for (``--picture``)."""

    options: RenderOptions = field(default_factory=RenderOptions)
    jacobian: bool = False
    before: tuple[Section, ...] = ()
    after: tuple[Section, ...] = ()
    explained: bool = False
    hidden: bool = False
    pictured: bool = False
    _last: tuple = field(default=(), init=False, repr=False, compare=False)  # (result ref, doc)

    def document(self, result) -> Document:
        """What ``result`` says; made once (a notebook asks again for each display and repr,
        and the findings and sensitivities read every derivative)."""
        if self._last and self._last[0]() is result:
            return self._last[1]
        document = self._build(result)
        self._last = (weakref.ref(result), document)
        return document

    def _build(self, result) -> Document:
        middle = () if self.hidden else self.body(result)
        return Document(tuple(self.before) + tuple(middle) + tuple(self.after))

    def body(self, result) -> tuple[Section, ...]:
        """The derivatives themselves, as their order shows them."""
        if result.order == 2:
            return hessian_sections(result, self.options)
        return derivatives_sections(result, self.options, self.jacobian, self.explained)

    def bundle(self, result) -> dict[str, str]:
        """``text/markdown`` (the display), ``text/latex`` (LaTeX/PDF export), ``text/plain``."""
        document = self.document(result)
        return {
            "text/markdown": markdown.render(document),
            "text/latex": latex.render(document),
            "text/plain": plain.render(document),
        }

    def plain(self, result) -> str:
        return plain.render(self.document(result))

    def pictures(self, result) -> list:
        """The pictures shown beneath the display: each input's pattern when asked for, or,
        under ``%jacobian``, when its Jacobian is too large to show in full."""
        if self.hidden or not (self.pictured or self.jacobian):
            return []
        from .picture import pictures, wants_picture  # matplotlib only when drawing

        names = [n for n, item in result.inputs.items() if not item.unused and (
            self.pictured or wants_picture(result, n, self.options))]
        return pictures(result, names) if names else []

    def picture(self, result, name: str):
        """The picture of one input's Jacobian pattern (``r.picture(name)``)."""
        from .picture import pattern_picture

        return pattern_picture(result, name)

    def code(self, result) -> str:
        """Plain PyTorch reproducing the derivatives (``r.code``)."""
        return reproducing_code(result)
