"""Stage 4 — derivatives: vector-Jacobian products, batched, chunked to a memory budget.

Everything goes through ``torch.autograd.grad`` with ``retain_graph=True``, so
``x.grad`` is never touched and the graph stays usable for the user's next cell.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch

_autograd_grad = torch.autograd.grad  # the real one, even while a cell patches torch.autograd

# Intermediate buffers of a batched backward are a few times the size of its grad_outputs.
_WORKSPACE_FACTOR = 4


def one_hot_gradients(
    output_shape: torch.Size,
    point_out_axes: Sequence[int],
    start: int,
    stop: int,
    dtype: torch.dtype,
    device: torch.device,
) -> torch.Tensor:
    """Gradient arguments ``start:stop`` (row-major over the non-point output axes), stacked.

    Each is shaped like the output: 1 on the component it selects, for every point at once.
    """
    component_axes = [a for a in range(len(output_shape)) if a not in point_out_axes]
    component_shape = [output_shape[a] for a in component_axes]
    count = stop - start
    selector = torch.zeros(count, math.prod(component_shape), dtype=dtype, device=device)
    selector[torch.arange(count, device=device), torch.arange(start, stop, device=device)] = 1
    view_shape = [count] + [
        output_shape[a] if a in component_axes else 1 for a in range(len(output_shape))
    ]
    # Reshape the flat component index into the component axes, keeping size 1 at point axes.
    selector = selector.reshape([count] + component_shape)
    for axis in sorted(point_out_axes):
        selector = selector.unsqueeze(1 + axis)
    return selector.reshape(view_shape).expand(count, *output_shape)


def vjp_batch(
    output: torch.Tensor,
    inputs: Sequence[torch.Tensor],
    grad_outputs: torch.Tensor,
    batched: bool = True,
) -> list[torch.Tensor]:
    """vᵀJ for each ``v`` in ``grad_outputs`` (leading batch axis), for every input.

    Tries one vectorised backward — ``torch.func.vmap`` over ``autograd.grad`` (fast batching
    rules), then the older ``is_grads_batched`` — and falls back to a loop for operations
    that cannot be batched. Inputs the output does not reach get zeros.
    """
    if batched and grad_outputs.shape[0] > 1:
        for method in (_vmap_grad, _legacy_batched_grad):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    return method(output, inputs, grad_outputs)
            except (RuntimeError, NotImplementedError, ValueError, TypeError) as error:
                if "second time" in str(error):
                    raise
    return _looped_grad(output, inputs, grad_outputs)


def _vmap_grad(output, inputs, grad_outputs) -> list[torch.Tensor]:
    def one(v):
        return _autograd_grad(
            [output], list(inputs), [v], retain_graph=True, allow_unused=True,
            materialize_grads=True,
        )

    return list(torch.func.vmap(one)(grad_outputs))


def _legacy_batched_grad(output, inputs, grad_outputs) -> list[torch.Tensor]:
    grads = _autograd_grad(
        [output], list(inputs), [grad_outputs], retain_graph=True, allow_unused=True,
        is_grads_batched=True,
    )
    return _fill_unused(grads, inputs, grad_outputs.shape[0])


def _looped_grad(output, inputs, grad_outputs) -> list[torch.Tensor]:
    rows: list[list[torch.Tensor | None]] = []
    for v in grad_outputs:
        rows.append(
            list(_autograd_grad([output], list(inputs), [v], retain_graph=True, allow_unused=True))
        )
    results = []
    for i, tensor in enumerate(inputs):
        column = [row[i] for row in rows]
        if all(g is None for g in column):
            results.append(tensor.new_zeros((len(rows),) + tuple(tensor.shape)))
        else:
            results.append(
                torch.stack([g if g is not None else torch.zeros_like(tensor) for g in column])
            )
    return results


def _fill_unused(grads, inputs, batch: int) -> list[torch.Tensor]:
    return [
        g if g is not None else tensor.new_zeros((batch,) + tuple(tensor.shape))
        for g, tensor in zip(grads, inputs)
    ]


def chunk_size(output: torch.Tensor, inputs: Sequence[torch.Tensor], budget: int) -> int:
    """How many gradient arguments one batched backward may take within ``budget`` bytes."""
    per_vector = (output.numel() * _WORKSPACE_FACTOR + sum(t.numel() for t in inputs)) * max(
        output.element_size(), 4
    )
    return max(1, budget // max(per_vector, 1))


_batch_cache: dict[tuple, torch.Tensor] = {}  # the last large batch of gradient arguments


def gradient_batch(
    output: torch.Tensor,
    point_out_axes: Sequence[int],
    start: int,
    stop: int,
    probe: torch.Tensor | None,
) -> torch.Tensor:
    """One-hot gradient arguments ``start:stop``, with the structure probe appended.

    The probe is a fixed function of the output's shape, dtype and device, so the batch is
    too: the last large one is kept, and re-analysing the same shapes skips building it.
    """
    key = (tuple(output.shape), tuple(point_out_axes), start, stop, output.dtype,
           str(output.device), probe is not None)
    cached = _batch_cache.get(key)
    if cached is not None:
        return cached
    vectors = one_hot_gradients(output.shape, point_out_axes, start, stop, output.dtype,
                                output.device)
    if probe is not None:
        vectors = torch.cat([vectors, probe.unsqueeze(0).to(vectors.dtype)])
    if vectors.numel() >= 2**16:
        _batch_cache.clear()
        _batch_cache[key] = vectors
    return vectors


def component_vjps(
    output: torch.Tensor,
    inputs: Sequence[torch.Tensor],
    point_out_axes: Sequence[int],
    budget: int,
    probe: torch.Tensor | None = None,
    batched: bool = True,
    max_chunk: int | None = None,
) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
    """One VJP per non-point output component, for every input, in budget-sized batches.

    Returns ``(stacked, probe_vjps)``: ``stacked[i]`` has shape ``(K,) + inputs[i].shape``.
    The structure ``probe`` (see :func:`vjp_magic.structure.probe_vector`) rides along in
    the first batch, so its vᵀJ costs no separate backward pass.
    """
    count = math.prod(output.shape[a] for a in range(output.dim()) if a not in point_out_axes)
    step = chunk_size(output, inputs, budget)
    if max_chunk is not None:
        step = min(step, max_chunk)
    parts: list[list[torch.Tensor]] = [[] for _ in inputs]
    probe_vjps = None
    start = 0
    while start < count or (probe is not None and probe_vjps is None):
        stop = min(count, start + step)
        with_probe = probe if probe_vjps is None else None
        vectors = gradient_batch(output, point_out_axes, start, stop, with_probe)
        results = vjp_batch(output, inputs, vectors, batched=batched)
        if with_probe is not None:
            probe_vjps = [r[-1] for r in results]
            results = [r[:-1] for r in results]
        for part, result in zip(parts, results):
            part.append(result)
        start = stop
    stacked = [torch.cat(part) if len(part) > 1 else part[0] for part in parts]
    return stacked, probe_vjps


def forward_jacobian(
    output: torch.Tensor, tensor: torch.Tensor, batched: bool = True
) -> torch.Tensor:
    """The full Jacobian column by column (forward mode), for outputs much larger than inputs.

    Only the graph is at hand, not the function, so JVPs come from the double-backward trick:
    g(v) = vᵀJ is linear in v, and the VJP of g with a basis vector u is J u. That costs one
    backward with ``create_graph`` plus n batched passes, instead of m reverse passes.
    Raises ``RuntimeError`` for graphs without double-backward support (callers fall back).
    """
    v = torch.zeros_like(output, requires_grad=True)
    (g,) = _autograd_grad(
        [output], [tensor], [v], retain_graph=True, create_graph=True, allow_unused=True,
        materialize_grads=True,
    )
    m, n = output.numel(), tensor.numel()
    if not g.requires_grad:  # vᵀJ does not depend on v: the output does not reach the input
        return tensor.new_zeros(tuple(output.shape) + tuple(tensor.shape))
    basis = torch.eye(n, dtype=tensor.dtype, device=tensor.device).reshape((n,) + tuple(tensor.shape))
    columns = vjp_batch(g, [v], basis, batched=batched)[0]  # (n,) + output.shape: J u_j
    return columns.reshape(n, m).T.reshape(tuple(output.shape) + tuple(tensor.shape))
