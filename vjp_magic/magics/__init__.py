"""The thin IPython layer: ``%%vjp``, ``%jacobian``, options via ``%config``.

Only this module imports IPython. It reads the line (argparse; ``%jacobian``'s grammar in
:mod:`vjp_magic.run.jacobian_line`), runs the cell (:mod:`vjp_magic.run.execute`), hands both
to :func:`vjp_magic.pipeline.pipeline` and returns the result for IPython to display. User
mistakes (:class:`VJPUsageError`) become short ``UsageError`` messages; the cell's own
exceptions propagate exactly as in a plain cell.
"""
from __future__ import annotations

import ast
import math
import sys
import tokenize
from contextlib import contextmanager

from IPython.core.displayhook import DisplayHook
from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments
from IPython.display import display
from traitlets import Float, Int, observe, validate

from .core.errors import VJPUsageError
from .pipeline import Request, hessian_pipeline, pipeline
from .render.options import RenderOptions
from .run.choose import FromCell, FromExpression
from .run.execute import CellSyntaxError, run_cell
from .run.guard import retained_grads_kept
from .run.jacobian_line import checked_numbers, parse_jacobian_line, words
from .teach.coaching import usage_message


def _common_arguments(func):
    for decorator in reversed([
        argument("-p", "--precision", type=int, default=None,
                 help="Significant digits shown (default: VJPMagics.precision)."),
        argument("--threshold", type=int, default=None,
                 help="Rows/columns shown in full before summarising with dots."),
    ]):
        func = decorator(func)
    return func


@magics_class
class VJPMagics(Magics):
    """Magics that infer the ``gradient`` argument of ``backward`` and render derivatives."""

    precision = Int(4, help="Significant digits shown in matrices (capped by the dtype).").tag(
        config=True)
    threshold = Int(10, help="Rows or columns shown in full; larger ones are summarised.").tag(
        config=True)
    edgeitems = Int(3, help="Rows/columns kept at each edge of a summarised matrix.").tag(
        config=True)
    memory_budget = Float(
        0.25, help="Memory one analysis may use: a fraction (< 1) of free memory, or bytes."
    ).tag(config=True)

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
    @argument("--wrt", nargs="+", metavar="NAME", default=None,
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
    @argument("--reveal", action="store_true",
              help="With --check: also show the true derivatives.")
    @argument("--gradcheck", action="store_true",
              help="Replay the cell's tensor operations in float64 against central finite "
                   "differences (custom backward functions included); the cell is not rerun.")
    @argument("--picture", action="store_true",
              help="Draw each Jacobian's nonzero pattern beneath the display.")
    @_common_arguments
    @cell_magic
    def vjp(self, line: str, cell: str):
        """Run the cell, then show the derivatives of its output with respect to its inputs.

        The cell runs in the notebook's namespace exactly like a normal cell. Afterwards the
        output and inputs are tagged, the ``gradient`` argument of ``backward`` is inferred
        from shapes and verified on the autograd graph, and the derivatives are displayed
        as matrices. ``x.grad`` is never changed. The result is returned (and held in ``_``).

        Example::

            %%vjp
            x = torch.linspace(-2, 2, 5, requires_grad=True)
            y = x**2
        """
        __tracebackhide__ = True  # noqa: F841 - the user's errors show their own frames only
        args = self._parse(line)
        if args.reveal and not args.check:
            raise UsageError("--reveal goes with --check NAME (the answer to grade).")
        # the recorded calls rebuild a hook-free graph for the analysis, serve --symbolic
        # and --gradcheck, and vectorise per-sample gradients
        run = run_cell(self.shell, cell, record_ops=True)
        answer = args.check if args.check and args.check.isidentifier() else None
        subject = FromCell(run, self.shell, exclude=(answer,) if answer else ())
        with retained_grads_kept(self.shell.user_ns), _usage_errors(run.mistake):
            try:
                result = pipeline(subject, self._request(
                    args, of=_one_output(args.of), wrt=args.wrt, full=args.full,
                    explain=args.explain, code=args.code, check=args.check,
                    reveal=args.reveal, gradcheck=args.gradcheck, picture=args.picture))
            finally:  # graphs the cell's own backward would have freed are freed now
                run.release()
        if run.final_value is not None and run.final_value is not subject.chosen:
            display(run.final_value)  # as a plain cell would show it, above the result
        # a trailing ';' hides the display, and keeps the result out of Out, as in a plain cell
        if _ends_with_semicolon(cell):
            return None
        self._pictures_beneath(result)
        return result

    # -- %jacobian ----------------------------------------------------------------------------
    @magic_arguments()
    @argument("expression", nargs="+",
              help="OUTPUT [INPUT ...], or OUTPUT-EXPRESSION wrt INPUT [INPUT ...].")
    @argument("--symbolic", action="store_true",
              help="Also derive the Jacobian with SymPy and cross-check it against autograd.")
    @argument("--picture", action="store_true",
              help="Draw the Jacobian's nonzero pattern beneath it (drawn anyway when the "
                   "Jacobian is too large to show in full).")
    @_common_arguments
    @line_magic
    def jacobian(self, line: str):
        """Show the full Jacobian of an output with respect to inputs already in the namespace.

        Syntax::

            %jacobian y x              # names: output first, then inputs
            %jacobian y                # inputs found through the autograd graph
            %jacobian (x**2).sum() wrt x    # any expression as the output, then 'wrt'
            %jacobian torch.clamp(x, -1, 1) wrt x     # options only before the expression

        The Jacobian is the m × n matrix of the tensors flattened row-major, with rows and
        columns labelled y_{i,j} / x_{k,l} where shapes are not plain vectors.
        """
        with _usage_errors():
            args = parse_jacobian_line(line, self.shell.user_ns)
        if args is None:  # -h
            print(self.jacobian.__doc__)
            return None
        result = self._on_expression(pipeline, args, self._request(
            args, wrt=args.input_names, jacobian=True, picture=args.picture))
        self._pictures_beneath(result)
        return result

    # -- %hessian -----------------------------------------------------------------------------
    @magic_arguments()
    @argument("expression", nargs="+",
              help="OUTPUT [INPUT ...], or OUTPUT-EXPRESSION wrt INPUT [INPUT ...].")
    @argument("--symbolic", action="store_true",
              help="Also derive the second derivatives with SymPy and cross-check them.")
    @_common_arguments
    @line_magic
    def hessian(self, line: str):
        """Show the second derivatives of an output with respect to inputs in the namespace.

        Syntax (as %jacobian's)::

            %hessian y x                    # names: output first, then inputs
            %hessian (x**2).sum() wrt x     # any expression as the output, then 'wrt'
            %hessian --symbolic torch.sin(x) wrt x

        An elementwise f at N points gives f'' at each point; a scalar of a vector its n × n
        Hessian; h.hessian(name) is always the full one (output.shape + x.shape + x.shape).
        Several inputs give one Hessian each (no cross terms). x.grad is never changed.
        """
        with _usage_errors():
            args = parse_jacobian_line(line, self.shell.user_ns, magic="hessian")
            if args is not None and args.picture:
                raise VJPUsageError("--picture draws a Jacobian's pattern: use it with %%vjp "
                                    "or %jacobian, not %hessian.")
        if args is None:  # -h
            print(self.hessian.__doc__)
            return None
        return self._on_expression(hessian_pipeline, args,
                                   self._request(args, wrt=args.input_names))

    # -- helpers -----------------------------------------------------------------------------
    def _on_expression(self, run_pipeline, args, request):
        """``%jacobian``'s and ``%hessian``'s run: the line's output expression evaluated in
        the namespace (its calls recorded for --symbolic), then ``run_pipeline`` on it."""
        with retained_grads_kept(self.shell.user_ns), _usage_errors():
            subject = FromExpression.evaluate(self.shell, args.output_source, record_ops=True)
            try:
                return run_pipeline(subject, request)
            finally:
                subject.release()

    def _pictures_beneath(self, result) -> None:
        """Display the result's pictures once the result itself is shown: after the cell, as
        the inline matplotlib backend shows its figures."""
        pictures = result.view.pictures(result)
        if not pictures:
            return
        events = self.shell.events

        def show(*_):
            events.unregister("post_run_cell", show)
            for picture in pictures:
                display(picture)

        events.register("post_run_cell", show)

    def _parse(self, line: str):
        """``%%vjp``'s options; words split outside brackets and strings (``--wrt x[0, 1]``)."""
        try:
            args = self.vjp.parser.parse_args(words(line))
        except UsageError as error:  # argparse's own message
            if "unrecognized arguments: -" not in str(error):
                raise
            raise UsageError(f"Could not read the options {line!r}: {error}. An expression "
                             "that starts with '-' goes in parentheses: (-x); or quote the "
                             "whole expression: --of \"y * -x\".") from None
        with _usage_errors():
            return checked_numbers(args)

    def _request(self, args, **asked) -> Request:
        """The request: the line's flags, with ``%config`` for what the line leaves out."""
        options = RenderOptions(
            precision=self.precision if args.precision is None else args.precision,
            threshold=self.threshold if args.threshold is None else args.threshold,
            edgeitems=self.edgeitems,
        )
        wrt = tuple(asked.pop("wrt") or ())
        return Request(options=options, wrt=wrt, symbolic=args.symbolic,
                       memory_budget=self.memory_budget, **asked)


def _one_output(of: list[str] | None) -> str | None:
    """``--of``'s one output (checked after the cell ran, which keeps what it assigned). An
    expression may have spaces (``--of y.sum() + 1``: the line's words after ``--of``, joined)
    or be quoted (``--of "y.sum() + 1"``)."""
    if not of:
        return None
    source = " ".join(of)
    node = _expression(source)
    if len(of) == 1 and isinstance(node, ast.Constant) and isinstance(node.value, str) \
            and _expression(node.value) is not None:
        return node.value.strip()  # quoted
    if len(of) > 1 and (node is None or isinstance(node, ast.Tuple)):
        raise VJPUsageError("Give one output to --of (e.g. --of y, or an expression such as "
                            "--of y.sum() + 1).")
    return source


def _expression(source: str) -> ast.expr | None:
    """``source`` parsed as one Python expression, or None where it is not one."""
    try:
        return ast.parse(source.strip(), mode="eval").body
    except SyntaxError:
        return None


@contextmanager
def _usage_errors(mistake=None):
    """A :class:`VJPUsageError` inside the block becomes IPython's short ``UsageError``; when
    the cell stopped on a classic ``backward`` mistake, the message coaches on it first."""
    try:
        yield
    except VJPUsageError as error:
        message = str(error) if mistake is None else usage_message(mistake, error)
        raise UsageError(message) from None


def _ends_with_semicolon(source: str) -> bool:
    """Whether the cell's last token is ';' (IPython's own rule for plain cells)."""
    try:
        return DisplayHook.semicolon_at_end_of_expression(source)
    except (tokenize.TokenError, SyntaxError, IndentationError):
        return False


# magic_arguments writes the usage line as "%vjp"; a cell magic is spelled "%%vjp".
VJPMagics.vjp.__doc__ = VJPMagics.vjp.__doc__.replace("\n  %vjp ", "\n  %%vjp ", 1)


def load(shell) -> None:
    """Register the magics on ``shell`` (a fresh instance per load)."""
    magics = VJPMagics(shell=shell)
    shell.register_magics(magics)


def unload(shell) -> None:
    """Remove the magics and their configurable from ``shell``."""
    manager = shell.magics_manager
    manager.magics["cell"].pop("vjp", None)
    manager.magics["line"].pop("jacobian", None)
    manager.magics["line"].pop("hessian", None)
    manager.registry.pop("VJPMagics", None)
    shell.configurables[:] = [c for c in shell.configurables if not isinstance(c, VJPMagics)]


__all__ = ["CellSyntaxError", "VJPMagics", "load", "unload"]
