"""Integer per-sample data (targets, token ids, padding masks) followed through a replay, for
:func:`.persample.samples_apart`: autograd cannot follow them, so each call reading them must
be one that keeps rows apart (row b of its result reads row b of the integer tensor: a loss's
targets, an embedding's ids, an elementwise comparison), and each floating tensor such a
call makes from them alone becomes a leaf, whose rows :func:`..core.axisflow.prove` then
follows like the floating data's. A call of any other kind reading them (a roll, a sum, an
index along the batch, a view merging it) is not followed: the record proves nothing."""
from __future__ import annotations

import torch

from .record import tensors_in
from .steps import Interpreter

# calls whose result's row b reads only row b of every tensor argument of its own number of
# axes with the batch on axis 0 (elementwise, or along other axes only), by the function's
# name; those in ADDS_AXIS read row b of an argument with one axis fewer (ids -> vectors)
ADDS_AXIS = frozenset({"embedding", "one_hot"})
ROW_WISE = ADDS_AXIS | frozenset(
    "cross_entropy nll_loss embedding one_hot masked_fill masked_fill_ where eq ne lt le gt "
    "ge __eq__ __ne__ __lt__ __le__ __gt__ __ge__ logical_not logical_and logical_or "
    "__invert__ __and__ __or__ to float double half long int bool type zeros_like ones_like "
    "full_like".split())


class IntegerRows(Interpreter):
    """The replay's steps, run with the integer per-sample tensors ``tainted`` followed:
    :attr:`leaves` the floating tensors made from them alone (leaves of the run's graph);
    :attr:`refused` whether a call not known to keep rows apart read one."""

    def __init__(self, steps: list, batch: int):
        super().__init__(steps)
        self.batch, self.held, self.leaves, self.refused = batch, [], [], False

    def follow(self, tensor: torch.Tensor) -> None:
        """Follow ``tensor`` (held, so that its id stays its own for the run)."""
        self.held.append(tensor)

    def call_function(self, step, args: tuple, kwargs: dict):
        value = super().call_function(step, args, kwargs)
        given = tensors_in((args, kwargs))
        held = {id(t) for t in self.held}
        read = [t for t in given if id(t) in held]
        if not read:
            return value
        made = tensors_in(value)
        if not _rows_kept(getattr(step.func, "__name__", ""), read, made, self.batch):
            self.refused = True
            return value
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            for t in made:
                self.follow(t)
            return value
        if any(t.requires_grad for t in given):
            return value  # its floating arguments' rows: the graph's rules follow them
        value = value.detach().requires_grad_()
        self.leaves.append(value)
        return value


def _rows_kept(name: str, read: list, made: list, batch: int) -> bool:
    """Whether a call named ``name`` reading the followed tensors ``read`` and making
    ``made`` keeps the rows apart: a known kind, every tensor with the batch on axis 0, and
    the arguments' axes aligned with the result's from the left (no broadcast moving the
    batch axis)."""
    if name not in ROW_WISE or not made:
        return False
    extra = 1 if name in ADDS_AXIS else 0
    return all(t.dim() and t.shape[0] == batch for t in read + made) and all(
        m.dim() == t.dim() + extra for t in read for m in made)
