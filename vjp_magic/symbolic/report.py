"""``--symbolic``: derive formulas with SymPy, crosscheck them against autograd, report.

:func:`derive` replays the record of the cell's one run (:mod:`.replay`) with each input
replaced by a tensor of SymPy symbols, differentiates the output once or twice, as the result
holds first or second derivatives (:mod:`.formulas`), evaluates each formula at every point in
float64 and compares it with autograd's numbers (:mod:`.crosscheck`), and prepares the display
(:mod:`.display`). Nothing of the user's code runs again, and nothing here fails the cell:
what cannot be followed becomes one line.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace

from ..render.document import Section
from ..render.options import RenderOptions
from ..run.cuts import find_cuts
from ..run.refusals import NoRecord, NotReplayable, refuse_record
from .deadline import OutOfTime, deadline
from .display import cut_note_sections, note_sections, symbolic_sections
from .errors import RuleBug, Unavailable
from .formulas import SymbolicDerivative, function_at_a_point, symbolic_derivative
from .layout import point_axes
from .replay import SymbolicReplay
from .symbols import group_symbols

RUN_SECONDS = 5.0  # for the replay, and again for differentiating and checking
MAX_ENTRIES = 4096  # input entries (all inputs together) a replay makes symbols for


@dataclass(frozen=True)
class SymbolicReport:
    """What ``--symbolic`` found.

    ``formulas[name]``: the derivative (first or second) with respect to each input as SymPy
    (an expression or a Matrix laid out like one point's derivatives; for second derivatives
    with several components a tuple of them), or None for every input when there is no
    formula; ``crosscheck[name]``: whether it agrees with autograd at every point (empty when
    there is no formula); ``note``: why there is none; ``function``: f at a generic point
    (None where f differs from point to point); ``details``: each input's
    :class:`~.formulas.SymbolicDerivative`.
    """

    formulas: dict = field(default_factory=dict)
    crosscheck: dict = field(default_factory=dict)
    note: str | None = None
    function: object = None
    details: dict[str, SymbolicDerivative] = field(default_factory=dict)
    shown: tuple[Section, ...] = field(default=(), repr=False)

    def sections(self) -> tuple[Section, ...]:
        """The display: above the numeric derivatives."""
        return self.shown


def derive(result, *, record, namespace, output_source: str | None = None,
           jacobian: bool = False, index_base: int = 1,
           options: RenderOptions | None = None) -> SymbolicReport:
    """Formulas for ``result``'s derivatives, crosschecked against its numbers.

    ``result``: a :class:`~vjp_magic.core.result.VJPResult` (first derivatives) or a
    :class:`~vjp_magic.core.hessian.HessianResult` (second derivatives: SymPy differentiates
    twice by one point's variables). ``record`` (an :class:`~vjp_magic.run.record.OpRecord`)
    holds the torch calls of the cell's one run (``%%vjp``, ``output_source`` None), or of
    evaluating the expression ``output_source`` (``%jacobian``, ``%hessian``); it is replayed,
    never the user's code, and released afterwards. ``namespace`` names tensors in the
    messages. ``jacobian``: the display shows the full Jacobian (``%jacobian``), so the
    formula is the Jacobian too. ``index_base``: where the entries' symbols count from
    (1: ``x_{1,1}``, as the tutorial and the numeric display's maths do; 0: ``x_{0,0}``).
    ``options``: the display's :class:`~vjp_magic.render.options.RenderOptions` (its width,
    its height budget, its ``index_base``, which then wins); None: the default width and no
    height budget.
    """
    if options is not None:
        index_base = options.index_base
    symbol_tex: dict = {}
    cuts = find_cuts(record, {n: i.tensor for n, i in result.inputs.items()}, result.output)
    report = _reported(
        result, record,
        lambda: _derive(result, record, namespace, output_source, jacobian, symbol_tex,
                        index_base),
        lambda function, formulas: symbolic_sections(
            result, function, formulas, symbol_tex, jacobian,
            options or RenderOptions(index_base=index_base), fit=options is not None))
    if not cuts or report.note is not None:
        return report
    return replace(report, shown=cut_note_sections(cuts) + report.shown)


def _reported(result, record, derived, typeset) -> SymbolicReport:
    """The report of ``derived()`` → (f or None, formulas) typeset by ``typeset(f, formulas)``;
    a reason instead where either cannot be done. The record is released either way."""
    try:
        function, formulas = derived()
    except Unavailable as reason:
        return _unavailable(result, f"symbolic: {reason}; numbers only")
    except (Exception, RuleBug, OutOfTime) as error:  # noqa: BLE001 - a bug here, not the cell's
        return _unavailable(result, f"symbolic: the replay failed unexpectedly "
                            f"({_describe(error)}); numbers only")
    finally:
        if record is not None:
            record.release()
    try:
        shown = typeset(function, formulas)
    except (Exception, OutOfTime) as error:  # noqa: BLE001
        return _unavailable(result, f"symbolic: the formula could not be typeset "
                            f"({_describe(error)}); numbers only")
    return SymbolicReport({n: f.derivative for n, f in formulas.items()},
                          {n: f.crosscheck for n, f in formulas.items()}, None, function,
                          formulas, shown)


def _unavailable(result, note: str) -> SymbolicReport:
    return SymbolicReport({name: None for name in result.inputs}, {}, note,
                          shown=note_sections(note))


def _describe(error: BaseException) -> str:
    if isinstance(error, RuleBug):
        return str(error)
    text = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    return text if len(text) <= 120 else text[:117] + "..."


def _groups(result, jacobian: bool) -> list[list[str]]:
    """Inputs whose points run along the same output axes share a replay."""
    groups: dict[tuple, list[str]] = {}
    for name in result.inputs:
        axes = tuple(sorted(a for a, _ in point_axes(result, name, jacobian)))
        groups.setdefault(axes, []).append(name)
    return list(groups.values())


def _refuse(result, record) -> None:
    total = sum(item.numel() for item in result.inputs.values())
    if total > MAX_ENTRIES:
        raise Unavailable(f"the inputs have {total:,} entries, more than the {MAX_ENTRIES:,} a "
                          "symbolic replay makes symbols for")
    try:
        refuse_record(record, result.output)
    except NotReplayable as refusal:
        if not isinstance(refusal, NoRecord):
            raise Unavailable(str(refusal)) from None
        raise Unavailable("no record of the torch calls to replay" if refusal.failed is None
                          else f"{refusal.failed}, so there is no record to replay") from None


def _derive(result, record, namespace, output_source, jacobian, symbol_tex, base=1):
    """(f at a generic point or None, each input's :class:`~.formulas.SymbolicDerivative`),
    or :class:`Unavailable`."""
    _refuse(result, record)
    names, function, formulas = list(result.inputs), None, {}
    try:
        for group in _groups(result, jacobian):
            symbols = group_symbols(result, group, jacobian, symbol_tex, base)
            with deadline(RUN_SECONDS), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                output = SymbolicReplay(result, record, symbols, namespace,
                                        output_source).output()
            with deadline(RUN_SECONDS):
                if names[0] in group:
                    function = function_at_a_point(result, names[0], output, jacobian)
                for name in group:
                    formulas[name] = symbolic_derivative(result, name, output, symbols,
                                                         jacobian)
    except OutOfTime:
        raise Unavailable(f"gave up after {RUN_SECONDS:g} s (the expressions grow too large)") \
            from None
    except RecursionError:
        raise Unavailable("the expressions are nested too deeply for SymPy") from None
    formulas = {n: formulas[n] for n in names}
    if any(not f.same_function for f in formulas.values()):
        function = None  # f varies by point even where its derivative does not
    return function, formulas
