"""How precisely the derivatives an answer is graded against are known (``--check``).

Autograd's float32 derivatives are exact to rounding relative to the *terms that sum into
them*, not to their own size: ``y = x - sin(x)`` at x = 1e-3 gets 1 - cos(x) as the sum of
1 and -0.9999995, so autograd says 4.77e-7 where the truth is 5.00e-7. A student who
computes the true value (in float64, or by 2 sin²(x/2)) must not be told "wrong".

:func:`refinement` gives, for one input, the values to grade against and an extra absolute
tolerance per entry (``slack``), both shaped like ``r.derivatives[name]``:

- with the cell's record: the derivatives again through a float64 replay of the record (on
  fresh leaves; the user's tensors, their ``.grad`` and the global RNG are left alone). The
  reference is the float64 value; the slack autograd's own measured error there, so an
  answer ✓ is no farther from the float64 value than autograd's float32 one (``proved``);
- otherwise (or where the float64 replay disagrees with autograd beyond rounding): autograd's
  values, with a first-order bound on its rounding error (:func:`rounding_bound`). An answer
  within that bound but not within the tolerance may be right or wrong: the grade says it
  cannot tell (never ✓), and how to make it tell (float64, or a ``%%vjp`` cell's record).

Both are computed only for an answer that the plain comparison calls wrong. So is the
answer's own rounding (:func:`answer_rounding`): a low-precision answer whose formula, replayed
in float64 from the cell's record (or bounded on the answer's own graph), is right.
"""
from __future__ import annotations

import itertools
import math
from typing import NamedTuple

import torch
from torch.autograd.function import BackwardCFunction

from ..core.graph_facts import SAVED_READABLE, raw_saved, unpack_hooked
from ..core.retained import grads_kept
from ..core.tolerances import tolerances
from ..core.torch_api import guarded_grad, materialized_grad
from ..run.replay import build, runs_user_code
from .sparse_dense import is_sparse

MAX_COMPONENTS = 64  # backward passes per input: one per non-point output component
MAX_NODES = 100_000  # graph nodes hooked by the rounding bound


class Refinement(NamedTuple):
    """What an answer is graded against where autograd's own values may be imprecise:
    ``values`` and ``slack`` (float64, shaped like the derivatives), and whether they are
    ``proved``: float64 derivatives (the record's replay, or the exercise's f), ``floor``
    then bounding their own float64 rounding (first order: float64 has nothing finer, and
    that is ~1e-16 of the terms that cancel), an answer within the tolerance of them, widened
    by ``floor``, is right; ``slack`` autograd's own measured error (an answer that near is no
    farther from them than autograd's value). Else (``proved`` False) autograd's float32 or
    half values and a first-order bound on their rounding read off the graph, within which
    rounding cannot be told from an error: no ✓ from it."""
    values: torch.Tensor
    slack: torch.Tensor
    proved: bool = False
    floor: torch.Tensor | None = None


def float64_floor(bound: torch.Tensor | None, dtype: torch.dtype, like: torch.Tensor):
    """A first-order bound on float64's rounding of a computation whose rounding in
    ``dtype`` is bounded by ``bound`` (the same terms, float64's unit roundoff): zeros where
    no bound is known."""
    if bound is None:
        return torch.zeros_like(like)
    ratio = torch.finfo(torch.float64).eps / torch.finfo(
        dtype if dtype.is_floating_point else torch.float32).eps
    return bound.reshape(like.shape).to(like) * ratio


def refinement(result, name: str, record=None, output=None) -> Refinement | None:
    """The :class:`Refinement` of input ``name``, or None where neither a float64 replay nor
    the graph (``output``, else ``result.output``) is at hand, or the output has more than
    :data:`MAX_COMPONENTS` components."""
    item = result.inputs[name]
    if is_sparse(item) or len(result.gradients[name]) > MAX_COMPONENTS or \
            not item.tensor.is_floating_point():
        return None  # (a sparse result's vectors: one colour each, up to one per entry)
    vs = list(result.gradients[name])
    d32 = item.derivatives.detach().to(torch.float64)
    with torch.random.fork_rng(devices=_rng_devices(item.tensor)):
        replays = _replays(record, result, output)
        if replays is not None:
            try:
                found = _from_replays(replays, result, name, vs, d32)
            except Exception:  # noqa: BLE001 - an op without float64 support …: no reference
                found = None
            if found is not None:
                return found
        graph = output if output is not None else result.output
        if not isinstance(graph, torch.Tensor) or graph.grad_fn is None:
            return None
        try:
            bound = rounding_bound(graph, item.tensor, vs)
        except Exception:  # noqa: BLE001 - the graph was freed (the cell's own backward) …
            return None
    if bound is None:
        return None
    bound = bound.reshape(d32.shape)
    # float64 derivatives: their bound is float64's own rounding, the finest there is
    proved = item.derivatives.dtype == torch.float64
    return Refinement(d32, bound, proved, bound if proved else None)


class AnswerRounding(NamedTuple):
    """How far a low-precision answer is from its own formula's exact value (``bound``,
    float64, shaped like the answer), and that exact value where a float64 replay computed
    it (``exact``, else None: the bound is a first-order estimate from the answer's graph)."""
    bound: torch.Tensor
    exact: torch.Tensor | None = None


def answer_rounding(answer, record=None, inputs=None) -> AnswerRounding | None:
    """How far a low-precision answer may be from its own formula's exact value, entry by
    entry (float64, shaped like the answer): a right formula computed in float32 with
    cancellation, ``(exp(2x) - 1)/(exp(2x) + 1)`` for tanh at x = 1e-4, is off by far more
    than the derivatives' tolerance, and only its computation can tell that from a wrong
    formula. With ``record`` (the cell's) and ``inputs`` (name → the user's tensor): the
    answer's own calls replayed in float64 (on copies), the difference measured; else, where
    the answer keeps its graph, the first-order bound of :func:`output_rounding`. None where
    neither is at hand (a bare tensor: its values alone say nothing of how they were
    computed), or the answer is float64 already."""
    if not isinstance(answer, torch.Tensor) or not answer.is_floating_point() \
            or answer.dtype == torch.float64 or answer.layout != torch.strided:
        return None
    with torch.random.fork_rng(devices=_rng_devices(answer)):
        replays = _replays_of(record, dict(inputs), answer, at_point=False) \
            if record is not None and inputs else None  # (x.detach()'s values are followed)
        if replays is not None:
            leaves = {n: t.detach().to(torch.float64) if t.is_floating_point()
                      else t.detach().clone() for n, t in inputs.items()}
            try:
                with torch.no_grad():
                    found = replays[1].run(leaves)
            except Exception:  # noqa: BLE001 - an op without float64 support …
                found = None
            if isinstance(found, torch.Tensor) and found.shape == answer.shape \
                    and found.dtype == torch.float64:
                return AnswerRounding((answer.detach().to(torch.float64) - found).abs(), found)
    if answer.grad_fn is None or answer.numel() > MAX_OUTPUT_ENTRIES:
        return None
    indices = [list(index) for index in itertools.product(*map(range, answer.shape))]
    try:
        bounds = output_rounding(answer, indices)
    except Exception:  # noqa: BLE001 - a graph freed by a backward …: not known
        return None
    if bounds is None or not all(math.isfinite(b) for b in bounds):
        return None
    return AnswerRounding(torch.tensor(bounds, dtype=torch.float64).reshape(answer.shape))


def _rng_devices(tensor: torch.Tensor) -> list:
    """The CUDA devices whose RNG a replay may draw from (only where CUDA is in use)."""
    if tensor.is_cuda:
        return [tensor.device.index or 0]
    return []


def _replays(record, result, output):
    """(float32 replay, float64 replay) of ``record``, or None: no record, not replayable,
    or replaying would run the user's own Python again (a custom Function's forward)."""
    if record is None:
        return None
    inputs = {n: item.tensor for n, item in result.inputs.items()}
    return _replays_of(record, inputs, output if output is not None else result.output)


def _replays_of(record, inputs: dict, target, at_point: bool = True):
    """:func:`_replays` of ``target`` computed from ``inputs`` (name → the user's tensor);
    ``at_point=False``: every call on their values followed, not only those autograd
    tracked (an answer computed from ``x.detach()``)."""
    try:
        replay = _build(record, inputs, target, verify=False, at_point=at_point)
        if runs_user_code(replay):  # checked before the verifying run would call it
            return None
        replay = _build(record, inputs, target, verify=True, at_point=at_point)
    except Exception:  # noqa: BLE001 - NotReplayable, or anything: no reference
        return None
    return replay, replay.with_dtype(torch.float64)


def _build(record, inputs: dict, output, verify: bool, at_point: bool = True):
    """The replay at the point (random draws and masks as the cell drew them) where the
    replay offers that and ``at_point``, else the plain one."""
    if not at_point:
        return build(record, inputs, output, verify=verify)
    try:
        return build(record, inputs, output, verify=verify, at_point=True)
    except TypeError:  # a replay without the option
        return build(record, inputs, output, verify=verify)


def _from_replays(replays, result, name: str, vs: list, d32: torch.Tensor):
    """The float64 derivatives and autograd's measured error, where that error is within the
    rounding bound of the float32 replay's own graph, with a margin relative to the largest
    derivative for sums inside one op (matmul), which the bound does not see (else None)."""
    replay32, replay64 = replays
    d64 = _derivatives(replay64, result, name, vs, torch.float64)
    if d64 is None or d64.shape != d32.shape:
        return None
    leaves = _fresh(result, name, None)
    with torch.enable_grad():
        out32 = replay32.run(leaves)
    bound = rounding_bound(out32, leaves[name], vs)
    error = (d32 - d64).abs()
    if bound is None:
        return None
    ops = tolerances(result.inputs[name].derivatives.dtype).backward * float(d64.abs().max())
    if not bool((error <= 2 * bound.reshape(d32.shape) + ops).all()):
        return None  # not rounding: a replay that differs from the cell's graph
    # (the slack is autograd's own error, not twice it: an answer ✓ is no farther from the
    # float64 values than autograd's own float32 value, which the plain comparison accepts)
    return Refinement(d64, error, True, float64_floor(
        bound, result.inputs[name].derivatives.dtype, d64))


def _fresh(result, name: str, dtype) -> dict:
    """New leaves standing for the inputs (only ``name`` requires grad); never the user's."""
    leaves = {}
    for key, item in result.inputs.items():
        value = item.tensor.detach()
        value = value.to(dtype) if dtype is not None and value.is_floating_point() \
            else value.clone()
        leaves[key] = value.requires_grad_(key == name)
    return leaves


def _derivatives(replay, result, name: str, vs: list, dtype) -> torch.Tensor | None:
    """vᵀJ for each v (the analysis's own ``gradient`` vectors) through ``replay``."""
    leaves = _fresh(result, name, dtype)
    with torch.enable_grad():
        out = replay.run(leaves)
    if not isinstance(out, torch.Tensor) or out.dtype != dtype or not out.requires_grad:
        return None
    rows = []
    for v in vs:
        rows.append(materialized_grad(out, leaves[name], v.to(out.dtype), retain_graph=True)[0])
    return torch.stack(rows).reshape(tuple(result.inputs[name].derivatives.shape))


def rounding_bound(output: torch.Tensor, leaf: torch.Tensor, vs: list) -> torch.Tensor | None:
    """A first-order bound on autograd's rounding error in vᵀJ for each v (stacked: one row
    per v, shaped like ``leaf``): the magnitudes that sum into each entry, carried through
    the graph. Each node's outgoing gradients carry the relative error of its incoming one
    (entry by entry where the shapes agree, else its largest) plus one unit roundoff; a
    sum of several contributions adds one unit roundoff of their magnitudes per addition.
    None where the graph is too large to hook."""
    nodes = _nodes(output)
    if nodes is None:
        return None
    edge = torch.autograd.graph.get_gradient_edge(leaf)
    rows = []
    with grads_kept(output):  # a retain_grad() tensor's .grad as the user's graph left it
        for v in vs:
            errors: dict = {}
            handles = [node.register_hook(_carry(node, errors)) for node in nodes]
            try:
                guarded_grad(output, leaf, v.to(output.dtype), retain_graph=True,
                             allow_unused=True)  # (a reentrant custom backward: refused first)
            finally:
                for handle in handles:
                    handle.remove()
            found = _incoming(errors, (edge.node, edge.output_nr))
            rows.append(torch.zeros(leaf.shape, dtype=torch.float64, device=leaf.device)
                        if found is None else found.reshape(leaf.shape))
    return torch.stack(rows)


def _nodes(output: torch.Tensor) -> list | None:
    """Every node of ``output``'s graph that computes gradients (not the leaves' own)."""
    seen, stack, found = set(), [output.grad_fn], []
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if len(seen) > MAX_NODES:
            return None
        if node.next_functions:
            found.append(node)
        stack.extend(n for n, _ in node.next_functions)
    return found


def _carry(node, errors: dict):
    """The hook that passes ``node``'s incoming error on to the nodes it feeds."""
    def hook(grad_inputs, grad_outputs):
        ratios = []
        for slot, g in enumerate(grad_outputs):
            if g is None:
                continue
            e = _incoming(errors, (node, slot))
            g = g.detach().to(torch.float64).abs()
            e = torch.zeros_like(g) if e is None else e.reshape(g.shape)
            ratios.append(torch.where(g > 0, e / g.clamp_min(1e-300), torch.zeros_like(g)))
        largest = max((float(r.max()) for r in ratios if r.numel()), default=0.0)
        for c, (target, slot) in zip(grad_inputs, node.next_functions):
            if c is None or target is None:
                continue
            unit = _unit(c.dtype)
            c = c.detach().to(torch.float64).abs()
            ratio = ratios[0] if len(ratios) == 1 and ratios[0].shape == c.shape else largest
            terms, magnitude, count, _ = errors.get((target, slot), (0, 0, 0, unit))
            errors[(target, slot)] = (terms + c * (ratio + unit), magnitude + c, count + 1, unit)
    return hook


def _unit(dtype: torch.dtype) -> float:
    """The unit roundoff of a gradient's dtype (float32's for a non-floating one)."""
    return torch.finfo(dtype if dtype.is_floating_point else torch.float32).eps / 2


def _incoming(errors: dict, key):
    """The error bound of the gradient arriving at ``key`` (node, slot): its contributions'
    bounds and the rounding of adding them up."""
    found = errors.pop(key, None)
    if found is None:
        return None
    terms, magnitude, count, unit = found
    return terms + (count - 1) * unit * magnitude if count > 1 else terms




# -- the output's own rounding (``--against``: is y's difference from f(x) rounding?) ----------

OUTPUT_ROUNDING_ULPS = 4  # each op's result within a few units of roundoff of the exact one
MAX_OUTPUT_ENTRIES = 64  # backward passes: one per output entry whose rounding is bounded


def output_in_float64(record, result, output) -> torch.Tensor | None:
    """``output`` (the cell's) computed again in float64 by the record's replay, on float64
    copies of the inputs (never the user's tensors, nor the global RNG), or None: no record,
    not replayable, or replaying would run the user's own Python again."""
    replays = _replays(record, result, output)
    if replays is None:
        return None
    leaves = {n: item.tensor.detach().to(torch.float64) if item.tensor.is_floating_point()
              else item.tensor.detach().clone() for n, item in result.inputs.items()}
    try:
        with torch.random.fork_rng(devices=_rng_devices(output)), torch.no_grad():
            found = replays[1].run(leaves)
    except Exception:  # noqa: BLE001 - an op without float64 support …: no float64 value
        return None
    ok = isinstance(found, torch.Tensor) and found.dtype == torch.float64 \
        and found.shape == output.shape
    return found.detach() if ok else None


def output_rounding(output: torch.Tensor, indices: list) -> list | None:
    """A first-order bound on the rounding error of each entry ``indices`` of ``output`` (as
    computed in its dtype from exact inputs), read off its graph: each op's result rounded
    by :data:`OUTPUT_ROUNDING_ULPS` units of roundoff, carried to the entry by its derivative
    there, ∑ₖ |∂y_i/∂v_k| · c·u·|v_k|. Needs the value v_k of every intermediate result, which
    only the graph's saved tensors hold (a node's own ``_saved_result``, or a consumer's
    ``_saved_self``/``_saved_other``): None where one is not saved (``x + 1`` is not), the
    graph is too large, or there are more than :data:`MAX_OUTPUT_ENTRIES` entries; and,
    before any pass, where the pass would run the user's code (a custom Function's backward,
    a saved tensor's unpack hook)."""
    if output.grad_fn is None or len(indices) > MAX_OUTPUT_ENTRIES or not SAVED_READABLE:
        return None  # (where torch hides the saved tensors' hooks, a pass might run one)
    nodes = _nodes(output)
    if nodes is None or any(isinstance(node, BackwardCFunction)
                            or unpack_hooked(raw_saved(node)) for node in nodes):
        return None
    values = _intermediate_values(output, nodes)
    if values is None:
        return None
    y = output.detach().to(torch.float64).abs()
    leaves = _leaves(nodes)
    bounds = []
    with grads_kept(output), torch.enable_grad():
        for index in indices:
            total = [OUTPUT_ROUNDING_ULPS * _unit(output.dtype) * float(y[tuple(index)])]
            v = torch.zeros_like(output)
            v[tuple(index)] = 1
            handles = [node.register_hook(_summing(node, values, total))
                       for node in nodes if node in values]
            try:
                guarded_grad(output, leaves, v, retain_graph=True, allow_unused=True)
            finally:
                for handle in handles:
                    handle.remove()
            bounds.append(total[0])
    return bounds


def _leaves(nodes: list) -> list:
    """Every leaf tensor of the graph (what the pass differentiates: no ``.grad`` written)."""
    found = []
    for node in nodes:
        for child, _ in node.next_functions:
            variable = getattr(child, "variable", None)
            if isinstance(variable, torch.Tensor) and not any(variable is f for f in found):
                found.append(variable)
    return found


def _intermediate_values(output: torch.Tensor, nodes: list) -> dict | None:
    """node → the value of its (only) result, for every node but the output's; None where
    one is not saved in the graph or a node has several results."""
    values: dict = {}
    for node in nodes:
        saved = getattr(node, "_saved_result", None)
        if isinstance(saved, torch.Tensor):
            values[node] = saved
        for slot, (child, nr) in enumerate(node.next_functions):
            attr = {0: "_saved_self", 1: "_saved_other"}.get(slot)
            saved = getattr(node, attr, None) if attr else None
            if child is not None and isinstance(saved, torch.Tensor):
                if nr != 0:
                    return None
                values.setdefault(child, saved)
    needed = [node for node in nodes if node is not output.grad_fn]
    if any(node not in values for node in needed):
        return None
    return {node: values[node] for node in needed}


def _summing(node, values: dict, total: list):
    """The hook that adds ``node``'s result's rounding, carried to the output entry."""
    unit = OUTPUT_ROUNDING_ULPS * _unit(values[node].dtype)
    value = values[node].detach().to(torch.float64).abs()

    def hook(grad_inputs, grad_outputs):
        g = grad_outputs[0]
        if g is not None and g.shape == value.shape:
            total[0] += unit * float((g.detach().to(torch.float64).abs() * value).sum())
        elif g is not None:
            total[0] = float("inf")  # a value not the node's result: no bound
    return hook


__all__ = ["MAX_COMPONENTS", "AnswerRounding", "Refinement", "answer_rounding", "float64_floor",
           "output_in_float64",
           "output_rounding", "refinement", "rounding_bound"]
