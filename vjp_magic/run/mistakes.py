"""Recognising the classic mistake that stopped a cell's own ``backward``.

:func:`classify` says which mistake an exception the cell's own ``backward``/``autograd.grad``
raised stands for (:class:`MistakeKind`), as a :class:`CellMistake`: the error, the call that
raised it (:mod:`.backward_log`) and the cell's source, read for the failing line and tensor.
The other things coaching reads off the cell live beside this: the call as written
(:mod:`.cell_source`), ``.grad`` summed over several calls (:mod:`.accumulation`), the v each
successful call sent (:mod:`.seeds`). Nothing here words advice.
"""
from __future__ import annotations

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
