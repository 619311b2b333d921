"""Stage 6 — the thin IPython layer: ``%%vjp``, ``%jacobian``, options via ``%config``.

Only this module imports IPython. User mistakes (:class:`VJPUsageError`) become short
``UsageError`` messages; the cell's own exceptions propagate exactly as in a normal cell.
"""
from __future__ import annotations

import ast
import asyncio
import inspect
import io
import math
import re
import sys
import tokenize
from collections import ChainMap
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from types import SimpleNamespace

import torch
from IPython.core.displayhook import DisplayHook
from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments
from IPython.display import display
from traitlets import Float, Int, observe, validate

from .teach import coaching

from .symbolic import derive as symbolic

from .teach import teaching
from .core.analysis import differentiate
from .core.cell import parse_cell
from .core.errors import TORCH_FREED_GRAPH, TORCH_INPLACE, VJPUsageError
from .run.guard import keep_graphs, retained_grads_kept
from .run.record import recording
from .core.result import RenderOptions, VJPResult
from .core.tagging import choose_output, depends_on, find_inputs, graph_leaves, is_visible_name


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
        final_value, final_source, assigned, log, ran = self._run_cell(cell, args.symbolic)
        with retained_grads_kept(self.shell.user_ns):
            try:
                result = self._vjp_result(args, final_value, final_source, assigned, log, ran)
                # a trailing ';' hides the display, and keeps the result out of Out, as in a
                # plain cell
                return None if _ends_with_semicolon(cell) else result
            finally:  # graphs the cell's own backward would have freed are freed now
                log.release()
                if ran.record is not None:
                    ran.record.release()

    def _vjp_result(self, args, final_value, final_source, assigned, log, ran):
        """After the cell ran: choose the output and inputs, differentiate, teach."""
        __tracebackhide__ = True  # noqa: F841
        ns = self.shell.user_ns
        found = ChainMap(ran.targets, ns)  # the cell's names, and targets such as d['y']
        try:
            if args.of:
                if len(args.of) > 1:
                    raise VJPUsageError("Give one output to --of (e.g. --of y).")
                output_name = args.of[0]
                output = self._lookup(output_name, "--of")
            else:
                try:
                    output_name, output = choose_output(found, assigned, final_value,
                                                        final_source, used=ran.reads)
                except VJPUsageError as error:
                    raise VJPUsageError(_number_output_hint(found, assigned) or str(error)) \
                        from None
            inputs = self._inputs(args.wrt, output, output_name, assigned)
            result = self._differentiate(output, inputs, output_name, args, full=args.full)
        except VJPUsageError as error:
            if log.mistake is not None:  # the cell stopped on a classic mistake: coach anyway
                raise UsageError(coaching.usage_message(log.mistake, error)) from None
            raise UsageError(str(error)) from None
        if final_value is not None and final_value is not output:
            display(final_value)
        teaching.enrich(result, explain=args.explain, show_code=args.code, log=log)
        if args.symbolic:
            symbolic.attach(result, record=ran.record, namespace=ns, output_source=None)
        result.release_graph()
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
            %jacobian torch.clamp(x, -1, 1) wrt x     # options only before the expression

        The Jacobian is the m × n matrix of the tensors flattened row-major, with rows and
        columns labelled y_{i,j} / x_{k,l} where shapes are not plain vectors.
        """
        args, output_source, input_names = self._parse_jacobian(line)
        if args is None:  # -h
            print(self.jacobian.__doc__)
            return None
        record = None
        try:
            with retained_grads_kept(self.shell.user_ns):
                with recording() if args.symbolic else nullcontext() as record:
                    output = self._lookup(output_source, "output")
                output_name = output_source
                inputs = self._inputs(input_names or None, output, output_name, [], role="wrt")
                result = self._differentiate(output, inputs, output_name, args, full=False)
                result.show_jacobian = True
                if args.symbolic:
                    symbolic.attach(result, record=record, namespace=self.shell.user_ns,
                                    output_source=output_source)
            result.release_graph()
            return result
        except VJPUsageError as error:
            raise UsageError(str(error)) from None
        finally:
            if record is not None:
                record.release()

    # -- helpers -----------------------------------------------------------------------------
    def _parse(self, magic, line: str):
        try:  # words split outside brackets and strings: --wrt x[0, 1] --of d['y']
            args = magic.parser.parse_args(_words(line))
        except (UsageError, ValueError, SystemExit) as error:  # argparse or shlex
            hint = ""
            if "unrecognized arguments: -" in str(error):
                hint = " An expression that starts with '-' goes in parentheses: (-x)."
            if isinstance(error, UsageError) and not hint:
                raise
            raise UsageError(f"Could not read the options {line!r}: {error}.{hint}") from None
        return _checked_numbers(args)

    def _parse_jacobian(self, line: str):
        """``%jacobian``'s line: leading options, then OUTPUT [INPUT ...] or EXPR wrt INPUT ...

        Only known options before the expression are options, so ``torch.clamp(x, -1, 1)``
        and ``torch.where(x > 0, x, -x)`` are read as Python. Returns (options, output, inputs);
        options is None for -h/--help.
        """
        spans = _word_spans(line)
        words = [line[a:b] for a, b in spans]
        if words[:1] in (["-h"], ["--help"]):
            return None, None, None
        args, used = _jacobian_options(words, self.shell.user_ns)
        rest = line[spans[used][0]:].strip() if used < len(spans) else ""
        if not rest:
            raise UsageError("Name the output: %jacobian y x, or %jacobian (x**2).sum() wrt x.")
        rest_words = words[used:]
        if "wrt" in rest_words:
            at = spans[used + rest_words.index("wrt")]
            output_source, inputs = line[spans[used][0]:at[0]].strip(), line[at[1]:]
            input_names = _words(inputs, commas=True)
            if not output_source or not input_names:
                raise UsageError("Give the output before 'wrt' and the inputs after it, e.g. "
                                 "%jacobian (x**2).sum() wrt x")
        elif _is_expression(rest):
            output_source, input_names = rest, []
        else:
            output_source, input_names = rest_words[0], _words(" ".join(rest_words[1:]), True)
        return _checked_numbers(args), output_source, input_names

    def _run_cell(self, cell: str, record_ops: bool = False):
        """Execute the cell like IPython would; return its final value and source, what it
        assigned (names and targets such as ``d['y']``, in binding order), the backward log,
        and ``ran``: ``.targets`` (values of targets that are not plain names), ``.reads``
        (the names the cell reads), ``.record`` (its torch operations, when ``record_ops``)."""
        __tracebackhide__ = True  # noqa: F841
        shell = self.shell
        source = shell.transform_cell(cell)
        filename = shell.compile.cache(source, shell.execution_count, raw_code=cell)
        try:
            parsed = parse_cell(source, filename)
            body, final = self._compile(parsed, filename)
        except SyntaxError as error:
            raise CellSyntaxError(error, shell) from None
        final_value = None
        # The namespace before the cell ran: a name counts as assigned by the cell only if it
        # was re-bound, so lines a coached mistake stopped never pick the output.
        before = dict(shell.user_ns)
        with keep_graphs(filename) as log, \
                recording() if record_ops else nullcontext() as record:
            try:
                self._run_code(body)
                if final is not None:
                    final_value = self._run_code(final)
            except RuntimeError as error:
                # The cell's own backward made a classic mistake: that statement failed and
                # the rest of the cell did not run; the magic coaches and still analyses.
                # Any other exception fails the cell as usual.
                log.record_failure(error)
                log.mistake = coaching.classify(error, log, source)
                if log.mistake is None:
                    raise
        assigned, targets = self._assigned(parsed, before, complete=log.mistake is None)
        ran = SimpleNamespace(targets=targets, reads=parsed.loaded_names, record=record)
        return final_value, parsed.final_source, assigned, log, ran

    def _compile(self, parsed, filename: str):
        """Code objects for the cell's statements and its final expression; top-level
        ``await`` is allowed where IPython allows it (autoawait)."""
        shell = self.shell
        flags = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT if shell.autoawait else 0
        with shell.compile.extra_flags(flags):
            body = shell.compile(shell.transform_ast(parsed.body), filename, "exec")
            final = None if parsed.final_expr is None else shell.compile(
                parsed.final_expr, filename, "eval")
        return body, final

    def _run_code(self, code):
        """Run a code object in the user namespace; one with top-level ``await`` (a coroutine
        code object) runs on the shell's loop runner, as IPython runs such a cell."""
        __tracebackhide__ = True  # noqa: F841
        shell = self.shell
        value = eval(code, shell.user_global_ns, shell.user_ns)
        if code.co_flags & inspect.CO_COROUTINE:
            value = _run_coroutine(value, shell.loop_runner)
        return value

    def _assigned(self, parsed, before: dict, complete: bool):
        """What the cell bound, in binding order: its targets (names re-bound; in a completed
        cell also in-place updates and targets such as ``d['y']``, ``net.out``), then names
        re-bound another way (``%time y = ...``, ``exec``, ``globals()``). Returns the order and
        the values of the targets that are not plain names."""
        ns = self.shell.user_ns
        missing = object()

        def changed(name):
            return name in ns and ns[name] is not before.get(name, missing)

        order, values = [], {}
        for target in parsed.targets:
            key = target if target.isidentifier() and (
                changed(target) or (complete and target in ns)) else None
            if complete and not target.isidentifier():
                key, value = self._target(target)
                if key is not None and not key.isidentifier():
                    values[key] = value
            if key is not None:
                order = [k for k in order if k != key] + [key]
        order += [n for n in ns if is_visible_name(n) and changed(n) and n not in order]
        return order, values

    def _target(self, source: str):
        """A subscript or attribute target after the cell: (its source, its value) when it
        holds a tensor with autograd history, else (None, None). Indexing into a tensor
        (``y[0] = ...``) counts as assigning that tensor."""
        node = ast.parse(source, mode="eval").body
        try:
            while isinstance(node, (ast.Subscript, ast.Attribute)):
                if not isinstance(self._evaluate(node.value), torch.Tensor):
                    break
                if isinstance(node, ast.Attribute):
                    return None, None  # x.grad = None, w.data = ...: not an output
                node = node.value
            value = self._evaluate(node)
        except Exception:  # noqa: BLE001 - no longer evaluates (del d['y'], a loop's index)
            return None, None
        if isinstance(value, torch.Tensor) and value.grad_fn is not None:
            return ast.unparse(node), value
        return None, None

    def _evaluate(self, node: ast.expr):
        expression = ast.fix_missing_locations(ast.Expression(body=node))
        return eval(compile(expression, "<target>", "eval"), self.shell.user_global_ns,
                    self.shell.user_ns)

    def _lookup(self, source: str, role: str):
        ns = self.shell.user_ns
        if source.isidentifier():
            if source not in ns:
                close = [n for n in ns if n.lower() == source.lower() and is_visible_name(n)]
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

    def _inputs(self, names, output, output_name, assigned, role="--wrt"):
        if names:
            inputs = {name: self._lookup(name, role) for name in names}
            for name, value in inputs.items():
                if _made_off_graph(name, value, output):
                    raise VJPUsageError(self._new_tensor_message(name, output, output_name))
            return inputs
        if isinstance(output, torch.Tensor) and output.requires_grad:
            return find_inputs(output, self.shell.user_ns, assigned, output_name)
        return {}

    def _new_tensor_message(self, source: str, output, output_name: str) -> str:
        """An input expression (``x[0]``, ``w.T``) made a new tensor off the output's graph."""
        base, outer, value = None, None, None
        node = ast.parse(source, mode="eval").body
        while base is None and isinstance(node, (ast.Subscript, ast.Attribute, ast.Call)):
            outer, node = node, node.func if isinstance(node, ast.Call) else node.value
            if any(isinstance(part, ast.Call) for part in ast.walk(node)):
                continue  # never call the user's functions again
            try:
                value = self._evaluate(node)
            except Exception:  # noqa: BLE001
                continue
            if isinstance(value, torch.Tensor) and depends_on(output, value):
                base = ast.unparse(node)
        if base is None:
            advice = "Differentiate with respect to the named tensor it was made from"
        else:
            index = _index_hint(outer, value) if isinstance(outer, ast.Subscript) else None
            advice = (f"Differentiate with respect to {base} and index the result, e.g. "
                      f"r.derivatives['{base}'][{index}]" if index else
                      f"Differentiate with respect to {base} and transform the result "
                      f"(r.derivatives['{base}'])")
        return (f"{source} makes a new tensor, and {output_name} was not computed from it, so "
                f"every derivative would be a false 0. {advice}; or compute {output_name} from "
                f"that tensor in the cell (t = {source}, then {output_name} from t, --wrt t).")

    def _differentiate(self, output, inputs, output_name, args, full) -> VJPResult:
        if not inputs and isinstance(output, torch.Tensor) and output.requires_grad:
            leaves = graph_leaves(output)
            if not leaves:
                raise VJPUsageError(f"{output_name} depends on no tensor that requires grad.")
        try:
            result = differentiate(  # the graph is kept until teaching has read it
                output, inputs, output_name=output_name, full=full,
                memory_budget=self.memory_budget, keep_graph=True,
            )
        except RuntimeError as error:
            message = _graph_error_message(str(error), output_name, inputs)
            if message is None:
                raise
            raise VJPUsageError(message) from None
        result.options = RenderOptions(
            precision=args.precision if args.precision is not None else self.precision,
            threshold=args.threshold if args.threshold is not None else self.threshold,
            edgeitems=self.edgeitems,
        )
        return result


def _ends_with_semicolon(source: str) -> bool:
    """Whether the cell's last token is ';' (IPython's own rule for plain cells)."""
    try:
        return DisplayHook.semicolon_at_end_of_expression(source)
    except (tokenize.TokenError, SyntaxError, IndentationError):
        return False


def _run_coroutine(coroutine, loop_runner):
    """Run a cell's top-level ``await`` code: on the shell's loop runner, as IPython does, or,
    where an event loop already runs this thread (ipykernel), on a fresh loop in a helper
    thread, since a magic cannot await."""
    __tracebackhide__ = True  # noqa: F841
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return loop_runner(coroutine)
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def _graph_error_message(text: str, output_name: str, inputs) -> str | None:
    """PyTorch's error when the output's graph can no longer be read, as advice; else None."""
    if TORCH_FREED_GRAPH in text:
        return (f"The graph of {output_name} was freed before vjp_magic could read it "
                "(a backward() call outside this cell). Recompute the output, or use "
                "retain_graph=True.")
    if TORCH_INPLACE in text:
        changed = [n for n, t in inputs.items() if isinstance(t, torch.Tensor) and t._version]
        which = f" ({', '.join(changed)})" if changed else ""
        return (f"{output_name} can no longer be differentiated: a tensor it was computed "
                f"from{which} was modified in place afterwards (e.g. w -= lr * w.grad under "
                "torch.no_grad(), w.add_(...), w[0] = ...), and autograd needs its old value. "
                f"Compute {output_name} after the update, or run the update in a later cell.")
    return None


def _made_off_graph(source: str, value, output) -> bool:
    """An input expression (not a plain name) whose value is a new tensor that ``output``'s
    graph does not reach: differentiating with respect to it would give false zeros."""
    return (not source.isidentifier() and isinstance(value, torch.Tensor)
            and value.grad_fn is not None and isinstance(output, torch.Tensor)
            and output.requires_grad and not depends_on(output, value))


def _index_hint(subscript: ast.Subscript, base: torch.Tensor) -> str | None:
    """``x[0]`` → ``..., 0`` (the input's own axes come last in ``r.derivatives``)."""
    items = subscript.slice.elts if isinstance(subscript.slice, ast.Tuple) else [subscript.slice]
    if any(isinstance(i, ast.Constant) and i.value in (Ellipsis, None) for i in items):
        return None
    rest = [":"] * max(base.dim() - len(items), 0)
    return ", ".join(["..."] + [ast.unparse(i) for i in items] + rest)


_SKIPPED_TOKENS = {tokenize.NEWLINE, tokenize.NL, tokenize.ENDMARKER, tokenize.INDENT,
                   tokenize.DEDENT, tokenize.COMMENT}


def _word_spans(text: str, commas: bool = False) -> list[tuple[int, int]]:
    """(start, end) of each word of a one-line ``text``, split at whitespace (and commas)
    outside brackets and strings: ``f(x, -1) wrt x[0, 1]`` has three words."""
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(text).readline))
    except (tokenize.TokenError, SyntaxError):  # an unclosed bracket or string
        return [m.span() for m in re.finditer(r"[^\s,]+" if commas else r"\S+", text)]
    spans: list[list[int]] = []
    depth, joined = 0, False
    for token in tokens:
        if token.type in _SKIPPED_TOKENS or token.start[0] != 1:
            continue
        (_, start), (_, end) = token.start, token.end
        if commas and depth == 0 and token.string == ",":
            joined = False
            continue
        if spans and joined and (depth > 0 or start == spans[-1][1]):
            spans[-1][1] = end
        else:
            spans.append([start, end])
        joined = True
        if token.type == tokenize.OP:
            depth += (token.string in "([{") - (token.string in ")]}")
    return [(a, b) for a, b in spans]


def _words(text: str, commas: bool = False) -> list[str]:
    return [text[a:b] for a, b in _word_spans(text, commas)]


def _is_expression(source: str) -> bool:
    try:
        ast.parse(source, mode="eval")
    except SyntaxError:
        return False
    return True


_JACOBIAN_NUMBERS = {"-p": "precision", "--precision": "precision", "--threshold": "threshold"}


def _jacobian_options(words: list[str], namespace) -> tuple[SimpleNamespace, int]:
    """The known options at the start of a ``%jacobian`` line, and how many words they take."""
    args = SimpleNamespace(symbolic=False, precision=None, threshold=None)
    used = 0
    while used < len(words):
        word = words[used]
        if word == "--symbolic":
            args.symbolic, used = True, used + 1
            continue
        flag, value = ("-p", word[2:]) if re.fullmatch(r"-p-?\d+", word) else (
            word.partition("=")[::2] if word.startswith("--") else (word, ""))
        key = _JACOBIAN_NUMBERS.get(flag)
        if key is None:
            if re.fullmatch(r"--[A-Za-z][\w-]*(=.*)?", word):
                raise UsageError(f"Unknown option {flag} for %jacobian: the options are "
                                 "--symbolic, -p N (--precision N) and --threshold N, before "
                                 "the expression.")
            break
        if not value:
            following = words[used + 1] if used + 1 < len(words) else ""
            if re.fullmatch(r"-?\d+", following):
                value, used = following, used + 1
            elif flag == "-p" and "p" in namespace:
                break  # -p is an expression: minus the user's own p
            else:
                raise UsageError(f"{flag} takes a whole number, e.g. %jacobian {flag} 3 y x.")
        try:
            setattr(args, key, int(value))
        except ValueError:
            raise UsageError(f"{flag} takes a whole number, not {value!r}.") from None
        used += 1
    return args, used


def _checked_numbers(args):
    """Refuse a precision or threshold that cannot be shown."""
    if args.precision is not None and not 1 <= args.precision <= 17:
        raise UsageError(f"-p/--precision is a number of significant digits from 1 to 17, "
                         f"not {args.precision}.")
    if args.threshold is not None and args.threshold < 2:
        raise UsageError(f"--threshold is how many rows/columns to show in full (at least 2),"
                         f" not {args.threshold}.")
    return args


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
