"""A ``.grad`` that holds several ``backward`` calls' results added up.

:func:`accumulations` finds the inputs whose ``.grad`` is the sum of the cell's last few
calls' vector-Jacobian products (the classic missing ``zero_()``); :func:`summed_calls` reads
any value that way (such as a graded answer copied off ``x.grad``). Nothing here words advice.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core.tolerances import tolerances
from ..core.torch_api import materialized_grad
from .backward_log import BackwardCall, BackwardLog, reaches


@dataclass(frozen=True)
class Accumulation:
    """``name``'s ``.grad`` holds the sum of the last ``summed`` calls reaching it (their
    cell ``lines``), plus what it held before the cell when ``with_before``."""

    name: str
    summed: int
    with_before: bool
    lines: tuple[int, ...]


def _close(a: torch.Tensor, b: torch.Tensor, dtype) -> bool:
    a, b = a.detach().double(), b.detach().double()
    rtol = tolerances(dtype).backward
    scale = float(b.abs().max()) if b.numel() else 0.0
    return bool(torch.allclose(a, b, rtol=rtol, atol=rtol * max(1.0, scale), equal_nan=True))


def _vjp(call: BackwardCall, x: torch.Tensor) -> torch.Tensor:
    """What ``call`` added to ``x.grad``: as the guard saw it, else one pass through the
    graph where the guard kept it (a RuntimeError where it was freed)."""
    if id(x) in call.added:
        return call.added[id(x)]
    grads = call.gradients
    if grads is not None and len(grads) != len(call.tensors):
        grads = None
    (g,) = materialized_grad(call.tensors, [x], grads, retain_graph=True)
    return g


def _summed(value, x, calls, before, complete: bool) -> tuple[int, bool] | None:
    """How many of the last ``calls`` add up to ``value`` (``x.grad``, or an answer read off
    it), and whether ``before``, what ``x.grad`` held before the cell, is in it."""
    dtype = x.dtype
    total = torch.zeros_like(x)
    for j in range(len(calls) - 1, -1, -1):
        total = total + _vjp(calls[j], x)
        if _close(value, total, dtype):
            return len(calls) - j, False
        if j == 0 and complete and before is not None and _close(value, total + before, dtype):
            return len(calls), True
    return None


def summed_calls(value: torch.Tensor, name: str, x: torch.Tensor,
                 log: BackwardLog) -> Accumulation | None:
    """``value`` (shaped like ``x``) as the sum of the log's last backward calls reaching
    ``x`` (plus what ``x.grad`` held before the cell): how many, on which lines; None when it
    is no such sum."""
    if log is None or value.shape != x.shape:
        return None
    calls = [c for c in log.records if reaches(c, x)]
    if not calls:
        return None
    before = log.grad_before.get(id(x), (None, None))[1]
    try:
        summed = _summed(value.to(x.dtype), x, calls, before, log.calls == len(log.records))
    except RuntimeError:  # the graph changed since (in-place update): nothing to compare
        return None
    if summed is None:
        return None
    used = calls[len(calls) - summed[0]:]
    lines = tuple(sorted({c.line for c in used if c.line is not None}))
    return Accumulation(name, summed[0], summed[1], lines)


def accumulations(inputs: dict, log: BackwardLog) -> list[Accumulation]:
    """The inputs (name → tensor) whose ``.grad`` holds several backward calls' results
    added up.

    ``x.grad`` equal to the last call's vector-Jacobian product (or zeroed afterwards) is
    fine; equal to the sum of the last few calls' products (plus what it held before the
    cell) is the classic mistake. Anything else (grad edited by hand) is left alone.
    """
    found = []
    for name, x in inputs.items():
        grad = x.grad if x.is_leaf else None
        if grad is None or not bool((grad != 0).any()):
            continue
        summed = summed_calls(grad, name, x, log)
        if summed is not None and (summed.summed, summed.with_before) != (1, False):
            found.append(summed)
    return found
