"""Recognising the classic mistake that stopped a cell's own ``backward``.

:func:`classify` says which mistake an exception the cell's own ``backward``/``autograd.grad``
raised stands for (:class:`MistakeKind`), as a :class:`CellMistake`: the error, the call that
raised it (:mod:`.backward_log`) and the cell's source, read for the failing line and tensor.
The other things coaching reads off the cell live beside this: the call as written
(:mod:`.cell_source`), ``.grad`` summed over several calls (:mod:`.accumulation`), the v each
successful call sent (:mod:`.seeds`). Nothing here words advice.
"""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field

import torch

from ..core.textenum import TextEnum
from ..core.torch_api import TorchError, gradient_position, torch_error
from .backward_log import BackwardCall, BackwardLog
from .cell_source import CallSite, find_call


class MistakeKind(TextEnum):
    """A classic mistake that stops a cell's own ``backward`` (PyTorch's error names it)."""

    IMPLICIT_SCALAR = "implicit-scalar"  # y.backward() on a non-scalar y
    SECOND_PASS = "second-pass"  # a second backward through a freed graph
    GRADIENT_SHAPE = "gradient-shape"  # gradient=v not shaped like y
    GRADIENT_TYPE = "gradient-type"  # gradient=1 or [1., 1.]: a number or list, not a tensor


_KIND_OF_ERROR = {TorchError.IMPLICIT_SCALAR: MistakeKind.IMPLICIT_SCALAR,
                  TorchError.SECOND_PASS: MistakeKind.SECOND_PASS,
                  TorchError.GRADIENT_SHAPE: MistakeKind.GRADIENT_SHAPE}


@dataclass
class CellMistake:
    """A classic mistake that stopped the cell: the error, the call, the cell's source."""

    kind: MistakeKind
    error: BaseException
    call: BackwardCall
    source: str
    log: BackwardLog | None = field(repr=False, default=None)

    @property
    def line(self) -> int | None:
        return self.call.line

    def source_line(self, number: int | None) -> str | None:
        lines = self.source.splitlines()
        if number is None or not 1 <= number <= len(lines):
            return None
        return lines[number - 1]

    def later_lines_skipped(self) -> bool:
        if self.line is None:
            return False
        rest = self.source.splitlines()[self.line:]
        return any(s.strip() and not s.strip().startswith("#") for s in rest)

    def message(self) -> str:
        return f"{type(self.error).__name__}: {self.error}"

    @property
    def freed_before_cell(self) -> bool:
        """A second pass through a graph an earlier cell's backward freed (not this cell's)."""
        return self.kind is MistakeKind.SECOND_PASS and self.call.freed_by is None

    @property
    def freeing_line(self) -> int | None:
        """The cell line of the call that freed the graph (second pass within the cell)."""
        if self.log is None or self.call.freed_by is None:
            return None
        return self.log.lines.get(self.call.freed_by)

    def failing_index(self) -> int:
        """Which of the call's outputs the error is about (``grad_output[i]``, or the first
        non-scalar for an implicit gradient)."""
        position = gradient_position(self.error)
        if position is not None:
            return position
        if self.kind is MistakeKind.IMPLICIT_SCALAR:
            for i, t in enumerate(self.call.tensors):
                if isinstance(t, torch.Tensor) and t.numel() != 1:
                    return i
        return 0

    def failing_tensor(self) -> torch.Tensor | None:
        index, tensors = self.failing_index(), self.call.tensors
        tensor = tensors[index] if len(tensors) > index else None
        return tensor if isinstance(tensor, torch.Tensor) else None

    def given_gradient(self) -> torch.Tensor | None:
        index, grads = self.failing_index(), self.call.gradients
        given = grads[index] if grads and len(grads) > index else None
        return given if isinstance(given, torch.Tensor) else None

    def call_site(self) -> CallSite | None:
        """The failing call as written on its line (None: not on one line, or not found)."""
        line = self.source_line(self.line)
        return find_call(line.strip(), self.call.kind, self.failing_index()) if line else None


def classify(error: BaseException, log: BackwardLog, source: str) -> CellMistake | None:
    """The mistake ``error`` stands for, if the cell's own backward raised it for a classic
    reason (an error the user's code raised elsewhere, or caught, is not coached): PyTorch's
    words for it, or a TypeError raised on a gradient given as a number or a list (the
    recorded call says which)."""
    kind = _KIND_OF_ERROR.get(torch_error(error))
    if not any(e is error for e in log.errors):
        return None
    call = next((c for c in reversed(log.records) if c.error is error), None)
    if call is None or call.batched:  # its gradients lived inside a vmap: none to coach on
        return None
    if kind is None and isinstance(error, TypeError) and call.gradients and any(
            g is not None and not isinstance(g, torch.Tensor) for g in call.gradients):
        kind = MistakeKind.GRADIENT_TYPE  # torch's own words: "'int' object is not iterable"
    if kind is None:
        return None
    return CellMistake(kind=kind, error=error, call=call, source=source, log=log)


# -- two classic creation mistakes: PyTorch's traceback, with the corrected line as a note -----
_INTEGER = "Only Tensors of floating point and complex dtype can require gradients"
_LEAF_IN_PLACE = "a leaf Variable that requires grad is being used in an in-place operation"
_NUMPY = "Can't call numpy() on Tensor that requires grad"
_GRAD_NONE = "'NoneType' object has no attribute 'zero_'"
_SAVED_IN_PLACE = "modified by an inplace operation"


def creation_advice(error: BaseException, source: str, filename: str) -> str | None:
    """What to do, for an error the cell raised outside ``backward`` on a line of its own
    (``filename``: the cell's compiled file) that is a classic creation mistake: an integer
    tensor with requires_grad=True ("[1., 2., 3.]"), an in-place change of a leaf that
    requires grad (``x += 1``), NumPy on an input, ``x.grad.zero_()`` before any backward,
    a tensor a backward saved edited in place (``z = x.exp(); z.add_(1)``: raised by that
    backward, :func:`saved_in_place_advice`); None for any other error. Shown beneath
    PyTorch's traceback (the cell stops there, as a plain cell does)."""
    text = str(error)
    if not any(k in text for k in (_INTEGER, _LEAF_IN_PLACE, _NUMPY, _GRAD_NONE,
                                   _SAVED_IN_PLACE)):
        return None
    line = None
    tb = error.__traceback__
    while tb is not None:  # the cell's last frame: the line that raised
        if tb.tb_frame.f_code.co_filename == filename:
            line = tb.tb_lineno
        tb = tb.tb_next
    lines = source.splitlines()
    written = lines[line - 1].strip() if line is not None and 0 < line <= len(lines) else None
    if _SAVED_IN_PLACE in text:
        return saved_in_place_advice(text, source, line)
    if _GRAD_NONE in text:
        grad = re.search(r"([\w.\[\]]+)\.grad\.zero_\(\)", written or "")
        if grad is None:
            return None
        x = grad.group(1)
        return (f"Why: {x}.grad is None until a backward reaches {x}: there is nothing to "
                f"zero yet. Corrected: {x}.grad = None (or: if {x}.grad is not None: "
                f"{x}.grad.zero_())")
    if _NUMPY in text:
        fixed = _without_numpy(written) if written else None
        return ("Why: NumPy is outside autograd: .numpy() (and the .detach().numpy() "
                "PyTorch's message suggests) cuts the graph, so nothing computed from it has "
                "derivatives. Corrected: " + (fixed or "compute it with torch functions on "
                                               "the tensor itself (torch.sin, torch.exp, …)"))
    if _INTEGER in text:
        fixed = _floats(written) if written else None
        return ("Why: autograd differentiates floating-point tensors only; integer values "
                "make an integer tensor. Corrected: " + (fixed or "write the values as floats "
                "(1. not 1), or add dtype=torch.float32"))
    fixed = _out_of_place(written) if written else None
    return ("Why: the tensor is a leaf that requires grad (an input): autograd cannot record "
            "a change made to it in place. Corrected: " + (
                f"{fixed} (a new tensor computed from it); to set the input's values "
                f"instead: with torch.no_grad(): {written}" if fixed else
                "compute a new tensor from it (y = x + 1), or change its values under "
                "torch.no_grad()"))


def saved_in_place_advice(text: str, source: str, line: int | None) -> str | None:
    """A backward (on ``line``) that found a tensor it saved changed in place: the cell's
    last in-place write before that line to a tensor computed in the cell (preferring the
    output of the function PyTorch names, "output 0 of Exp"), named with its line and
    written out of place. None where the cell shows no such write."""
    from .grad_advice import statements, written_in_place  # (grad_advice imports this module)

    body = [stmt for stmt in statements(source) if line is None or stmt.lineno < line]
    made = {}  # name: the statement that computed it
    writes = []  # (statement, name) in order
    for stmt in body:
        for name in made:
            if written_in_place(stmt, name):
                writes.append((stmt, name))
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 \
                and isinstance(stmt.targets[0], ast.Name):
            made[stmt.targets[0].id] = stmt
    if not writes:
        return None
    op = re.search(r"output \d+ of (\w+?)(?:Backward\d*)?,", text)
    op = op.group(1).lower() if op else None
    named = [w for w in writes if op and op in ast.unparse(made[w[1]].value).lower()]
    stmt, name = (named or writes)[-1]
    lines = source.splitlines()
    edit = lines[stmt.lineno - 1].strip() if stmt.lineno == stmt.end_lineno else ast.unparse(stmt)
    origin = made[name]
    fixed = _out_of_place(edit)
    return (f"Why: {edit} on line {stmt.lineno} changed {name} in place, and {name} "
            f"({f'the output of {op}, ' if named else ''}computed on line {origin.lineno}) holds a "
            f"value autograd saved for the backward, which needs it as it was. "
            "Corrected: " + (f"{fixed} (a new tensor; the saved one stays as it was)" if fixed
                             else f"write into a copy: {name} = {name}.clone() before line "
                                  f"{stmt.lineno}"))


def _floats(line: str) -> str | None:
    """``line`` with the integer literals of its requires_grad call written as floats."""
    if "requires_grad" not in line:
        return None
    fixed = re.sub(r"(?<![\w.])(\d+)(?![\w.])", r"\1.", line)
    return fixed if fixed != line else None


def _out_of_place(line: str) -> str | None:
    """``x += 1`` as ``x = x + 1``; ``x.add_(1)`` as ``x = x.add(1)``; else None."""
    try:
        tree = ast.parse(line)
    except SyntaxError:
        return None
    if len(tree.body) != 1:
        return None
    statement = tree.body[0]
    if isinstance(statement, ast.AugAssign) and isinstance(statement.target, ast.Name):
        name = statement.target.id
        return ast.unparse(ast.Assign([ast.Name(name, ast.Store())], ast.BinOp(
            ast.Name(name, ast.Load()), statement.op, statement.value), lineno=1))
    call = statement.value if isinstance(statement, ast.Expr) else None
    if isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and \
            isinstance(call.func.value, ast.Name) and call.func.attr.endswith("_") and \
            not call.func.attr.startswith("_"):
        name = call.func.value.id
        call.func.attr = call.func.attr[:-1]
        return f"{name} = {ast.unparse(call)}"
    return None


# -- NumPy on an input that requires grad: the same in torch ----------------------------------
_TO_TORCH = ("torch.from_numpy", "torch.tensor", "torch.as_tensor", "torch.asarray")


def _without_numpy(line: str) -> str | None:
    """``line`` kept in torch: ``x.numpy()`` (``.detach()``, ``.cpu()`` before it) is ``x``,
    ``np.sin(...)`` is ``torch.sin(...)``, ``torch.tensor(...)`` around it dropped; None
    where some NumPy is left or nothing changed."""

    class Torched(ast.NodeTransformer):
        def visit_Call(self, node):
            self.generic_visit(node)
            func = node.func
            if isinstance(func, ast.Attribute) and func.attr == "numpy" and not node.args:
                inner = func.value
                while isinstance(inner, ast.Call) and isinstance(inner.func, ast.Attribute) \
                        and inner.func.attr in ("detach", "cpu") and not inner.args:
                    inner = inner.func.value
                return inner
            if isinstance(func, ast.Attribute) and ast.unparse(func.value) in ("np", "numpy") \
                    and callable(getattr(torch, func.attr, None)):
                return ast.Call(ast.Attribute(ast.Name("torch", ast.Load()), func.attr,
                                              ast.Load()), node.args, node.keywords)
            if ast.unparse(func) in _TO_TORCH and len(node.args) == 1 and not node.keywords:
                return node.args[0]
            return node

    try:
        changed = ast.unparse(Torched().visit(ast.parse(line)))
    except (SyntaxError, ValueError):
        return None
    if changed == line or "numpy" in changed or "np." in changed:
        return None
    return changed


def numpy_in_torch(line: str, name: str) -> str:
    """``line`` with NumPy taken out around ``name``: ``np.sin(x.numpy())`` becomes
    ``torch.sin(x)`` where torch has a function of that name, ``torch.from_numpy(…)`` around
    it dropped; where some NumPy is left, a sentence saying what to do instead."""

    class Torched(ast.NodeTransformer):
        def visit_Call(self, node):
            self.generic_visit(node)
            written = ast.unparse(node.func)
            arg = ast.unparse(node.args[0]) if len(node.args) == 1 else None
            if arg in (f"{name}.numpy()", f"{name}.cpu().numpy()") and \
                    isinstance(node.func, ast.Attribute) and \
                    ast.unparse(node.func.value) in ("np", "numpy") and \
                    callable(getattr(torch, node.func.attr, None)):
                return ast.Call(ast.Attribute(ast.Name("torch", ast.Load()), node.func.attr,
                                              ast.Load()), [ast.Name(name, ast.Load())],
                                node.keywords)
            if written in _TO_TORCH and len(node.args) == 1 and not node.keywords and \
                    ast.unparse(node.args[0]).startswith("torch."):
                return node.args[0]
            return node

    try:
        changed = ast.unparse(Torched().visit(ast.parse(line)))
    except (SyntaxError, ValueError):
        changed = line
    if ".numpy()" in changed:
        return (f"compute it with torch functions on {name} (torch.sin, torch.exp, …), "
                "not NumPy")
    return changed
