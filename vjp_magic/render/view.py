"""How a result shows itself: the document (what it says) and its three spellings.

A result of either order (``VJPResult``, ``HessianResult``) holds a :class:`View` (made by
the pipeline from the features' sections and flags); the result's ``_repr_mimebundle_``,
``__repr__`` and ``code`` delegate to it. Its body is the derivatives' sections for first
derivatives (:mod:`.sections`), the second derivatives' for second ones (:mod:`.hessian`).
In presentation mode (``present``) the derivatives' formulas come first, larger, and the rest
(the headline, v, the loop, the shapes) beneath them.
"""
from __future__ import annotations

import functools
import weakref
from dataclasses import dataclass, field, replace

from ..core.quiet import no_subclass_code
from ..core.validation import spelled_for
from . import latex, markdown, notation, plain
from .budget import fitted, least, spent
from .codegen import identifiers, naming, output_symbol, reproducing_code
from .document import Document, Formula, Paragraph, Section, Text
from .hessian import hessian_formulas, hessian_sections
from .matrix import cut_digits
from .options import RenderOptions
from .parameters import (largest_tensors, parameter_sections, shown_tensors, tensor_formulas,
                         wants_table)
from .sections import (derivative_formulas, derivatives_sections, jacobian_formula, shapes,
                       shown_inputs)
from .typeset import LARGE_SCALE
from .sparse import sparse_of, value_formulas


def _as_its_own(method):
    """``method(self, result, ...)`` reading ``result`` as it was made: its inputs spelled
    as their own modules spelled them (another module may have taken the name since:
    ``validation.spelled_for``), and no tensor subclass's ``__torch_function__`` (the
    user's code) run by a read of an input (``core.quiet.no_subclass_code``)."""
    @functools.wraps(method)
    def read(self, result, *args, **kwargs):
        with no_subclass_code(), spelled_for({name: item.tensor
                                              for name, item in result.inputs.items()}):
            return method(self, result, *args, **kwargs)
    return read


@dataclass
class View:
    """``before`` and ``after``: sections around the derivatives (the features': coaching,
    explain, code, symbolic, ...); ``jacobian``: show the full Jacobian (``%jacobian``)
    instead of the derivatives;
    ``explained``: the explanation above already says what v is (not said twice);
    ``coached``: the coaching above shows the corrected loop of backward calls, v in it (the
    body does not say v and its loop again);
    ``hidden``: the derivatives are not shown (an exercise graded without ``--reveal``);
    ``pictured``: a picture of each Jacobian's pattern is asked for (``--picture``);
    ``present``: presentation mode, the derivatives' formulas first and larger (``--present``);
    ``names``: the names the user's namespace binds (an expression output is named apart);
    ``applied``: the notebook's one-letter function the output applies (``y = f(x)``), the
    maths' letter for the map (:func:`vjp_magic.features.names.applied_letter`);
    ``freed``: lines the code beneath starts with where the cell's own backward freed the
    output's graph (the output computed again, or what to do); ``sparse_grads``: the inputs
    whose ``.grad`` autograd hands sparse, as the graph said (the code reads them densely);
    ``filled``: the inputs whose ``.grad`` a backward fills, None where it fills another
    tensor's too or the graph was not read (the code names its ``inputs=[...]``).
    Exam mode (``VJPMagics.exam``) is ``hidden`` with only the verdict's sections around."""

    options: RenderOptions = field(default_factory=RenderOptions)
    jacobian: bool = False
    before: tuple[Section, ...] = ()
    after: tuple[Section, ...] = ()
    explained: bool = False
    coached: bool = False
    hidden: bool = False
    pictured: bool = False
    present: bool = False
    names: frozenset = frozenset()  # the namespace's names: an expression output avoids them
    applied: str | None = None  # the notebook's one-letter function the output applies (f)
    freed: tuple[str, ...] = ()  # lines first in the code beneath: the cell's backward freed it
    sparse_grads: frozenset = frozenset()  # inputs autograd hands a sparse .grad (codegen)
    one_function: frozenset = frozenset()  # inputs whose points the graph proves one f
    filled: frozenset | None = None  # inputs whose .grad a backward fills (None: others too)
    _last: tuple = field(default=(), init=False, repr=False, compare=False)  # (result ref, doc)

    @_as_its_own
    def document(self, result) -> Document:
        """What ``result`` says; made once (a notebook asks again for each display and repr,
        and the findings and sensitivities read every derivative)."""
        if self._last and self._last[0]() is result:
            return self._last[1]
        with self.naming(result), notation.stand_ins(  # (a long name on a formula: a letter)
                [output_symbol(result), *result.inputs], result.order):
            document = self._build(result)  # (no letter of the maths names a tensor shown)
        self._last = (weakref.ref(result), document)
        return document

    def naming(self, result):
        """The context every text of ``result`` is built in: the namespace's names and the
        result's own taken, so the output is named as the display names it everywhere."""
        return naming(self.names | identifiers([result.output_name, *result.inputs]),
                      self.applied)

    def _build(self, result) -> Document:
        if self.hidden:
            return Document(tuple(self.before) + tuple(self.after))
        if self.present:
            return self._presented(result)
        return Document(tuple(self.before) + tuple(self.body(result)) + tuple(self.after))

    def _presented(self, result) -> Document:
        """The derivatives' formulas first, larger; beneath them the rest of the body (the
        headline, v, the loop, the notes, then the shapes line), then the features' sections
        (what is said before the derivatives, then after) as usual. Fitted to one screen as
        any output is (:mod:`.budget`, the large formulas counted larger), their matrices
        laid out for the larger type (a width :data:`.typeset.LARGE_SCALE` times narrower)."""
        def arrange(options):
            shown = self.result_formulas(result, options)
            rest, shapes_line = [], []
            for section in self._sections(result, options):
                blocks = tuple(b for b in section.blocks if b not in shown)
                if blocks == (shapes(result),):  # "From x (3) to y (2 × 3)": after the headline
                    shapes_line.append(section)
                elif blocks or section.title:
                    rest.append(replace(section, blocks=blocks))
            lead = (Section(tuple(replace(f, large=True) if isinstance(f, Formula) else f
                                  for f in shown)),) if shown else ()  # "⋮ 2 more" as it is
            return with_digits_note(notation.introduced(lead + tuple(rest + shapes_line)),
                                    options)

        options = replace(self.options, width=max(1, int(self.options.width / LARGE_SCALE)))
        around = tuple(self.before) + tuple(self.after)
        body = fitted(arrange, options, spent(around, options))
        return Document(body + around)

    def result_formulas(self, result, options=None) -> list[Formula]:
        """The formulas that show the derivatives themselves (not v, the structure in index
        notation or a summary): each input's, in the body's order (with the line that counts
        the components left out between them, a Paragraph); built with ``options`` (default:
        the view's)."""
        options = self.options if options is None else options
        used = [n for n, item in result.inputs.items() if not item.unused]
        if result.order == 2:
            return [f for n in used if not result.inputs[n].constant
                    and n in shown_inputs(result, options)
                    for f in hessian_formulas(result, n, options)]
        if self.jacobian:
            return [jacobian_formula(result, n, options) for n in result.inputs]
        if wants_table(result, options):  # the table's matrices, as its display builds them
            return [f for n in shown_tensors(result, options)
                    for f in tensor_formulas(result, n, options)]
        used = [n for n in used if n in shown_inputs(result, options)]
        return [f for n in used for f in (value_formulas if sparse_of(result, n) is not None
                                          else derivative_formulas)(result, n, options)]

    def _sections(self, result, options) -> tuple[Section, ...]:
        """The body's sections at ``options`` (one level of the height budget)."""
        if result.order == 2:
            return hessian_sections(result, options)
        if not self.jacobian and wants_table(result, options):  # many inputs: a table
            return parameter_sections(result, options)
        return derivatives_sections(result, options, self.jacobian, self.explained,
                                    self.freed, coached=self.coached)

    def body(self, result) -> tuple[Section, ...]:
        """The derivatives themselves, as their order shows them, fitted to one screen with
        what the features say around them (:mod:`.budget`)."""
        def build(options):
            return with_digits_note(notation.introduced(self._sections(result, options)),
                                    options)

        options, share = self.options, 1.0  # every output fits one screen (DESIGN)
        if self.explained:  # --explain may take two screens, the derivatives at least half one
            options, share = replace(options, height=2 * options.height), 0.75
        return fitted(build, options, spent(self.before + self.after, options, share))

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

    @_as_its_own
    def pictures(self, result) -> list:
        """The pictures shown beneath the display: each input's pattern when asked for, or,
        under ``%jacobian``, when its Jacobian is too large to show in full."""
        if self.hidden or not (self.pictured or self.jacobian):
            return []
        from .picture import pictures, wants_picture  # matplotlib only when drawing

        names = [n for n, item in result.inputs.items() if not item.unused and (
            self.pictured or wants_picture(result, n, self.options))]
        with self.naming(result):  # the captions name the output as the display does
            if names and wants_table(result, self.options):  # a module's: the few that matter
                return _few_pictures(result, names, pictures)
            return pictures(result, names) if names else []

    @_as_its_own
    def picture(self, result, name: str):
        """The picture of one input's Jacobian pattern (``r.picture(name)``)."""
        from .picture import pattern_picture

        with self.naming(result):
            return pattern_picture(result, name)

    @_as_its_own
    def code(self, result) -> str:
        """Plain PyTorch reproducing the derivatives (``r.code``)."""
        with naming(self.names, self.applied):
            return reproducing_code(result, first=self.freed)


def least_height(result, options: RenderOptions, jacobian: bool = False) -> float:
    """The least height the derivatives of ``result`` take beneath the sections a feature
    adds (``jacobian``: as ``%jacobian`` shows them): a feature fits its own in the rest."""
    view = View(options, jacobian)
    with notation.stand_ins([output_symbol(result), *result.inputs], result.order):
        return least(lambda fit_options: notation.introduced(view._sections(result, fit_options)),
                     options)


def _few_pictures(result, names: list[str], draw) -> list:
    """The pictures of the :data:`~.parameters.MATRICES` tensors with the largest derivatives
    (as the table shows their matrices), then one line for the rest: within one screen however
    many tensors there are."""
    from .picture import Picture

    few = [n for n in largest_tensors(result) if n in names] or names[:1]
    rest = [n for n in names if n not in few]
    if not rest:
        return draw(result, few)
    spelled = ", ".join(notation.spelled(n) for n in few)
    note = (f"Pictured: the {len(few)} tensors with the largest derivatives ({spelled}); "
            f"the other {len(rest)}: r.picture(name), e.g. r.picture({rest[0]!r}) for "
            f"{notation.spelled(rest[0])}.")
    return [*draw(result, few), Picture(None, note)]


def with_digits_note(sections, options) -> tuple[Section, ...]:
    """``sections`` and, where the width cut the digits of a matrix below a precision the
    user set (``-p``, ``%config``: not the default), a sentence saying how many are shown
    of how many asked and where the rest are (:func:`.matrix.cut_digits`, read from the
    layout plan of this build)."""
    sections = tuple(sections)
    cut = cut_digits(options)
    if cut is None or options.precision == RenderOptions.precision:
        return sections
    shown, asked, whole = cut
    capped = f" (-p {options.precision}, capped by what the dtype resolves)" \
        if options.precision > asked else ""
    where = f"--full-matrix shows all {asked}" if whole else \
        "the tensors themselves hold every digit (r.derivatives)"
    return sections + (Section((Paragraph((Text(
        f"Entries are shown to {shown} significant digits of the {asked} asked{capped}, "
        f"to fit the width: {where}."),)),)),)

