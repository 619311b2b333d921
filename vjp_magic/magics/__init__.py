"""The thin IPython layer: ``%%vjp``, ``%jacobian``, ``%hessian``, options via ``%config``.

Only this package imports IPython. Each magic reads its line with its own ``magic_arguments``
parser (:mod:`vjp_magic.magics.options`), runs the cell or evaluates the expression
(:mod:`vjp_magic.run.execute`, :mod:`vjp_magic.run.choose`), hands both to
:func:`vjp_magic.pipeline.pipeline` and returns the result for IPython to display. User
mistakes (:class:`VJPUsageError`) become short ``UsageError`` messages; the cell's own
exceptions propagate exactly as in a plain cell.
"""
from __future__ import annotations

import argparse
import math
import sys
import tokenize
from contextlib import contextmanager
from functools import lru_cache

from IPython.core.displayhook import DisplayHook
from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments
from IPython.display import display
from traitlets import Bool, Float, Int, observe, validate

from ..core.modes import modes_aside
from ..core.errors import SavedValueChanged, VJPUsageError
from ..pipeline import FLAGS, Request, pipeline
from ..render.options import DISPLAY_HEIGHT, DISPLAY_WIDTH, RenderOptions
from ..run.choose import FromCell, FromExpression
from ..run.execute import CellSyntaxError, run_cell
from ..run.guard import retained_grads_kept
from ..run.mistakes import saved_in_place_advice
from ..teach.coaching import usage_message
from .options import (EXPRESSION, common_arguments, hessian_as_jacobian, one_output,
                      read_cell_line, read_expression_line)


PRESENT_HELP = ("Presentation mode: the derivatives first, larger, the headline beneath "
                "(default: VJPMagics.present).")
EXAM_HELP = ("Exam mode for this cell: the verdict of --check only, no derivatives or code "
             "(default: VJPMagics.exam; a cell cannot turn it off).")


# The display settings' limits, as the line's flags have them (magics.options): low, high
# (None: no upper limit) and what the value is, for the message.
_DISPLAY_LIMITS = {
    "precision": (1, 17, "the number of significant digits shown, from 1 to 17"),
    "threshold": (2, None, "how many rows/columns to show in full (at least 2)"),
    "width": (20, None, "the characters one line of maths may take (at least 20)"),
    "edgeitems": (1, None, "the rows/columns kept at each edge of a summarised matrix "
                           "(at least 1)"),
    "height": (1, None, "the CSS px one output may take (at least 1)"),
}


@magics_class
class VJPMagics(Magics):
    """Magics that infer the ``gradient`` argument of ``backward`` and render derivatives."""

    precision = Int(4, help="Significant digits shown in matrices (capped by the dtype).").tag(
        config=True)
    threshold = Int(10, help="Rows or columns shown in full; larger ones are summarised.").tag(
        config=True)
    edgeitems = Int(3, help="Rows/columns kept at each edge of a summarised matrix.").tag(
        config=True)
    width = Int(DISPLAY_WIDTH, help="Characters one line of maths may take (10 px each, "
                                    "as JupyterLab sets maths: a digit is half of one); "
                                    "wider matrices show fewer digits, then fewer columns.").tag(
        config=True)
    height = Int(DISPLAY_HEIGHT, help="CSS px one output may take (647: one screen at 1024 x 768 "
                                      "with the file browser open); taller ones show fewer "
                                      "rows, components and inputs, and say what they left "
                                      "out.").tag(config=True)
    index_base = Int(1, help="Where the maths counts components and points from: 1, as the "
                             "tutorial does (f_1, v_1, x^(1)), or 0; the code always counts "
                             "from 0.").tag(config=True)
    memory_budget = Float(
        0.25, help="Memory one analysis may use: a fraction (< 1) of free memory, or bytes."
    ).tag(config=True)
    exam = Bool(False, help="Exam mode: cells show the verdict of --check, never the "
                            "derivatives or code (features.exam).").tag(config=True)
    present = Bool(False, help="Presentation mode for every cell, as --present: the "
                               "derivatives first, larger.").tag(config=True)

    @validate("index_base")
    def _zero_or_one(self, proposal):
        """Refuse a base other than 0 or 1: say so and keep the last good one."""
        if proposal["value"] in (0, 1):
            return proposal["value"]
        kept = getattr(self, "_good_index_base", 1)
        print(f"VJPMagics.index_base is 1 (as the tutorial counts) or 0 (as the code does), "
              f"not {proposal['value']!r}. It stays {kept!r}.", file=sys.stderr)
        return kept

    @observe("index_base")
    def _keep_good_index_base(self, change):
        self._good_index_base = change["new"]

    @validate(*_DISPLAY_LIMITS)
    def _within_limits(self, proposal):
        """Refuse what the line's flags refuse (``-p 0``, ``--width 5``): say so, keep the last
        good value."""
        name, value = proposal["trait"].name, proposal["value"]
        low, high, meaning = _DISPLAY_LIMITS[name]
        if low <= value and (high is None or value <= high):
            return value
        kept = getattr(self, "_good_display", {}).get(name, proposal["trait"].default_value)
        print(f"VJPMagics.{name} is {meaning}, not {value!r}. It stays {kept!r}.",
              file=sys.stderr)
        return kept

    @observe(*_DISPLAY_LIMITS)
    def _keep_good_display(self, change):
        self._good_display = {**getattr(self, "_good_display", {}), change["name"]: change["new"]}

    @validate("memory_budget")
    def _positive_budget(self, proposal):
        """Refuse a budget of 0, below 0 or not finite: say so and keep the last good one."""
        value = proposal["value"]
        if math.isfinite(value) and value > 0:
            return value
        kept = getattr(self, "_good_budget", self.traits()["memory_budget"].default_value)
        print(f"VJPMagics.memory_budget must be positive: a fraction of free memory "
              f"(0 < f < 1, e.g. 0.25) or a number of bytes (e.g. 2e9), not {value!r}. "
              f"It stays {kept!r}.", file=sys.stderr)
        return kept

    @observe("memory_budget")
    def _keep_good_budget(self, change):
        self._good_budget = change["new"]

    # -- %%vjp ------------------------------------------------------------------------------
    @magic_arguments()
    @argument("--wrt", nargs="+", action="extend", metavar="NAME", default=None,
              help="Inputs to differentiate with respect to (default: every named leaf tensor "
                   "with requires_grad=True the output depends on). Expressions such as "
                   "layer.weight are allowed.")
    @argument("--of", nargs="+", metavar="NAME", default=None,
              help="The output (default: the cell's final expression, else the last assigned "
                   "tensor with autograd history). A name or any expression, spaces "
                   "allowed: --of y.sum() + 1, or quoted: --of \"y.sum() + 1\".")
    @argument("--full", action="store_true",
              help="No point-structure inference: the plain full Jacobian.")
    @argument("--explain", action="store_true",
              help="Show the tutorial's steps for this cell: J, each v, and vᵀJ.")
    @argument("--code", action="store_true",
              help="Also point to r.code: the careful plain-PyTorch version of the display's "
                   "backward loop (keeps .grad, defines d_<name>).")
    @argument("--symbolic", action="store_true",
              help="Also derive the formula with SymPy and cross-check it against autograd.")
    @argument("--check", metavar="NAME", default=None,
              help="Grade the answer the cell computed into NAME (a tensor, or x.grad) against "
                   "the true derivatives, without showing them.")
    @argument("--against", nargs="+", metavar="EXPR", default=None,
              help="With --check: grade against the exercise's f, an expression of the inputs "
                   "(--against \"torch.stack([-x**3, 5*x])\") or a function of them "
                   "(--against f), not the cell's own graph.")
    @argument("--reveal", action="store_true",
              help="With --check: also show the true derivatives.")
    @argument("--gradcheck", action="store_true",
              help="Replay the cell's tensor operations in float64 against central finite "
                   "differences (custom backward functions included); the cell is not rerun.")
    @argument("--picture", action="store_true",
              help="Draw each Jacobian's nonzero pattern beneath the display.")
    @argument("--present", action="store_true", help=PRESENT_HELP)
    @argument("--exam", action="store_true", help=EXAM_HELP)
    @common_arguments
    @cell_magic
    def vjp(self, line: str, cell: str):
        """Run the cell, then show the derivatives of its output with respect to its inputs.

        The cell runs in the notebook's namespace exactly like a plain cell (variables
        persist, prints print, its own errors show as usual). Then:

        - inputs: the ``--wrt`` names, else every name bound to a floating-point leaf tensor
          with ``requires_grad=True`` that the output depends on;
        - output: ``--of``, else the cell's final expression, else the last tensor it
          assigned that has autograd history;
        - the ``gradient`` argument of ``backward`` is worked out from the output's point
          structure (proved on the autograd graph where possible, always checked by a random
          probe), and the derivatives are shown as matrices. ``x.grad`` is never changed.

        Returns the result ``r`` (also ``_``; a trailing ``;`` hides it): ``r.derivatives``
        (per input: the non-point output axes, then the input's shape), ``r.gradients`` (the
        ``gradient`` vectors used), ``r.point_axes``, ``r.jacobian(name)`` (the full
        Jacobian), and ``r.check``, ``r.gradcheck``, ``r.symbolic``, ``r.code`` with their
        flags. ``--check ans --against f`` grades ``ans`` against the exercise's f at the
        inputs (f's output and graph, not the cell's). ``vjp_magic.differentiate?`` is the
        same analysis from Python.

        Class modes: ``--present`` (or ``%config VJPMagics.present = True``) shows the
        derivatives first and larger, the headline beneath; ``%config VJPMagics.exam = True``
        shows only the verdict of ``--check`` (no derivatives, no code) in every cell.

        Example::

            %%vjp
            x = torch.tensor([1., 2., 3.], requires_grad=True)
            y = torch.stack([-x**3, 5*x])    # r.derivatives["x"][k]: f_k' at the 3 points
        """
        __tracebackhide__ = True  # the user's errors show their own frames only
        args = read_cell_line(self.vjp.parser, line)
        if args.help:  # -h, --help
            print(self.vjp.__doc__)
            return None
        for flag in ("reveal", "against"):  # before the cell runs: nothing is lost
            if getattr(args, flag) and not args.check:
                raise UsageError(f"--{flag} goes with --check NAME (the answer to grade).")
        self._forget_last_cell()
        with modes_aside():  # the user's torch modes run on the cell's own calls only
            # the record rebuilds a hook-free graph, serves --symbolic/--gradcheck, vectorises
            run = run_cell(self.shell, cell, record_ops=True)
            subject = None
            try:  # (the answer of --check, or an expression of it, is never the output)
                subject = FromCell(run, self.shell, exclude=(args.check,) if args.check else ())
                with retained_grads_kept(self.shell.user_ns), \
                        _usage_errors(self._coached(run, args), cell):
                    result = pipeline(subject, self._request(
                        args, of=one_output(args.of), wrt=args.wrt, full=args.full))
            finally:  # on every way out (an error, Ctrl-C): what the cell's backward freed is
                # freed now; the record stays while the output lives, for %jacobian later
                self._last_cell = run.release(keep_for=getattr(subject, "chosen", None))
        if run.final_value is not None and run.final_value is not subject.chosen:
            display(run.final_value)  # as a plain cell would show it, above the result
        if _ends_with_semicolon(cell):  # hidden and kept out of Out, as in a plain cell
            return None
        self._pictures_beneath(result)
        return result

    # -- %jacobian ----------------------------------------------------------------------------
    @magic_arguments()
    @argument("--symbolic", action="store_true",
              help="Also derive the Jacobian with SymPy and cross-check it against autograd.")
    @argument("--picture", action="store_true",
              help="Draw the Jacobian's nonzero pattern beneath it (drawn anyway when the "
                   "Jacobian is too large to show in full).")
    @argument("--present", action="store_true", help=PRESENT_HELP)
    @argument("--exam", action="store_true", help=EXAM_HELP)
    @common_arguments
    @EXPRESSION
    @line_magic
    def jacobian(self, line: str):
        """Show the full Jacobian of an output with respect to tensors in the namespace.

        Syntax (the options before the expression)::

            %jacobian y x                   # names: the output, then its inputs
            %jacobian y                     # inputs found through the autograd graph
            %jacobian (x**2).sum() wrt x    # any expression as the output, then 'wrt'
            %jacobian a * b wrt a, b        # several inputs, by spaces or commas
            %jacobian torch.clamp(x, -1, 1) wrt x     # '-' inside the expression is Python
            %jacobian --symbolic -p 3 torch.softmax(x, 0) wrt x

        The expression is evaluated in the namespace (its torch calls recorded, for
        --symbolic); one that starts with an option's spelling goes in parentheses: (-p).
        The Jacobian is the m × n matrix of the output and the input flattened row-major,
        rows and columns labelled y_{i,j} / x_{k,l} where shapes are not plain vectors;
        beyond --threshold rows or columns it is summarised and its pattern drawn.

        Returns the result ``r`` (as ``%%vjp``'s; also ``_``): ``r.jacobian(name)``, shape
        ``output.shape + input.shape`` (equal to ``torch.autograd.functional.jacobian``),
        ``r.derivatives[name]``, and ``r.symbolic[name]`` with --symbolic. ``x.grad`` is
        never changed.
        """
        args = read_expression_line(self.jacobian.parser, line, "jacobian")
        if args.help:  # -h, --help
            print(self.jacobian.__doc__)
            return None
        result = self._on_expression(args, self._request(args, wrt=args.input_names,
                                                         jacobian=True))
        self._pictures_beneath(result)
        return result

    # -- %hessian -----------------------------------------------------------------------------
    @magic_arguments()
    @argument("--symbolic", action="store_true",
              help="Also derive the second derivatives with SymPy and cross-check them.")
    @argument("--picture", action="store_true", help=argparse.SUPPRESS)  # to say where it goes
    @argument("--explain", action="store_true", help=argparse.SUPPRESS)  # (the same)
    @argument("--present", action="store_true", help=PRESENT_HELP)
    @argument("--exam", action="store_true", help=EXAM_HELP)
    @common_arguments
    @EXPRESSION
    @line_magic
    def hessian(self, line: str):
        """Show the second derivatives of an output with respect to tensors in the namespace.

        Syntax (as ``%jacobian``'s)::

            %hessian y x                    # names: the output, then its inputs
            %hessian (x**2).sum() wrt x     # any expression as the output, then 'wrt'
            %hessian --symbolic torch.sin(x) wrt x

        From the autograd graph (double backward), with the point structure of ``%%vjp``.
        Returns ``h`` (also ``_``):

        - ``h.derivatives[name]``: the second derivatives at each point. An elementwise f at
          N points gives f'' at each point (shaped like x); a scalar of a vector its n × n
          Hessian; a row-wise layer one d × d Hessian per row;
        - ``h.hessian(name)``: the full Hessian, ``output.shape + x.shape + x.shape`` (for a
          scalar output, ``torch.autograd.functional.hessian``);
        - ``h.symbolic``, ``h.crosscheck`` with --symbolic.

        Several inputs give one Hessian each (no mixed terms). A graph that cannot be
        differentiated twice (``@once_differentiable``) is refused, naming it. ``x.grad`` is
        never changed. ``vjp_magic.hessian?`` is the same from Python.
        """
        args = read_expression_line(self.hessian.parser, line, "hessian")
        if args.picture or args.explain:
            raise UsageError(hessian_as_jacobian("--picture" if args.picture else "--explain",
                                                 args, self.shell.user_ns))
        if args.help:  # -h, --help
            print(self.hessian.__doc__)
            return None
        return self._on_expression(args, self._request(args, wrt=args.input_names, order=2))

    # -- helpers -----------------------------------------------------------------------------
    def _on_expression(self, args, request):
        """``%jacobian``'s and ``%hessian``'s run: the line's output expression evaluated in
        the namespace (its calls recorded for --symbolic), then the pipeline on it."""
        with modes_aside(), retained_grads_kept(self.shell.user_ns), _usage_errors():
            subject = FromExpression.evaluate(self.shell, args.output_source, record_ops=True,
                                              earlier=self._last_cell)
            try:
                return pipeline(subject, request)
            finally:
                subject.release()

    _last_cell = None  # the last %%vjp cell's record (run.record.KeptRecord), or None

    def _coached(self, run, args):
        """The mistake that stopped the cell, to coach on where no derivatives come; None in
        exam mode (the coaching shows the corrected code)."""
        return None if self.exam or args.exam else run.mistake

    def _forget_last_cell(self) -> None:
        """Drop the record kept from the last ``%%vjp`` cell (a new cell replaces it)."""
        if self._last_cell is not None:
            self._last_cell.release()
        self._last_cell = None

    def _pictures_beneath(self, result) -> None:
        """Display the result's pictures once the result itself is shown: after the cell, as
        the inline matplotlib backend shows its figures."""
        with modes_aside():
            pictures = result.view.pictures(result)
        if not pictures:
            return
        events = self.shell.events

        def show(*_):
            events.unregister("post_run_cell", show)
            for picture in pictures:
                display(picture)

        events.register("post_run_cell", show)

    def _request(self, args, **asked) -> Request:
        """The request: the line's flags (the features' by their names, :data:`FLAGS`), with
        ``%config`` for what the line leaves out."""
        options = RenderOptions(
            precision=self.precision if args.precision is None else args.precision,
            threshold=self.threshold if args.threshold is None else args.threshold,
            edgeitems=self.edgeitems,
            index_base=self.index_base,
            width=self.width if args.width is None else args.width,
            height=self.height,
            full_matrix=args.full_matrix,
        )
        wrt = tuple(asked.pop("wrt") or ())
        flags = {name: getattr(args, name) for name in FLAGS if hasattr(args, name)}
        flags.update(exam=bool(flags.get("exam")) or self.exam,
                     present=bool(flags.get("present")) or self.present)
        return Request(options=options, wrt=wrt, flags=flags, memory_budget=self.memory_budget,
                       **asked)


@contextmanager
def _usage_errors(mistake=None, source: str | None = None):
    """A :class:`VJPUsageError` inside the block becomes IPython's short ``UsageError``; when
    the cell stopped on a classic ``backward`` mistake, the message coaches on it first; a
    saved value the cell (``source``) changed in place is named with its line and fix."""
    try:
        yield
    except VJPUsageError as error:
        advice = saved_in_place_advice(error.torch_message, source, None) \
            if isinstance(error, SavedValueChanged) and source else None
        message = str(error) if mistake is None else usage_message(mistake, error)
        if advice is not None and mistake is None:
            message = f"{error.output_name} can no longer be differentiated. {advice}"
        raise UsageError(message) from None


@lru_cache(maxsize=64)  # a pure function of the text: a cell run again is not tokenized again
def _ends_with_semicolon(source: str) -> bool:
    """Whether the cell's last token is ';' (IPython's own rule for plain cells)."""
    try:
        return DisplayHook.semicolon_at_end_of_expression(source)
    except (tokenize.TokenError, SyntaxError, IndentationError):
        return False


# magic_arguments writes the usage line as "%vjp"; a cell magic is spelled "%%vjp".
VJPMagics.vjp.__doc__ = VJPMagics.vjp.__doc__.replace("\n  %vjp ", "\n  %%vjp ", 1)


def load(shell) -> None:
    """Register the magics on ``shell`` (a fresh instance per load), with what their first
    cells would import (:func:`_imported_now`)."""
    _imported_now()
    magics = VJPMagics(shell=shell)
    shell.register_magics(magics)


_FIRST_CELLS = ("vjp_magic.symbolic.display", "vjp_magic.symbolic.crosscheck",  # sympy, mpmath
                "torch.fx.experimental.symbolic_shapes",  # torch's own, at a first replay
                "matplotlib.backends.backend_agg", "matplotlib.figure", "matplotlib.colors",
                "matplotlib.ticker", "PIL.Image")  # the [plot] extra


def _imported_now() -> None:
    """The modules a first ``--gradcheck``, custom Function or ``--picture`` cell imports,
    imported at ``%load_ext`` instead: a cell leaves ``sys.modules`` and ``warnings.filters``
    (sympy adds one) as a plain run of it does. A missing optional one is skipped."""
    import importlib

    for name in _FIRST_CELLS:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if name == "PIL.Image":
            module.preinit()  # the image plugins a first PNG loads


def unload(shell) -> None:
    """Remove the magics and their configurable from ``shell``."""
    manager = shell.magics_manager
    manager.magics["cell"].pop("vjp", None)
    manager.magics["line"].pop("jacobian", None)
    manager.magics["line"].pop("hessian", None)
    for magics in [m for m in shell.configurables if isinstance(m, VJPMagics)]:
        magics._forget_last_cell()
    manager.registry.pop("VJPMagics", None)
    shell.configurables[:] = [c for c in shell.configurables if not isinstance(c, VJPMagics)]


__all__ = ["CellSyntaxError", "VJPMagics", "load", "unload"]
