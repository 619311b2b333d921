"""The sizes of the terms summing into a parameter's per-sample gradient where no per-layer
rule reads it but every call that does is linear in each of its tensors (``x @ w``,
``h + b``, ``h * s``): for the vectorised path, whose gradients come without them.

An entry that such a call sums over positions or broadcast rows can cancel: a key bias
added by hand before an attention (softmax ignores a constant added to every score of a
query) has a true per-sample gradient of exactly 0, and float32 then gives noise of the size
of the terms, which judged against its own size is refused (one backward per sample). For
a call f linear in each tensor, sample b's gradient for the parameter p is the product of
its output gradient g_b with the call's other tensors, and the sums of the absolute terms
are the same product of their absolute values: the vector-Jacobian product of f at the
other tensors' |·| with cotangent |g_b| (up to one constant's sign, as ``sub`` or ``alpha``
give: its absolute value). Each is computed per sample by ``torch.func.vmap`` over the call
on a batch of one; g_b comes from the per-layer rules' pass, checked per sample for every
pair of samples as for a rule's layer (:func:`.expanded.captured_gradients`).
"""
from __future__ import annotations

import torch

KIND = "multilinear"
# calls linear in each tensor they read (``alpha``: a constant factor)
_NAMES = frozenset({"add", "sub", "mul", "matmul", "bmm", "__add__", "__radd__", "__sub__",
                    "__rsub__", "__mul__", "__rmul__", "__matmul__"})
_PRODUCTS = frozenset({"matmul", "__matmul__"})  # a 2-d right operand: a matrix, no batch


def use_of(step, ids: dict, batch: int):
    """(positions of the parameters read -> their names, positions of the tensors carrying
    the batch on axis 0) for a call :func:`terms` takes, else None: a call of ``_NAMES``
    (no keyword but ``alpha``) whose result carries the batch on axis 0, reading each
    parameter once and broadcast over the batch (or as ``x @ w``'s matrix ``w``), every other
    tensor carrying the batch as the result does (the first, for ``x @ w``)."""
    result = step.result
    if step.name not in _NAMES or set(step.kwargs) - {"alpha"} \
            or not isinstance(result, torch.Tensor) or result.dim() < 1 \
            or result.shape[0] != batch:
        return None
    params, batched = {}, []
    for index, arg in enumerate(step.args):
        if not isinstance(arg, torch.Tensor):
            continue
        spans = arg.dim() == result.dim() and arg.shape[0] != 1
        if index == 1 and step.name in _PRODUCTS and arg.dim() <= 2:
            spans = False  # x @ w: w's rows meet x's last axis, never the batch
        if id(arg) in ids:
            if spans or ids[id(arg)] in params.values():
                return None
            params[index] = ids[id(arg)]
        elif spans and arg.shape[0] == batch:
            batched.append(index)
        else:  # a constant read whole by every sample: not taken (none is needed)
            return None
    if not params or not batched or step.name in _PRODUCTS and batched != [0]:
        return None
    return params, tuple(batched)


def terms(calls: list) -> list:
    """For each call ``(func, args, kwargs, batched, positions, grad)`` (its values as
    computed, the positions of the parameters whose terms are wanted, ``grad``: the
    per-sample gradient at its result, batch on axis 0): a list, per position, of (the
    per-sample gradient (B, *p.shape), the sums of its absolute terms). One vectorised
    backward for all of them (:func:`_per_sample`)."""
    jobs, found = [], []
    for func, args, kwargs, batched, positions, grad in calls:
        args = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)
        grad = grad.detach()
        for position in positions:
            absolute = tuple(a.abs() if isinstance(a, torch.Tensor) and i != position else a
                             for i, a in enumerate(args))
            jobs += [(func, args, kwargs, position, batched, grad),
                     (func, absolute, kwargs, position, batched, grad.abs())]
    rows = _per_sample(jobs) if jobs else []
    for index in range(0, len(rows), 2):
        found.append((rows[index], rows[index + 1].abs_()))
    return found


def _per_sample(jobs: list) -> tuple:
    """For each job (func, args, kwargs, position, batched, grad), row b: the
    vector-Jacobian product, for the parameter at ``position``, of the call on sample b
    alone (the batch-carrying tensors' row b as a batch of one) with cotangent ``grad``'s
    row b; all jobs in one ``torch.func.vjp`` under one ``vmap`` over the samples."""
    sample = [[job[5]] + [job[1][i] for i in job[4]] for job in jobs]
    counts = [len(rows) for rows in sample]

    def one(*rows):
        calls, cotangents, start = [], [], 0
        for (func, args, kwargs, position, batched, _), count in zip(jobs, counts):
            mine = rows[start:start + count]
            start += count
            found = list(args)
            for index, row in zip(batched, mine[1:]):
                found[index] = row.unsqueeze(0)
            calls.append((func, found, kwargs, position))
            cotangents.append(mine[0].unsqueeze(0))

        def outputs(*params):
            results = []
            for (func, found, kwargs, position), p in zip(calls, params):
                found = list(found)
                found[position] = p
                results.append(func(*found, **kwargs))
            return tuple(results)
        _, pull = torch.func.vjp(outputs, *[args[position] for _, args, _, position, _, _
                                            in jobs])
        return pull(tuple(cotangents))
    return torch.func.vmap(one)(*[t for rows in sample for t in rows])


__all__ = ["KIND", "terms", "use_of"]
