"""Running a ``%%vjp`` cell exactly as IPython runs a plain cell, into one :class:`CellRun`.

The cell's source is transformed (IPython syntax → Python) once and parsed once; its
statements run in the user's namespace, then its final expression, whose value is kept.
While it runs the guard keeps every graph its own ``backward`` frees (:mod:`.guard`) and,
where asked, its torch calls are recorded (:mod:`.record`; not where it can call
``torch.compile``'d code: :mod:`.compiled`). A classic ``backward``
mistake stops the cell but not the magic (:mod:`.mistakes`); any other exception is the
user's own and propagates.

The IPython shell is passed in as an object (``transform_cell``, ``compile``,
``transform_ast``, ``autoawait``, ``loop_runner``, ``user_ns``, ``user_global_ns``,
``SyntaxTB``); nothing here imports IPython.
"""
from __future__ import annotations


import ast
import asyncio
import inspect
import os
import types
from collections import ChainMap
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import torch

from ..core.cell import CAPTURE_NAME, ParsedCell, capture_targets, parse_cell
from ..core.modes import users_modes
from ..core.origin import torchs
from ..core.torch_api import NO_GRAPH
from ..core.tagging import is_visible_name
from .backward_log import BackwardLog
from .compiled import recorded
from .grad_advice import requires_grad_advice, second_derivative_advice
from . import guard as guard_module
from . import record as record_module
from .guard import freed_if_raised, keep_graphs
from .mistakes import CellMistake, classify, creation_advice, numpy_in_torch
from .record import KeptRecord, OpRecord, is_caller


@dataclass(eq=False)
class CellRun:
    """What running the cell left: everything the later stages read about it."""

    cell: ParsedCell  # the parsed cell (statements, final expression, targets, reads)
    source: str  # the Python source that ran (IPython syntax transformed)
    final_value: object  # the final expression's value (None when the cell has none)
    assigned: list[str]  # names and targets the cell bound, in binding order
    targets: dict[str, object]  # values of bound targets that are not names: d['y'], net.out
    log: BackwardLog  # the cell's own backward/grad calls
    record: OpRecord | None = None  # its torch calls, when recorded (for --symbolic)
    namespace: dict = field(default_factory=dict, repr=False)  # the user's namespace

    @property
    def final_source(self) -> str | None:
        return self.cell.final_source

    @property
    def reads(self) -> list[str]:
        """The names the cell reads, in order of first use."""
        return self.cell.loaded_names

    @property
    def mistake(self) -> CellMistake | None:
        """The classic ``backward`` mistake that stopped the cell, if one did."""
        return self.log.mistake

    @property
    def found(self) -> ChainMap:
        """The cell's names, and its targets such as ``d['y']``, as one mapping."""
        return ChainMap(self.targets, self.namespace)

    def release(self, keep_for=None) -> KeptRecord | None:
        """Free the graphs the cell's own backward freed (as a plain cell would have), and
        drop the tensors held for coaching; the record is dropped too, or kept while
        ``keep_for`` (the output) lives, for a later ``%jacobian`` on it
        (:class:`~.record.KeptRecord`, returned; None where it is not kept)."""
        self.log.release()
        kept = KeptRecord.keep(self.record, keep_for)
        if kept is None and self.record is not None:
            self.record.release()
        return kept


class NoGraph(RuntimeError):
    """The cell's own ``backward`` found no graph (PyTorch's "element 0 of tensors does not
    require grad", quoted): still the ``RuntimeError`` PyTorch raised, to code that catches
    one, shown as one line of advice, no traceback (IPython's ``_render_traceback_``)."""

    def _render_traceback_(self) -> list[str]:
        return [f"RuntimeError: {self}"]


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


def run_cell(shell, cell: str, *, record_ops: bool = False) -> CellRun:
    """Execute ``cell`` in ``shell``'s namespace as IPython would, and describe what it did.

    A ``RuntimeError`` from the cell's own ``backward`` that :func:`~.mistakes.classify`
    recognises stops the cell (the rest does not run) and is kept as ``run.mistake``; any
    other exception propagates as in a plain cell (the guard is undone first).
    """
    __tracebackhide__ = True  # the user's errors show their own frames only
    source = transform_cell(shell, cell)
    filename = shell.compile.cache(source, shell.execution_count, raw_code=cell)
    try:
        parsed, body, final = _compiled(shell, source, filename)
    except SyntaxError as error:
        raise CellSyntaxError(error, shell) from None
    final_value = None
    # The namespace before the cell ran: a name counts as assigned by the cell only if it
    # was re-bound, so lines a coached mistake stopped never pick the output.
    before = dict(shell.user_ns)
    captured: dict = {}  # what its subscript and attribute targets held, as assigned
    record_run = recorded(shell.user_ns, record_ops, (body, final),
                          (parsed.body, parsed.final_expr))  # (none where it calls compiled code)
    with keep_graphs(filename) as log, record_run as record, freed_if_raised(log):
        log.ops = record  # where the record can rebuild a graph, the guard need not keep it
        try:
            with users_modes():  # the user's torch modes, set aside by the magic: the cell's
                _run_body(shell, body, captured)
                if final is not None:
                    final_value = _run_code(shell, final)
        except (RuntimeError, TypeError) as error:  # TypeError: gradient=1, a list
            log.record_failure(error)
            log.mistake = classify(error, log, source)
            if log.mistake is None:
                coached = nothing_to_differentiate(error, log, source, shell.user_ns)
                if coached is not None:
                    raise NoGraph(coached) from None
                advice = creation_advice(error, source, filename)
                if advice is not None:  # beneath PyTorch's traceback, which stays
                    error.add_note(advice)
                raise user_frames_only(error)  # noqa: B904 - the user's own error
        except BaseException as error:  # noqa: BLE001 - the user's own error, re-raised
            advice = creation_advice(error, source, filename) \
                if isinstance(error, AttributeError) else None  # x.grad.zero_() too early
            if advice is not None:  # beneath Python's traceback, which stays
                error.add_note(advice)
            raise user_frames_only(error)  # noqa: B904 - the user's own error
    assigned, targets = _assigned(shell, parsed, before, captured,
                                  complete=log.mistake is None)
    return CellRun(cell=parsed, source=source, final_value=final_value, assigned=assigned,
                   targets=targets, log=log, record=record, namespace=shell.user_ns)


# What a cell's text determines, kept by the text and the shell state that fully determines
# it (a cell run again is not transformed, parsed or compiled again): IPython's static input
# transformation by (text, its transformers), the parsed cell and its code objects by (source,
# file name, the compiler's flags, autoawait) where no AST transformer is registered (one
# may change a fresh tree each run). Bounded, oldest dropped first.
_STATIC: dict = {}
_COMPILED: dict = {}
_KEPT_MAX = 64


def transform_cell(shell, cell: str) -> str:
    """``shell.transform_cell(cell)``, IPython's own, with the part that depends on the text
    alone (its input transformer manager's static transforms) taken from :data:`_STATIC`
    where the same text went through the same transformers before; the dynamic part (single
    lines, post-transformers) runs every time, as it reads the namespace."""
    manager = getattr(shell, "input_transformer_manager", None)
    with _cleaned_once(manager):
        return _transformed(shell, manager, cell)


@contextmanager
def _cleaned_once(manager):
    """IPython ran its cleanup transforms on the whole cell, this body included, before it
    called the magic: only its own (idempotent: prompts, indentation) run on the body again,
    so a cleanup transform a user registered acts once, as in a plain cell."""
    cleanup = getattr(manager, "cleanup_transforms", None)
    if not isinstance(cleanup, list):
        yield
        return
    manager.cleanup_transforms = [t for t in cleanup if _ipython_own(t)]
    try:
        yield
    finally:
        manager.cleanup_transforms = cleanup


def _ipython_own(transform) -> bool:
    module = getattr(transform, "__module__", None) or type(transform).__module__
    return module.split(".")[0] == "IPython"


def _transformed(shell, manager, cell: str) -> str:
    key = _static_key(manager, cell)
    if key is None:
        return shell.transform_cell(cell)
    static = manager.transform_cell  # the class's method: no instance attribute is set now

    def cached(text: str) -> str:
        if text != cell:  # another caller (another thread): IPython's own
            return static(text)
        found = _STATIC.get(key)
        if found is None:
            found = _kept(_STATIC, key, static(text))
        return found

    manager.transform_cell = cached  # for this call only (an instance attribute)
    try:
        return shell.transform_cell(cell)
    finally:
        del manager.transform_cell


def _static_key(manager, cell: str) -> tuple | None:
    """(text, the manager's transformer lists as they are now), or None where they cannot be
    read or compared (not IPython's TransformerManager, an unhashable transformer, the method
    already replaced)."""
    lists = [getattr(manager, name, None)
             for name in ("cleanup_transforms", "line_transforms", "token_transformers")]
    if manager is None or "transform_cell" in vars(manager) \
            or not all(isinstance(items, list) for items in lists):
        return None
    key = (cell, type(manager), *map(tuple, lists))
    try:
        hash(key)
    except TypeError:
        return None
    return key


def _kept(cache: dict, key, value):
    while len(cache) >= _KEPT_MAX:
        del cache[next(iter(cache))]
    cache[key] = value
    return value


def _compiled(shell, source: str, filename: str):
    """(the parsed cell, the code of its statements, of its final expression or None), from
    :data:`_COMPILED` where the same source was compiled under the same name and flags."""
    flags = getattr(shell.compile, "flags", None)
    key = (source, filename, flags, bool(shell.autoawait)) \
        if isinstance(flags, int) and getattr(shell, "ast_transformers", None) == [] else None
    found = _COMPILED.get(key) if key is not None else None
    if found is None:
        parsed = parse_cell(source, filename)
        found = (parsed, *_compile(shell, parsed, filename))
        flags = getattr(shell.compile, "flags", None)  # a __future__ import changes them
        if key is not None and key[2] == flags:
            _kept(_COMPILED, key, found)
    parsed, body, final = found
    return replace(parsed, targets=list(parsed.targets),
                   loaded_names=list(parsed.loaded_names)), body, final


def _compile(shell, parsed: ParsedCell, filename: str):
    """Code objects for the cell's statements and its final expression; top-level
    ``await`` is allowed where IPython allows it (autoawait)."""
    flags = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT if shell.autoawait else 0
    with shell.compile.extra_flags(flags):
        body = shell.compile(capture_targets(shell.transform_ast(parsed.body)), filename,
                             "exec")
        final = None if parsed.final_expr is None else shell.compile(
            parsed.final_expr, filename, "eval")
    return body, final


def _run_body(shell, code, captured: dict) -> None:
    """Run the cell's statements; what its subscript and attribute targets held as it
    assigned them lands in ``captured`` (see :func:`~vjp_magic.core.cell.capture_targets`).
    The hidden name the rewritten cell records into is gone from the namespace afterwards."""
    __tracebackhide__ = True
    slots: dict = {}
    shell.user_ns[CAPTURE_NAME] = slots
    try:
        _run_code(shell, code)
    finally:
        if shell.user_ns.get(CAPTURE_NAME) is slots:
            del shell.user_ns[CAPTURE_NAME]
        captured.update((k, v) for k, v in slots.items() if isinstance(k, str))


def _run_code(shell, code):
    """Run a code object in the user namespace; one with top-level ``await`` (a coroutine
    code object) runs on the shell's loop runner, as IPython runs such a cell."""
    __tracebackhide__ = True
    value = eval(code, shell.user_global_ns, shell.user_ns)
    if code.co_flags & inspect.CO_COROUTINE:
        value = _run_coroutine(value, shell.loop_runner)
    return value


def _run_coroutine(coroutine, loop_runner):
    """Run a cell's top-level ``await`` code: on the shell's loop runner, as IPython does, or,
    where an event loop already runs this thread (ipykernel), on a fresh loop in a helper
    thread, since a magic cannot await."""
    __tracebackhide__ = True
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return loop_runner(coroutine)
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def _assigned(shell, parsed: ParsedCell, before: dict, captured: dict, complete: bool):
    """What the cell bound, in binding order: its targets (names re-bound; in a completed
    cell also in-place updates and targets such as ``d['y']``, ``net.out``), then names
    re-bound another way (``%time y = ...``, ``exec``, ``globals()``). Returns the order and
    the values of the targets that are not plain names, as the cell assigned them."""
    ns = shell.user_ns
    missing = object()

    def changed(name):
        return name in ns and ns[name] is not before.get(name, missing)

    order, values = [], {}
    for target in parsed.targets:
        key = target if target.isidentifier() and (
            changed(target) or (complete and target in ns)) else None
        if complete and not target.isidentifier():
            key, value = _target(target, captured.get(target))
            if key is not None and not key.isidentifier():
                values[key] = value
        if key is not None:
            order = [k for k in order if k != key] + [key]
    order += [n for n in ns if changed(n) and is_visible_name(n) and n not in order]
    return order, values


def _target(source: str, held: tuple | None):
    """A subscript or attribute target, from what the cell recorded as it assigned it (the
    values along the target, then the value stored, and the keys that called something;
    None if it never ran): (its source, its value) when it holds a tensor with autograd
    history, else (None, None). Indexing into a tensor (``y[0] = ...``) counts as assigning
    that tensor; a key that called something is named by its value (``d[next(it)]``: ``d[0]``)."""
    if held is None:
        return None, None
    (values, keys), node = held, ast.parse(source, mode="eval").body
    at = len(values) - 1
    while isinstance(node, (ast.Subscript, ast.Attribute)) and at > 0:
        if not isinstance(values[at - 1], torch.Tensor):
            break
        if isinstance(node, ast.Attribute):
            return None, None  # x.grad = None, w.data = ...: not an output
        node, at = node.value, at - 1
    value = values[at]
    if isinstance(value, torch.Tensor) and value.grad_fn is not None:
        return _named_by_keys(node, at, keys), value
    return None, None


def _named_by_keys(node: ast.expr, level: int, keys: dict) -> str:
    """``node``'s source, each key that called something written as the literal it gave
    (where it is one: a number, a string, a tuple of them)."""
    part = node
    while isinstance(part, (ast.Subscript, ast.Attribute)) and level > 0:
        literal = repr(keys[level]) if level in keys else None
        try:
            if literal is not None and ast.literal_eval(literal) == keys[level]:
                part.slice = ast.parse(literal, mode="eval").body
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            pass  # not a literal (a tensor, an object): the key's own source stays
        part, level = part.value, level - 1
    return ast.unparse(node)


# -- the user's own errors: their frames only, coached where autograd has nothing to do -----
_WRAPPERS = {os.path.abspath(record_module.__file__), os.path.abspath(guard_module.__file__)}
_DISPATCH = os.path.abspath(torch.overrides.__file__)  # hands a call to the recording mode


def user_frames_only(error: BaseException) -> BaseException:
    """``error`` with the frames the magic's wrappers add taken out of its traceback: the
    recorder's (its callers at the cell's line too: :func:`.record.is_caller`) and the guard's,
    and torch's dispatch to the recording mode (the torch
    function that handed the call over runs again past it), so that the traceback reads as
    in a plain cell (IPython shows the last frame even where it asks to hide it)."""
    entries, tb = [], error.__traceback__
    while tb is not None:
        entries.append(tb)
        tb = tb.tb_next
    files = [os.path.abspath(e.tb_frame.f_code.co_filename) for e in entries]
    dropped = set()
    for k, name in enumerate(files):
        if name in _WRAPPERS or name == _DISPATCH or is_caller(entries[k].tb_frame.f_code):
            dropped.add(k)
        if name == _DISPATCH and k and torchs(files[k - 1]) \
                and any(e.tb_frame.f_code is entries[k - 1].tb_frame.f_code
                        for e in entries[k + 1:]):
            dropped.add(k - 1)
    kept = None
    for k in reversed(range(len(entries))):
        if k not in dropped:
            entry = entries[k]
            kept = types.TracebackType(kept, entry.tb_frame, entry.tb_lasti, entry.tb_lineno)
    return error.with_traceback(kept)


def detached_reads(source: str, namespace) -> list[tuple[str, str, int]]:
    """Where the cell reads a tensor that requires grad outside autograd, ``x.data`` or
    ``x.detach()`` on a name bound to one: (the expression as written, the name, its line),
    in order."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    found = []
    for node in ast.walk(tree):
        base = None
        if isinstance(node, ast.Attribute) and node.attr == "data" \
                and isinstance(node.ctx, ast.Load):
            base = node.value
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr == "detach" and not node.args:
            base = node.func.value
        value = namespace.get(base.id) if isinstance(base, ast.Name) else None
        if isinstance(value, torch.Tensor) and value.requires_grad:
            written = ast.get_source_segment(source, node) or ast.unparse(node)
            found.append((written, base.id, node.lineno))
    return sorted(found, key=lambda item: item[2])


def detached_advice(source: str, namespace) -> str | None:
    """"x.data on line 2 …: use x itself (y = x**2)", for the cell's first detached read."""
    reads = detached_reads(source, namespace)
    if not reads:
        return None
    written, name, line = reads[0]
    fixed = source.splitlines()[line - 1].strip()
    for other, other_name, at in reads:
        fixed = fixed.replace(other, other_name) if at == line else fixed
    working, why = _still_computed(fixed)
    if f"{name}.numpy()" in working or f"{name}.cpu().numpy()" in working:
        working = numpy_in_torch(working, name)  # x.numpy() raises where x requires grad
        why = why or (f"{name}.numpy() raises where {name} requires grad, and NumPy is "
                      "outside autograd")
    again = f" ({fixed} would be refused too: {why})" if why else ""
    return (f"{written} on line {line} is {name}'s values without its graph, so what is computed "
            f"from it is a constant to autograd{again}. Use {name} itself: {working}")


_NEW_LEAF = ("torch.nn.Parameter", "nn.Parameter", "Parameter")


def _still_computed(line: str) -> tuple[str, str | None]:
    """``line`` (an assignment whose ``.detach()`` was taken out) changed so that its value is
    computed from the input, not a new leaf: ``nn.Parameter(...)`` taken out, ``y = x`` made
    ``y = x.clone()``; and why the line as it was would be refused (None: it would not)."""
    try:
        tree = ast.parse(line)
    except SyntaxError:
        return line, None
    if len(tree.body) != 1 or not isinstance(tree.body[0], ast.Assign):
        return line, None
    statement, why = tree.body[0], None
    value = statement.value
    while isinstance(value, ast.Call):  # what wraps the value: a leaf-maker, a no-op on it
        func = value.func
        if isinstance(func, ast.Attribute) and func.attr == "requires_grad_" and not value.args \
                and not value.keywords:
            value = func.value
        elif ast.unparse(func) in _NEW_LEAF and len(value.args) == 1:
            value, why = value.args[0], "nn.Parameter makes a new leaf of its values"
        else:
            break
    if isinstance(value, ast.Name):  # y = x: the input itself, not computed from it
        why = why or f"it is {value.id} itself, not a tensor computed from it"
        value = ast.Call(ast.Attribute(value, "clone", ast.Load()), [], [])
    if why is None:
        return line, None
    statement.value = value
    return ast.unparse(statement), why


def nothing_to_differentiate(error, log, source: str, namespace) -> str | None:
    """The cell's own ``backward``/``grad`` found no graph ("element 0 of tensors does not
    require grad"): what to do, from the cell's own names; None for any other error."""
    if NO_GRAPH not in str(error) or not any(e is error for e in log.errors):
        return None
    call = next((c for c in reversed(log.records) if c.error is error), None)
    line = call.line if call is not None else None
    lines = source.splitlines()
    written = lines[line - 1].strip() if line and line <= len(lines) else "The cell's backward"
    head = (f"{written}{f' on line {line}' if line else ''} found no graph: what it "
            f"differentiates {NO_GRAPH}. ")
    advice = second_derivative_advice(source, line) or detached_advice(source, namespace)
    if advice is not None:
        return head + advice
    return head + requires_grad_advice(source, namespace)


def evaluate(shell, node: ast.expr):
    """The value of an expression node in the user's namespace."""
    expression = ast.fix_missing_locations(ast.Expression(body=node))
    return eval(compile(expression, "<target>", "eval"), shell.user_global_ns, shell.user_ns)


__all__ = ["CellRun", "CellSyntaxError", "NoGraph", "detached_advice", "detached_reads", "evaluate",
           "nothing_to_differentiate", "run_cell", "user_frames_only"]
