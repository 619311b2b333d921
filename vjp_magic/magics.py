"""Stage 6 — the thin IPython layer: ``%%vjp``, ``%jacobian``, options via ``%config``.

Only this module imports IPython. User mistakes (:class:`VJPUsageError`) become short
``UsageError`` messages; the cell's own exceptions propagate exactly as in a normal cell.
"""
from __future__ import annotations

import re

import torch
from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring
from IPython.display import display
from traitlets import Float, Int

from . import coaching, symbolic, teaching
from .analysis import differentiate
from .cell import parse_cell
from .errors import VJPUsageError
from .guard import keep_graphs
from .result import RenderOptions, VJPResult
from .tagging import choose_output, find_inputs, graph_leaves


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

    # -- %%vjp ------------------------------------------------------------------------------
    @magic_arguments()
    @argument("--wrt", nargs="+", metavar="NAME", default=None,
              help="Inputs to differentiate with respect to (default: every named leaf tensor "
                   "with requires_grad=True the output depends on). Expressions such as "
                   "layer.weight are allowed.")
    @argument("--of", nargs="+", metavar="NAME", default=None,
              help="The output (default: the cell's final expression, else the last assigned "
                   "tensor with autograd history).")
    @argument("--full", action="store_true",
              help="No point-structure inference: the plain full Jacobian.")
    @argument("--explain", action="store_true",
              help="Show the tutorial's steps for this cell: J, each v, and vᵀJ.")
    @argument("--code", action="store_true",
              help="Show plain PyTorch code (backward with gradient=...) reproducing the numbers.")
    @argument("--symbolic", action="store_true",
              help="Also derive the formula with SymPy and cross-check it against autograd.")
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
        args = self._parse(self.vjp, line)
        rng_state = torch.random.get_rng_state() if args.symbolic else None
        before = symbolic.snapshot(self.shell.user_ns, self.shell.transform_cell(cell)) \
            if args.symbolic else None
        final_value, final_source, assigned, log = self._run_cell(cell)
        ns = self.shell.user_ns
        try:
            if args.of:
                if len(args.of) > 1:
                    raise VJPUsageError("Give one output to --of (e.g. --of y).")
                output_name = args.of[0]
                output = self._lookup(output_name, "--of")
            else:
                try:
                    output_name, output = choose_output(ns, assigned, final_value, final_source)
                except VJPUsageError as error:
                    raise VJPUsageError(_number_output_hint(ns, assigned) or str(error)) from None
            inputs = self._inputs(args.wrt, output, output_name, assigned)
            result = self._differentiate(output, inputs, output_name, args, full=args.full)
        except VJPUsageError as error:
            if log.mistake is not None:  # the cell stopped on a classic mistake: coach anyway
                message = coaching.usage_message(log.mistake, error)
                log.release()
                raise UsageError(message) from None
            raise UsageError(str(error)) from None
        if final_value is not None and final_value is not output:
            display(final_value)
        result.backward_log = log
        teaching.enrich(result, explain=args.explain, show_code=args.code, log=log)
        log.release()
        if args.symbolic:
            symbolic.attach(result, source=self.shell.transform_cell(cell), namespace=ns,
                            output_source=None, rng_state=rng_state, before=before)
        return result

    # -- %jacobian ----------------------------------------------------------------------------
    @magic_arguments()
    @argument("expression", nargs="+",
              help="OUTPUT [INPUT ...], or OUTPUT-EXPRESSION wrt INPUT [INPUT ...].")
    @argument("--symbolic", action="store_true",
              help="Also derive the Jacobian with SymPy and cross-check it against autograd.")
    @_common_arguments
    @line_magic
    def jacobian(self, line: str):
        """Show the full Jacobian of an output with respect to inputs already in the namespace.

        Syntax::

            %jacobian y x              # names: output first, then inputs
            %jacobian y                # inputs found through the autograd graph
            %jacobian (x**2).sum() wrt x    # any expression as the output, then 'wrt'

        The Jacobian is the m × n matrix of the tensors flattened row-major, with rows and
        columns labelled y_{i,j} / x_{k,l} where shapes are not plain vectors.
        """
        args = self._parse(self.jacobian, line)
        tokens = list(args.expression)
        if "wrt" in tokens:
            at = tokens.index("wrt")
            output_source, input_names = " ".join(tokens[:at]), tokens[at + 1:]
            if not input_names:
                raise UsageError("Name the inputs after 'wrt', e.g. %jacobian (x**2).sum() wrt x")
        else:
            output_source, input_names = tokens[0], tokens[1:]
        try:
            output = self._lookup(output_source, "output")
            output_name = output_source
            inputs = self._inputs(input_names or None, output, output_name, [])
            result = self._differentiate(output, inputs, output_name, args, full=False)
        except VJPUsageError as error:
            raise UsageError(str(error)) from None
        result.show_jacobian = True
        if args.symbolic:
            symbolic.attach(result, source=None, namespace=self.shell.user_ns,
                            output_source=output_source)
        return result

    # -- helpers -----------------------------------------------------------------------------
    def _parse(self, magic, line: str):
        try:
            args = parse_argstring(magic, line)
        except (UsageError, ValueError, SystemExit) as error:  # argparse or shlex
            hint = ""
            if "unrecognized arguments: -" in str(error):
                hint = " An expression that starts with '-' goes in parentheses: (-x)."
            if isinstance(error, UsageError) and not hint:
                raise
            raise UsageError(f"Could not read the options {line!r}: {error}.{hint}") from None
        if args.precision is not None and not 1 <= args.precision <= 17:
            raise UsageError(f"-p/--precision is a number of significant digits from 1 to 17, "
                             f"not {args.precision}.")
        if args.threshold is not None and args.threshold < 2:
            raise UsageError(f"--threshold is how many rows/columns to show in full (at least 2),"
                             f" not {args.threshold}.")
        return args

    def _run_cell(self, cell: str):
        """Execute the cell like IPython would; return its final value and assigned names."""
        __tracebackhide__ = True  # noqa: F841
        shell = self.shell
        source = shell.transform_cell(cell)
        filename = shell.compile.cache(source, shell.execution_count, raw_code=cell)
        try:
            parsed = parse_cell(source, filename)
        except SyntaxError as error:
            raise CellSyntaxError(error, shell) from None
        body = shell.transform_ast(parsed.body)
        final_value = None
        # Values the cell's names held before it ran: a name counts as assigned by the cell
        # only if it was re-bound, so lines a coached mistake stopped never pick the output.
        before = {n: shell.user_ns[n] for n in parsed.assigned_names if n in shell.user_ns}
        with keep_graphs(filename, shell.user_ns) as log:
            try:
                exec(shell.compile(body, filename, "exec"), shell.user_global_ns, shell.user_ns)
                if parsed.final_expr is not None:
                    expression = shell.compile(parsed.final_expr, filename, "eval")
                    final_value = eval(expression, shell.user_global_ns, shell.user_ns)
            except RuntimeError as error:
                # The cell's own backward made a classic mistake: that statement failed and
                # the rest of the cell did not run; the magic coaches and still analyses.
                # Any other exception fails the cell as usual.
                log.mistake = coaching.classify(error, log, source)
                if log.mistake is None:
                    raise
        ns = shell.user_ns
        rebound = [n for n in parsed.assigned_names
                   if n in ns and (n not in before or ns[n] is not before[n])]
        if log.mistake is None:  # a completed cell: in-place updates (y += 1) count too
            rebound += [n for n in parsed.assigned_names if n in ns and n not in rebound]
        return final_value, parsed.final_source, rebound, log

    def _lookup(self, source: str, role: str):
        ns = self.shell.user_ns
        if source.isidentifier():
            if source not in ns:
                close = [n for n in ns if n.lower() == source.lower() and not n.startswith("_")]
                hint = f" Did you mean {close[0]}?" if close else ""
                raise VJPUsageError(f"No variable named {source!r} ({role}).{hint}")
            return ns[source]
        try:
            return eval(source, self.shell.user_global_ns, ns)
        except SyntaxError as error:
            hint = ""
            if re.search(r"\.\d", source):  # net.0.weight, as named_parameters() spells it
                bracketed = re.sub(r"[.](\d+)", r"[\1]", source)
                hint = f" Index with brackets: {bracketed}"
            raise VJPUsageError(f"Could not read {source!r} ({role}): {error.msg}.{hint}") from None
        except NameError as error:
            raise VJPUsageError(f"{error} ({role}).") from None
        except Exception as error:  # the user's expression failed: say so, no traceback
            raise VJPUsageError(
                f"Could not evaluate {source!r} ({role}): {type(error).__name__}: {error}"
            ) from None

    def _inputs(self, names, output, output_name, assigned):
        if names:
            inputs = {}
            for name in names:
                inputs[name] = self._lookup(name, "--wrt")
            return inputs
        if isinstance(output, torch.Tensor) and output.requires_grad:
            return find_inputs(output, self.shell.user_ns, assigned, output_name)
        return {}

    def _differentiate(self, output, inputs, output_name, args, full) -> VJPResult:
        if not inputs and isinstance(output, torch.Tensor) and output.requires_grad:
            leaves = graph_leaves(output)
            if not leaves:
                raise VJPUsageError(f"{output_name} depends on no tensor that requires grad.")
        try:
            result = differentiate(
                output, inputs, output_name=output_name, full=full,
                memory_budget=self.memory_budget,
            )
        except RuntimeError as error:
            if "second time" in str(error):
                raise VJPUsageError(
                    f"The graph of {output_name} was freed before vjp_magic could read it "
                    "(a backward() call outside this cell). Recompute the output, or use "
                    "retain_graph=True."
                ) from None
            raise
        result.options = RenderOptions(
            precision=args.precision if args.precision is not None else self.precision,
            threshold=args.threshold if args.threshold is not None else self.threshold,
            edgeitems=self.edgeitems,
        )
        return result


class CellSyntaxError(Exception):
    """A syntax error in a ``%%vjp`` cell, shown exactly as IPython shows one in a plain cell
    (no frames from the magic); the original ``SyntaxError`` is ``.syntax_error``."""

    def __init__(self, error: SyntaxError, shell):
        super().__init__(str(error))
        self.syntax_error = error
        self._shell = shell

    def _render_traceback_(self) -> list[str]:
        error = self.syntax_error
        return self._shell.SyntaxTB.structured_traceback(type(error), error, [])


CellSyntaxError.__name__ = CellSyntaxError.__qualname__ = "SyntaxError"  # as Jupyter names it


def _number_output_hint(ns, assigned) -> str | None:
    """A clearer message when the cell's last assignment is a Python number (e.g. ``.item()``)."""
    for name in reversed(assigned):
        value = ns.get(name)
        if isinstance(value, (int, float, complex)) and not isinstance(value, bool):
            return (
                f"{name} is a Python {type(value).__name__} ({value!r}), not a tensor: .item(), "
                "float() and the math module leave autograd. Keep it a tensor (e.g. "
                f"{name} = (x**2).sum()) and vjp_magic shows its derivatives."
            )
        if isinstance(value, torch.Tensor):
            return None
    return None


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
    manager.registry.pop("VJPMagics", None)
    shell.configurables[:] = [c for c in shell.configurables if not isinstance(c, VJPMagics)]


__all__ = ["VJPMagics", "load", "unload"]
