"""The pipeline: from what the user gave to the result that displays itself, one line a stage.

:func:`pipeline` reads top to bottom: choose the output → the inputs → the hook-free graph →
the derivatives (first or second: ``request.order``) → the features
(:mod:`vjp_magic.features`: grading, gradcheck, coaching, explain, code, symbolic, picture,
run in the order of :data:`FEATURES`) → the result, built once with the
:class:`~vjp_magic.render.view.View` that displays it. What the user asked for comes in as a
:class:`Request`; nothing changes the result afterwards. Where the output and inputs come
from is the subject's business (:class:`~vjp_magic.run.choose.Subject`: a cell that ran, an
expression, or tensors given in Python).

``%%vjp``, ``%jacobian``, ``%hessian`` (:mod:`vjp_magic.magics`), :func:`differentiate` and
:func:`hessian` all go through it.
"""
from __future__ import annotations

import itertools
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import torch

from .core import analysis
from .core import hessian as core_hessian
from .core.graph_walk import seal, walked_once
from .core.errors import GraphFreed, SavedValueChanged, VJPUsageError, invalid_gradient
from .core.marked import marked
from .core.reentrant import judged_once, refuse_reentrant
from .core.modes import modes_aside
from .core.quiet import (analysis_device, generators_kept, no_subclass_code, quiet_autograd,
                         restore_generators)
from .core.hessian import HessianResult
from .core.result import DerivativeResult, VJPResult
from .core.torch_api import TorchError, torch_error
from .core.validation import (check_arguments, checked_inputs, named_inputs,
                              parameter_expression)
from .features import (Feature, code, coaching, cuts, declared_flags, exam, explain, gather,
                       grading, gradcheck, is_wanted, names, picture, present, symbolic)
from .render import graph_facts
from .render.options import RenderOptions
from .render.view import View
from .run.called import Called, is_function
from .run.compiled import eagerly_notes
from .run.cuts import graph_notes
from .run.choose import Given, Subject, dense_inputs
from .run.hookfree import AnalysedGraph, analysed_graph

PER_SAMPLE_FROM = 32  # samples from which per-sample gradients are vectorised over the replay
# Per-sample gradients of every input accepted by the probe rule: the result built from them
# directly (run.persample.accepted_result), not by the general analysis, which would decide
# nothing more. False: always the analysis (the tests compare the two).
PER_SAMPLE_DIRECT = True

# What a request may add to the derivatives, in the order of their sections.
FEATURES: tuple[Feature, ...] = (grading, gradcheck, coaching, cuts, explain, code, symbolic,
                                 picture, present, exam, names)
FLAGS = declared_flags(FEATURES)  # the flags the magics hand over in Request.flags
ORDERS = (1, 2)  # of the derivatives: first (analysis.differentiate), second (core.hessian)
ENTRIES = {1: "differentiate", 2: "hessian"}  # the Python entry point of each order
_ANALYSIS = analysis.differentiate  # the numeric core of order 1 as imported (not patched)


@dataclass(frozen=True)
class Request:
    """What the user asked for (the magic's flags and ``%config``, or keyword arguments).

    ``flags``: the features' flags by name (:data:`FLAGS`: ``check``, ``reveal``,
    ``gradcheck``, ``explain``, ``code``, ``symbolic``, ``picture``, ``present``, ``exam``), as
    the magic parsed them (``exam``, ``present`` also from ``%config``); a flag left out is not
    set."""

    options: RenderOptions = field(default_factory=RenderOptions)
    of: str | None = None  # the output, named (--of)
    wrt: tuple[str, ...] = ()  # the inputs, named (--wrt, %jacobian's inputs)
    order: int = 1  # of the derivatives: 1 (%%vjp, %jacobian) or 2 (%hessian)
    full: bool = False  # no point structure: the plain full Jacobian
    jacobian: bool = False  # display the full Jacobian (%jacobian)
    memory_budget: float | None = None
    analysis: dict = field(default_factory=dict)  # further keywords of the numeric core
    flags: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.order not in ORDERS:
            raise ValueError(f"order is 1 or 2, not {self.order!r}")

    def flag(self, name: str) -> object:
        """The flag ``name`` as asked (None where it was not)."""
        return self.flags.get(name)


@quiet_autograd()  # the user's anomaly mode and saved-tensor hooks: for the cell, not for us
def pipeline(subject: Subject, request: Request,
             features: Sequence[Feature] = FEATURES) -> DerivativeResult:
    """The derivatives of ``subject``'s output with respect to its inputs, as ``request`` says
    (each graph walked once for every stage: :func:`~vjp_magic.core.graph_walk.walked_once`)."""
    with walked_once():
        return _pipeline(subject, request, features)


def _pipeline(subject: Subject, request: Request,
              features: Sequence[Feature]) -> DerivativeResult:
    with judged_once():  # one walk of the output's graph for both refusals, before any pass
        output_name, output = subject.output(request.of)
        inputs = subject.inputs(request.wrt, output, output_name)
        with analysis_device():
            # a backward re-running the forward: first (the subject's advice for the passes')
            refuse_reentrant(output, output_name, subject.replay)
    with analysis_device():  # the user's code has run: the CPU as the default device
        capture = _per_sample_capture(subject, inputs, output, request, features)
        graph = analysed_graph(subject.record, inputs, output, subject.namespace,
                               capture)  # hook-free
        seal(output, graph.output, *_started_from(subject))  # walks kept: not the analysis's
        given = _per_sample(subject, inputs, output, request, features, graph)
        found = _accepted(graph, output_name, request, given)  # None: the analysis decides
        result = graph.restore(found if found is not None else
                               _derivatives(graph, output_name, request, given), output, inputs)
        result = replace(result, **graph_notes(  # r.cuts, r.steers: before any text is built
            subject.record, {n: item.tensor for n, item in result.inputs.items()}, result.output))
        result.notes.extend(eagerly_notes(subject.record))
        if graph.replayed:  # the facts off the graph analysed: whole where the cell freed its own
            graph_facts.read_off(result, graph.output, graph.inputs)
        with names.naming(subject, result):  # no text a feature builds takes a bound name
            added = gather(features, result, request, subject)
    view = View(request.options, request.jacobian, added.before, added.after, **added.view)
    return replace(result, output=result.output.detach(),  # a stored result pins no graph
                   view=view, **added.stored)


def _started_from(subject: Subject) -> list:
    """The tensors the cell's own ``backward`` calls started from (its log keeps them)."""
    log = subject.log
    return [t for call in getattr(log, "records", ()) for t in getattr(call, "tensors", ())]


def check(answer, output, inputs, names=None, *, y: torch.Tensor | None = None):
    """Grade ``answer`` against the true derivatives, unshown: ``%%vjp --check`` from Python.
    Against the exercise's f (as ``--against``), or an output tensor's own graph.

    Args:
        answer (Tensor, list of Tensors, or dict str → answer): the derivatives in any
            accepted form: as ``r.derivatives[name]`` holds them (component axes, then the
            input's shape); the full Jacobian (``output.shape + input.shape``), or flattened
            to m × n as ``%jacobian`` shows it; one Jacobian per row (points first: (N, m,
            d)) where that shape is not another form's; where the output has one component
            per point (or is a scalar), the input-shaped gradient
            ``y.backward(torch.ones_like(y))`` leaves in ``x.grad``; one tensor per
            component (stacked). Axes of size 1 may differ. With several inputs, a dict
            ``{name: answer}`` or one answer per input, in order.
        output (callable or Tensor): the exercise's f, called on fresh copies of the inputs
            (by name where its parameters are named like them, else in order; ``x.grad``
            and your tensors are left alone); or the output itself, its graph still alive
            (compute the answer with ``retain_graph=True``, or call ``check`` first).
        inputs, names: as for :func:`differentiate`.
        y (Tensor, optional): with a callable f, the student's output: compared with f's at
            the inputs, and its graph's derivatives with f's (a cut graph is named).

    Returns:
        Verdict: ``.correct`` (bool); ``.kind``, ``"correct"`` or the mistake recognised
        (``"summed"``, ``"one-component"``, ``"accumulated"``, ``"scaled"``, ``"transposed"``,
        ``"reshaped"``, ``"wrong-at-points"``, ``"wrong-shape"``, ``"wrong"``, ``"missing"``; with
        f and ``y``: ``"output-differs"``, ``"graph-cut"``); ``.hint``, what to do, never the
        expected numbers; ``.headline`` ("✓ correct (as the full Jacobian)", "✗ …"); ``.points``,
        ``.name``, ``.form``, ``.factor``, ``.against`` (f, as named), ``.answer_kind`` (the
        answer's own verdict against f). Tolerance: float32 1e-5, float64 1e-9.

    Raises:
        VJPUsageError: as :func:`differentiate`, or f failing; :class:`~vjp_magic.core.
        errors.GraphFreed` (one) for a graph freed by the answer's own ``backward``.

    Example::

        >>> x = torch.tensor([1., 2., 3.], requires_grad=True)
        >>> y = torch.stack([-x**3, 5*x])
        >>> y.sum().backward(retain_graph=True)     # both components added up
        >>> c = vjp_magic.check(x.grad, y, x)
        >>> c.correct, c.kind
        (False, 'summed')
        >>> f = lambda x: x**3 - 2*x                # the exercise
        >>> y = x.detach()**3 - 2*x                 # the student's y: x**3 cut off
        >>> vjp_magic.check(-2 * torch.ones(3), f, x, y=y).kind
        'graph-cut'

    Each kind, and how float32 answers are graded: ``docs/api.md``.
    """
    from .teach import grading, grading_against

    with modes_aside():  # the user's torch modes run on f's calls only (grading_against)
        return _checked(grading, grading_against, answer, output, inputs, names, y)


def _checked(grading, grading_against, answer, output, inputs, names, y):
    """The verdict, the generators as found, or as f's one call leaves them (Exercise.drawn)."""
    exercise = grading_against.from_function(output) if callable(output) and \
        not isinstance(output, torch.Tensor) else None
    with generators_kept():
        verdict = _verdict(grading, grading_against, answer, output, inputs, names, y,
                           exercise)
    if exercise is not None and exercise.drawn:
        restore_generators(exercise.drawn[0])
    return verdict


def _verdict(grading, grading_against, answer, output, inputs, names, y, exercise):
    if exercise is not None:
        named = named_inputs(inputs, names)
        result = None if y is None else _graded_result(y, named)
        return grading_against.against(answer, exercise, named, result=result, output=y)
    result = _graded_result(output, inputs, names)
    with no_subclass_code():  # the answer and the output read as torch's: no subclass's code
        return grading.grade(answer, result, output=output)


def assert_correct(answer, output, inputs, names=None, *, y: torch.Tensor | None = None):
    """:func:`check`, as an assertion for autograded cells (nbgrader): the verdict when the
    answer is right, else an ``AssertionError`` whose message is the verdict and its hint.

    Args:
        answer, output, inputs, names, y: as for :func:`check` (``output`` the exercise's
            f, a function of the inputs, or the output tensor).

    Returns:
        Verdict: as :func:`check`'s, when ``.correct``.

    Raises:
        AssertionError: the answer is not right; its message says what it is and what to do.
        VJPUsageError: as :func:`check`.

    Example::

        >>> x = torch.tensor([1., 2., 3.], requires_grad=True)
        >>> f = lambda x: torch.stack([-x**3, 5*x])
        >>> vjp_magic.assert_correct(torch.stack([-3*x.detach()**2, 5*torch.ones(3)]), f, x)
        ... # doctest: +ELLIPSIS
        Verdict(correct=True, kind='correct', ...)
        >>> vjp_magic.assert_correct(-3*x.detach()**2 + 5, f, x)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        AssertionError: ✗ the components summed: The answer is the derivatives of y's 2 ...
    """
    verdict = check(answer, output, inputs, names, y=y)
    if not verdict.correct:
        raise AssertionError(f"{verdict.headline}: {verdict.hint}")
    return verdict


def _graded_result(output: torch.Tensor, inputs, names=None) -> VJPResult:
    """The derivatives an answer is graded against; a graph the answer's own backward freed
    said so."""
    try:
        return differentiate(output, inputs, names)
    except GraphFreed:
        raise GraphFreed(
            "The graph of the output was freed, most likely by the backward call that computed "
            "the answer: give that call retain_graph=True, or call vjp_magic.check before it."
        ) from None


def differentiate(output, inputs, names=None, *, output_name: str | None = None,
                  full: bool = False, options: RenderOptions | None = None,
                  explain: bool = False, code: bool = False, memory_budget: float | None = None,
                  **analysis_options) -> VJPResult:
    """The derivatives of ``output`` with respect to ``inputs``, with the ``gradient``
    argument of ``backward`` worked out: the plain-Python form of ``%%vjp``.

    The output's axes that are *points* (the entries of ``x**2``, the rows of ``x @ W``)
    are paired with the input axes they run along, proved on the graph where possible and
    always checked by a random probe; then one ``torch.autograd.grad`` pass per non-point
    output component: ``x.grad`` is never changed and the graph stays usable.

    Args:
        output (Tensor or callable): a real floating-point tensor with autograd history, or
            a zero-argument function returning it, called once and recorded as a ``%%vjp``
            cell is (per-sample losses then take a vectorised replay, as ``vmap(grad)``).
        inputs (Tensor, sequence of Tensors, dict str → Tensor, or nn.Module): floating
            point, ``requires_grad=True``; a dict names each input, a module its parameters.
        names (str or sequence of str, optional): one per input (else a ``VJPUsageError``).
            Default: ``"x"`` for a lone tensor, else ``"x1"``, ``"x2"``, …
        output_name (str): its name in the display and code. Default ``"y"``; ``"out"`` where
            the caller binds ``y`` to another object (pasted code would run on that one).
        full (bool): skip the point structure: the plain full Jacobian.
        options (RenderOptions, optional): how the result displays.
        explain, code (bool): add the tutorial's steps (J, each v, vᵀJ), or the plain
            PyTorch loop computing the same numbers, as ``--explain`` / ``--code`` do.
        memory_budget (float, optional): a fraction (< 1) of the free memory of the output's
            device, or bytes. Default: 0.25. A larger full Jacobian is refused, not an OOM.
        seed (int, optional): every probe's seed; a fresh one by default, kept as ``r.seed``
            (torch's global random state is never used). batched, max_chunk, max_pairings,
            graph_proof: tuning of the numerical core, :func:`.core.analysis.differentiate`.

    Returns:
        VJPResult: ``r.derivatives[name]`` (the non-point output axes, then the input's
        shape), ``r.gradients[name]`` (the ``gradient`` vectors used), ``r.point_axes``,
        ``r.jacobian(name)`` (``output.shape + input.shape``), ``r.seed``, ``r.notes``;
        displayed, it keeps no graph alive.

    Raises:
        VJPUsageError: (a ``ValueError``) a mistake in the call, saying what to do: an input
        without ``requires_grad``, a graph freed or modified, a Jacobian over the budget.

    Example::

        >>> x = torch.tensor([1., 2., 3.], requires_grad=True)
        >>> r = vjp_magic.differentiate(torch.stack([-x**3, 5*x]), x)
        >>> r.derivatives["x"]          # row k: f_k' at the 3 points
        tensor([[ -3., -12., -27.],
                [  5.,   5.,   5.]])
        >>> r.point_axes["x"], r.jacobian("x").shape
        (((1, 0),), torch.Size([2, 3, 3]))
        >>> mlp, data = torch.nn.Sequential(torch.nn.Linear(4, 3)), torch.randn(64, 4)
        >>> r = vjp_magic.differentiate(lambda: mlp(data).tanh().sum(1), mlp, names="mlp")
        >>> r.derivatives["mlp.0.weight"].shape     # sample b's gradient at [b]
        torch.Size([64, 3, 4])
    """
    request = Request(options=options or RenderOptions(), full=full, memory_budget=memory_budget,
                      analysis=analysis_options, flags={"explain": explain, "code": code})
    output_name = _free_output_name(output, output_name, sys._getframe(1).f_globals)
    return _from_python(output, inputs, names, output_name, request)


def hessian(output, inputs, names=None, *, output_name: str | None = None,
            options: RenderOptions | None = None, memory_budget: float | None = None,
            **analysis_options) -> HessianResult:
    """The second derivatives of ``output`` with respect to each input, with the point
    structure of :func:`differentiate`: the plain-Python form of ``%hessian``.

    From the autograd graph (double backward); one Hessian per input, no mixed terms.

    Args:
        output (Tensor or callable): a real floating-point tensor with autograd history, or
            a function of no arguments returning it (called once, as for :func:`differentiate`).
        inputs, names, output_name, options, memory_budget: as for :func:`differentiate`.
        seed, batched, max_chunk, max_pairings, graph_proof: as for :func:`differentiate`.

    Returns:
        HessianResult: ``h.derivatives[name]``, the second derivatives at each point: an
        elementwise f at N points gives f'' at each (shaped like x), a scalar of a vector
        its n × n Hessian, a row-wise layer one d × d Hessian per row. ``h.hessian(name)``
        is the full one, ``output.shape + x.shape + x.shape`` (for a scalar output,
        ``torch.autograd.functional.hessian``). Also ``h.point_axes``, ``h.seed`` and
        ``h.inputs[name].symmetric``. It displays itself; ``x.grad`` is never changed.

    Raises:
        VJPUsageError: as :func:`differentiate`, and for a graph that cannot be
        differentiated twice (``@once_differentiable``, an op without double backward).

    Example::

        >>> x = torch.tensor([1., 2., 3.], requires_grad=True)
        >>> vjp_magic.hessian(torch.sin(x), x).derivatives["x"]     # -sin at each point
        tensor([-0.8415, -0.9093, -0.1411])
        >>> vjp_magic.hessian((x**3).sum(), x).hessian("x")
        tensor([[ 6.,  0.,  0.],
                [ 0., 12.,  0.],
                [ 0.,  0., 18.]])
    """
    request = Request(options=options or RenderOptions(), order=2, memory_budget=memory_budget,
                      analysis=analysis_options)
    output_name = _free_output_name(output, output_name, sys._getframe(1).f_globals)
    return _from_python(output, inputs, names, output_name, request)


def _free_output_name(output, given: str | None, caller: Mapping) -> str | None:
    """``given``, else ``y`` where the caller's namespace (a notebook's) does not bind it to
    another object, else ``out``, ``out2``, ...: the display and its code never call the
    output by a name that holds another tensor there."""
    if given is not None:
        return given
    for name in itertools.chain(("y", "out"), (f"out{k}" for k in range(2, 100))):
        if caller.get(name, output) is output:
            return name
    return "y"


def _from_python(output, inputs, names, output_name: str,
                 request: Request) -> DerivativeResult:
    """The pipeline on a given output tensor (:class:`~.run.choose.Given`), or on a function
    called once (:func:`_called`)."""
    if not isinstance(output_name, str) or not output_name.strip():
        raise VJPUsageError(f"output_name is the output's name, a str (e.g. output_name='loss'),"
                            f" not {output_name!r}.")
    with modes_aside():  # the user's torch modes run on fn()'s calls only (run.called)
        return _from_python_aside(output, inputs, names, output_name, request)


def _from_python_aside(output, inputs, names, output_name: str,
                       request: Request) -> DerivativeResult:
    if is_function(output):
        return _called(output, inputs, names, output_name, request)
    entry = ENTRIES[request.order]  # the function called, as advice names it
    result = pipeline(Given(output, inputs, names, output_name, entry), request)
    return _with_replay_hint(result, inputs) if request.order == 1 else result


def _called(fn, inputs, names, output_name: str, request: Request) -> DerivativeResult:
    """The pipeline on ``fn()``, called once and recorded (:class:`~.run.called.Called`); the
    inputs are named before it runs, and ``request.wrt`` names them, as ``--wrt`` would (a
    cell's inputs named so are what the per-sample replay waits for)."""
    named = dense_inputs(checked_inputs(inputs, names))  # a mistake here: fn never runs
    check_arguments(request.memory_budget, request.analysis.get("seed"))
    subject = Called.call(fn, named, output_name, ENTRIES[request.order])
    try:
        return pipeline(subject, replace(request, wrt=tuple(named)))
    finally:  # the record's tensors: a result pins no graph
        subject.release()


def _with_replay_hint(result: DerivativeResult, inputs) -> DerivativeResult:
    """``result`` of per-sample losses given as a tensor with respect to a module, with a
    note on the vectorised path a callable takes."""
    output = result.output
    modules = inputs.values() if isinstance(inputs, Mapping) else \
        inputs if isinstance(inputs, (list, tuple)) else (inputs,)
    if not any(isinstance(m, torch.nn.Module) for m in modules) or output.dim() < 1 \
            or output.numel() < PER_SAMPLE_FROM or output.numel() != len(output):
        return result
    return replace(result, notes=[*result.notes, marked(
        "For faster per-sample gradients, pass the computation as a function, "
        "`differentiate(lambda: F.cross_entropy(model(data), t, reduction='none'), model)`: "
        "it is called once, recorded, and its per-sample gradients vectorised as `vmap(grad)`.")])


# -- the stages ---------------------------------------------------------------------------------
def _derivatives(graph: AnalysedGraph, output_name: str, request: Request,
                 given=None) -> DerivativeResult:
    """The numeric core of the request's order (first derivatives: kept with their graph
    until the features have read it); PyTorch's errors for a graph that can no longer be
    read, as advice."""
    options = dict(request.analysis)
    if graph.reason is not None:  # the user's own graph: its hooks see no vmap-batched tensor
        options.setdefault("batched", False)
    if request.order == 1:
        if getattr(given, "seed", None) is not None:  # the per-sample rules' probe 0 is ours
            options.setdefault("seed", given.seed)
        given = {**(given or {}), **(options.pop("given", None) or {})}  # the caller's own win
        options.update(keep_graph=True, given=given or None)
    try:
        numeric_core = analysis.differentiate if request.order == 1 \
            else core_hessian.second_derivatives  # looked up now: a patched core is the core
        return numeric_core(
            graph.output, graph.inputs, output_name=output_name, full=request.full,
            memory_budget=request.memory_budget, **options)
    except RuntimeError as error:
        usage = _graph_error(error, output_name, graph.inputs, graph)
        if usage is None:
            raise
        raise usage from None


def _accepted(graph: AnalysedGraph, output_name: str, request: Request,
              given) -> DerivativeResult | None:
    """The result of per-sample gradients that all pass the probe rule, built directly where
    the request asks nothing the analysis would decide (:func:`.run.persample.
    accepted_result`); else None. A patched numeric core is the core (as in
    :func:`_derivatives`): whoever wraps ``analysis.differentiate`` sees every request."""
    if given is None or not PER_SAMPLE_DIRECT or request.order != 1 or request.full \
            or set(request.analysis) - {"seed"} or analysis.differentiate is not _ANALYSIS:
        return None
    from .run.persample import accepted_result

    return accepted_result(graph, given, output_name, request.memory_budget)


def _per_sample(subject: Subject, inputs: dict, output, request: Request,
                features: Sequence[Feature], graph: AnalysedGraph | None = None) -> dict | None:
    """Per-sample gradients vectorised over the replayed cell, where the record allows it
    and is replayed anyway (the analysis uses them only if its probe agrees); ``graph``:
    the analysed graph, replayed with :func:`_per_sample_capture`'s interpreter."""
    if not _wants_per_sample(subject, output, request, features):
        return None
    from .run.persample import per_sample_given

    given = per_sample_given(subject.record, inputs, output, request.memory_budget, graph=graph,
                             seed=request.analysis.get("seed"), lazy=True)
    if graph is not None:
        graph.interpreter = None  # the layer outputs it kept are not needed any more
    return given


def _per_sample_capture(subject: Subject, inputs: dict, output, request: Request,
                        features: Sequence[Feature]):
    """What the analysed graph's replay keeps for the per-sample rules (None: nothing)."""
    if not _wants_per_sample(subject, output, request, features):
        return None
    from .run.persample import rules_capture

    return rules_capture(inputs, output)


def _wants_per_sample(subject: Subject, output, request: Request,
                      features: Sequence[Feature]) -> bool:
    if subject.record is None or request.order != 1 or request.full \
            or not isinstance(output, torch.Tensor) \
            or output.numel() < PER_SAMPLE_FROM:  # (a few backward passes cost less)
        return False  # (looked at first: the features' flags need not be)
    return bool(request.wrt) or any(f.replays_record and is_wanted(f, request)
                                    for f in features)


def _graph_error(error: RuntimeError, output_name: str, inputs,
                 graph: AnalysedGraph | None = None) -> VJPUsageError | None:
    """PyTorch's error when the output's graph can no longer be read, as advice (a
    :class:`GraphFreed` when a backward freed it); else None. ``graph``: why the analysis
    could not use a copy rebuilt from the cell's record."""
    kind = torch_error(error)
    changed = graph is not None and graph.inputs_changed
    if kind is TorchError.SECOND_PASS and graph is not None and graph.reason and not changed:
        return GraphFreed(
            f"The graph of {output_name} was freed by a backward() call, and vjp_magic could "
            f"not rebuild it from the cell's operations ({graph.reason}). Pass "
            f"retain_graph=True to that call, or compute {output_name} again.")
    if kind is TorchError.SECOND_PASS and not changed:
        return GraphFreed(
            f"The graph of {output_name} was freed before vjp_magic could read it (a "
            "backward() call outside this cell). Recompute the output, or use "
            "retain_graph=True.")
    if kind in (TorchError.INPLACE, TorchError.SECOND_PASS):
        changed = [parameter_expression(n) for n, t in inputs.items()
                   if isinstance(t, torch.Tensor) and t._version]  # model[0].weight
        which = f" ({', '.join(changed)})" if changed else ""
        message = (
            f"{output_name} can no longer be differentiated: a tensor it was computed "
            f"from{which} was modified in place afterwards (e.g. w -= lr * w.grad under "
            "torch.no_grad(), w.add_(...), w[0] = ...), and autograd needs its old value. "
            f"Compute {output_name} after the update, or run the update in a later cell.")
        if kind is TorchError.INPLACE and not changed:  # PyTorch's text names the node
            return SavedValueChanged(message, output_name, str(error))
        return VJPUsageError(message)
    if kind is TorchError.INVALID_GRADIENT:
        return VJPUsageError(invalid_gradient(error))
    if kind is TorchError.REENTRANT_CHECKPOINT:
        return VJPUsageError(
            f"{output_name} was computed through torch.utils.checkpoint with "
            "use_reentrant=True, which torch.autograd.grad (what vjp_magic differentiates "
            "with) does not support: pass use_reentrant=False to checkpoint.")
    return None


__all__ = ["FEATURES", "FLAGS", "Request", "assert_correct", "check", "differentiate", "hessian",
           "pipeline"]
