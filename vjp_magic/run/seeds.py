"""The v each of the cell's own successful ``backward`` calls sent, and into what.

:func:`seeds` lists every tensor a successful ``backward`` started from (:class:`Seed`): the
kind of v it sent (:class:`GradientKind`: ones, 0/1 entries, general) and whether it went
into the output, through ``output.sum()``, or elsewhere (:class:`SeedTarget`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core.textenum import TextEnum
from .backward_log import BackwardCall, BackwardLog, CallKind


class GradientKind(TextEnum):
    """What a gradient argument v holds."""

    ONES = "ones"  # v = ones, or the implicit 1 of a scalar
    ZERO_ONE = "zero-one"  # 0/1 entries: one-hot vectors, masks
    GENERAL = "general"


class SeedTarget(TextEnum):
    """Where a ``backward`` call's v went in."""

    OUTPUT = "output"  # the tensor is the cell's output
    SUM = "sum"  # the tensor is output.sum(): v = ones into the output
    OTHER = "other"


@dataclass(frozen=True)
class Seed:
    """One tensor a successful ``backward`` of the cell started from, and the v it sent."""

    call: BackwardCall
    tensor: torch.Tensor  # what backward was called on
    gradient: torch.Tensor | None  # v as given (None: the implicit 1 of a scalar)
    kind: GradientKind
    target: SeedTarget


def gradient_kind(v) -> GradientKind:
    """ONES (v = ones, or implicit), ZERO_ONE (0/1 entries: one-hot, masks), or GENERAL."""
    if not isinstance(v, torch.Tensor):
        return GradientKind.ONES if v is None or v == 1 else GradientKind.GENERAL
    v = v.detach()
    if bool((v == 1).all()):
        return GradientKind.ONES
    return GradientKind.ZERO_ONE if bool(((v == 0) | (v == 1)).all()) else GradientKind.GENERAL


def _node_key(node):
    return None if node is None else (type(node).__name__, node._sequence_nr())


def _is_sum_of(t: torch.Tensor, output: torch.Tensor) -> bool:
    """``t`` is ``output.sum()`` (over every entry)."""
    node, of = t.grad_fn, output.grad_fn
    if node is None or of is None or type(node).__name__ != "SumBackward0":
        return False
    following = node.next_functions
    return len(following) == 1 and _node_key(following[0][0]) == _node_key(of)


def _target(t: torch.Tensor, output: torch.Tensor | None) -> SeedTarget:
    if output is not None and t is output:
        return SeedTarget.OUTPUT
    if output is not None and t.numel() == 1 and _is_sum_of(t, output):
        return SeedTarget.SUM
    return SeedTarget.OTHER


def seeds(log: BackwardLog | None, output: torch.Tensor | None = None) -> list[Seed]:
    """Every tensor the cell's successful ``backward`` calls started from, with its v, and
    whether it is ``output`` or ``output.sum()`` (which sends v = ones into ``output``)."""
    found = []
    for call in log.records if log is not None else ():
        if call.kind is not CallKind.BACKWARD or call.error is not None or call.batched:
            continue  # (a batched call's gradients were not copied: its v is unknown)
        grads = call.gradients if call.gradients and len(call.gradients) == len(
            call.tensors) else [None] * len(call.tensors)
        for t, g in zip(call.tensors, grads):
            if not isinstance(t, torch.Tensor) or not t.requires_grad:
                continue
            found.append(Seed(call, t, g if isinstance(g, torch.Tensor) else None,
                              gradient_kind(g), _target(t, output)))
    return found
