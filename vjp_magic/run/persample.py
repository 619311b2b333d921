"""Per-sample gradients at vectorised speed: a vector of per-sample losses differentiated
with respect to parameters, by ``torch.func.vmap(grad(...))`` over the replayed cell.

The case: the output has shape (B,) or (B, 1, …), and the replay's constants whose axis 0
has size B are the per-sample data (inputs, targets). Each sample's loss is the replay run
on that sample alone (its data unsqueezed to a batch of one), the parameters shared; vmap
runs all samples at once. A model that mixes samples (BatchNorm in training mode, a mean
over the batch inside the loss) gives other per-sample values than the cell did, and is
refused (None); the analysis also accepts the Jacobians only if its own probe agrees.
The replay runs under :func:`torch.random.fork_rng`: the global RNG is left as it was.
"""
from __future__ import annotations

import dataclasses
import math

import torch

from ..core import memory
from .replay import Replay, close, replayable

_RESHAPES = {"view", "reshape"}  # Tensor.view, Tensor.reshape, torch.reshape


def per_sample_jacobians(record, inputs: dict, output,
                         memory_budget: float | None = None) -> dict | None:
    """``{name: J}`` with ``J`` of shape ``output.shape + input.shape`` (row b: the gradient
    of sample b's loss), or None where the case does not apply, the Jacobians would not fit
    ``memory_budget`` (bytes or a fraction of free memory, as the analysis reads it), or
    the replay cannot be vectorised faithfully."""
    if not _per_sample_shape(output) or not inputs or record is None \
            or getattr(record, "failed", None) is not None:
        return None
    if not all(isinstance(t, torch.Tensor) and t.is_floating_point() for t in inputs.values()):
        return None
    need = output.numel() * sum(t.numel() * t.element_size() for t in inputs.values())
    if 2 * need > memory.resolve_budget(memory_budget, output.device):
        return None  # the analysis says so clearly, or finds a cheaper way
    try:  # the replay's values are compared with the output below: no separate check
        replay = replayable(record, inputs, output, verify=False, user_code=False)
    except Exception:  # noqa: BLE001 - never break the cell for a faster path
        return None
    if replay is None:  # not replayable, or only by running the cell's own code again
        return None
    samples = per_sample_constants(replay, output.shape[0], inputs)
    if not samples:
        return None
    replay = batch_of_one(replay, output.shape[0])
    devices = [output.device.index or 0] if output.is_cuda else []
    try:  # the global RNG as a plain run leaves it, whatever the replay draws
        with torch.random.fork_rng(devices=devices):
            grads, values = _vectorised(replay, inputs, samples, tuple(output.shape[1:]))
    except Exception:  # noqa: BLE001 - an op vmap cannot batch, data-dependent shapes …
        return None
    if not close(values.reshape(output.shape), output.detach()):
        return None  # the samples are not independent: the per-sample forward differs
    return {name: grads[name].reshape(tuple(output.shape) + tuple(t.shape))
            for name, t in inputs.items()}


def _per_sample_shape(output) -> bool:
    """A vector of per-sample values: shape (B,) or (B, 1, …), B > 1."""
    return (isinstance(output, torch.Tensor) and output.is_floating_point()
            and output.dim() >= 1 and output.shape[0] > 1
            and math.prod(output.shape[1:]) == 1)


def per_sample_constants(replay: Replay, batch: int, inputs: dict) -> dict:
    """The constants the replay reads whose axis 0 has the batch size: id -> tensor."""
    inputs_ids = {id(t) for t in inputs.values()}
    return {key: value for key, value in replay.constants().items()
            if key not in inputs_ids and value.dim() >= 1 and value.shape[0] == batch}


def batch_of_one(replay: Replay, batch: int) -> Replay:
    """The replay with batch-keeping reshapes (``h.view(h.size(0), -1)``, whose size the
    record holds as the number B) reshaping to a batch of one instead."""
    steps = [_reshape_for_one(step, batch) for step in replay.steps]
    return dataclasses.replace(replay, steps=steps)


def _reshape_for_one(step, batch: int):
    if getattr(step.func, "__name__", "") not in _RESHAPES or not step.args:
        return step
    source, result = step.args[0], step.result
    if not (isinstance(source, torch.Tensor) and isinstance(result, torch.Tensor)
            and source.dim() and result.dim() and source.shape[0] == result.shape[0] == batch):
        return step
    rest = step.args[1:]
    if len(rest) == 1 and isinstance(rest[0], (tuple, list)):  # view((B, -1))
        shape = tuple(rest[0])
        if shape and isinstance(shape[0], int) and shape[0] == batch:
            return dataclasses.replace(step, args=(source, (1,) + shape[1:]))
    elif rest and isinstance(rest[0], int) and rest[0] == batch:  # view(B, -1)
        return dataclasses.replace(step, args=(source, 1) + tuple(rest[1:]))
    return step


def _vectorised(replay: Replay, inputs: dict, samples: dict,
                rest: tuple) -> tuple[dict, torch.Tensor]:
    """vmap over samples of grad over the parameters of one sample's loss."""
    keys = list(samples)
    params = {name: t.detach() for name, t in inputs.items()}

    def loss(parameters, *sample):
        overrides = {key: value.unsqueeze(0) for key, value in zip(keys, sample)}
        value = replay.run(parameters, overrides)
        value = value.reshape(())
        return value, value

    per_sample = torch.func.vmap(torch.func.grad(loss, has_aux=True),
                                 in_dims=(None,) + (0,) * len(keys))
    grads, values = per_sample(params, *[samples[k] for k in keys])
    return grads, values.reshape((-1,) + rest)


__all__ = ["batch_of_one", "per_sample_constants", "per_sample_jacobians"]
