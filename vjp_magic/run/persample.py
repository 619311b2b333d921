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

from ..core import analysis, axisflow, memory, validation
from ..core import given as given_jacobians
from ..core.derivatives import pass_key, remember_seconds
from ..core.given import Deferred, GivenJacobian
from ..core.outer import written
from ..core.probes import Probes, new_seed, probe_vector
from ..core.result import VJPResult
from .integer_rows import IntegerRows, identity_index
from .expanded import (PerSampleGradients, captured_gradients, per_sample_by_rules,
                       rule_uses, rules_interpreter)
from .record import tensors_in
from .replay import Replay, aliases, close, distinct, replayable

_RESHAPES = {"view", "reshape"}  # Tensor.view, Tensor.reshape, torch.reshape


def per_sample_jacobians(record, inputs: dict, output, memory_budget: float | None = None,
                         graph=None, probe: torch.Tensor | None = None,
                         lazy: bool = False) -> dict | None:
    """``{name: J}`` with ``J`` of shape ``output.shape + input.shape`` (row b: the gradient
    of sample b's loss), or None where the case does not apply, the Jacobians would not fit
    ``memory_budget`` (bytes or a fraction of free memory, as the analysis reads it), or
    the replay cannot be vectorised faithfully. By the per-layer rules, the dict's
    ``magnitudes`` holds, for a parameter whose entries sum terms (a bias over positions),
    the sums of those terms' absolute values, shaped like its Jacobian. ``graph``: the
    analysed graph (:func:`.hookfree.analysed_graph`), replayed with :func:`rules_capture`'s
    interpreter: the rules read its replay instead of running one of their own; there,
    ``probe`` (shaped like the output: the analysis' probe 0) weights one of the rules' check
    passes, which also gives its vᵀJ on that graph (the dict's ``probe_vjps``). ``lazy``: a
    Linear weight's may come as :class:`~vjp_magic.core.outer.OuterProducts`, written when
    read (else every one is a tensor)."""
    if not _per_sample_shape(output) or not inputs or record is None \
            or getattr(record, "failed", None) is not None:
        return None
    if not all(isinstance(t, torch.Tensor) and t.is_floating_point() for t in inputs.values()):
        return None
    names, inputs = aliases(inputs), distinct(inputs)  # one tensor named twice: once
    need = output.numel() * sum(t.numel() * t.element_size() for t in inputs.values())
    if 2 * need > memory.resolve_budget(memory_budget, output.device):
        return None  # the analysis says so clearly, or finds a cheaper way
    shared = _shared(graph, output.shape[0])
    grads = None if shared is None else captured_gradients(
        shared, graph.output, {name: graph.inputs[name] for name in inputs}, output,
        keep_graph=True, probe=probe, compared=True,  # the analysed graph's output: the
        lazy=True)  # cell's
    if grads is None:
        grads = _replayed(record, inputs, output, rules=shared is None)
    if grads is None:
        return None
    shapes = {name: tuple(output.shape) + tuple(t.shape) for name, t in inputs.items()}
    magnitudes, weighted = getattr(grads, "magnitudes", {}), getattr(grads, "weighted", {})
    vjps = getattr(grads, "probe_vjps", {})
    found = PerSampleGradients(
        {name: _shaped(grads[first] if lazy else written(grads[first]), shapes[first])
         for name, first in names.items()},
        {name: _shaped(magnitudes[first], shapes[first]) for name, first in names.items()
         if first in magnitudes}, separated=getattr(grads, "separated", False),
        weighted={name: weighted[first] for name, first in names.items() if first in weighted})
    found.probe_vjps = {name: vjps[first] for name, first in names.items() if first in vjps}
    return found


def _shaped(t, shape: tuple):
    if isinstance(t, Deferred):
        return t.then(lambda found: _shaped(found, shape))
    return t if t.shape == shape else t.reshape(shape)


def _replayed(record, inputs: dict, output, rules: bool = True) -> dict | None:
    """The per-sample gradients from a replay of the per-layer rules' own (``rules``) or
    vmap's; None where it cannot be built or vectorised faithfully."""
    try:  # the replay's values are compared with the output below: no separate check
        replay, data = sample_data(record, inputs, output)
    except Exception:  # noqa: BLE001 - never break the cell for a faster path
        return None
    if replay is None:  # not replayable, or only by running the cell's own code again
        return None
    samples = per_sample_constants(replay, output.shape[0], {**inputs, **data})
    if not samples and not data:
        return None
    try:  # the global RNG as a plain run leaves it, whatever the replay draws
        with torch.random.fork_rng(devices=_devices(output)):
            return _computed(replay, inputs, data, samples, output, rules)
    except Exception:  # noqa: BLE001 - an op vmap cannot batch, data-dependent shapes …
        return None


def _devices(output) -> list:
    return [output.device.index or 0] if output.is_cuda else []


def rules_capture(inputs: dict, output):
    """The interpreter factory to hand :func:`.hookfree.analysed_graph` so that the rules
    read its replay (:func:`.expanded.rules_interpreter`), or None where they would not."""
    if not _per_sample_shape(output) or not inputs or not all(
            isinstance(t, torch.Tensor) and t.is_floating_point() and t.requires_grad
            for t in inputs.values()):
        return None
    return rules_interpreter(inputs, output.shape[0])


def _shared(graph, batch: int):
    """The analysed graph's capturing interpreter, where its replay kept the rule steps and
    reads per-sample data (a constant with the batch on axis 0, as :func:`_replayed` asks)."""
    hook_free = getattr(graph, "hook_free", False)  # a replayed copy, or proved so
    capture = getattr(graph, "interpreter", None) if hook_free else None
    if capture is None:
        return None
    inputs = {id(t) for t in graph.inputs.values()}
    if not any(key not in inputs and value.dim() and value.shape[0] == batch
               for step in capture.steps for key, value in step.consts.items()):
        return None
    return capture


class PerSampleGiven(dict):
    """name -> :class:`~vjp_magic.core.given.GivenJacobian`; ``seed``: the analysis' seed
    whose probe 0 weighted the rules' pass (its vᵀJ comes with each Jacobian), or None."""

    seed: int | None = None


def per_sample_given(record, inputs: dict, output, memory_budget: float | None = None,
                     graph=None, seed: int | None = None, lazy: bool = False) -> dict | None:
    """:func:`per_sample_jacobians` as the analysis takes them (``given``): name ->
    :class:`~vjp_magic.core.given.GivenJacobian` (the magnitudes where a rule summed terms
    that may cancel; whether the rules checked every pair of samples apart). On the
    analysed ``graph``, the rules' probe pass or first check pass is weighted by probe 0 of
    ``seed`` (a fresh one where None; the result's ``seed``: hand it to the analysis), so
    that the analysis needs no backward of its own for it. ``lazy``: as
    :func:`per_sample_jacobians` (:func:`accepted_result` reads them so; the analysis'
    :func:`~vjp_magic.core.given.split` writes them)."""
    probe = None
    if graph is not None and getattr(graph, "hook_free", False) and _per_sample_shape(output):
        seed = new_seed() if seed is None else validation.checked_seed(seed)
        probe = probe_vector(graph.output, seed, 0)
    found = per_sample_jacobians(record, inputs, output, memory_budget, graph=graph,
                                 probe=probe, lazy=lazy)
    if found is None:
        return None
    magnitudes = getattr(found, "magnitudes", {})
    weighted = getattr(found, "weighted", {})
    vjps = getattr(found, "probe_vjps", {})
    separated = bool(getattr(found, "separated", False))
    given = PerSampleGiven({name: GivenJacobian(
        j, magnitudes.get(name), separated, weighted.get(name),
        None if name not in vjps else (seed, probe, vjps[name])) for name, j in found.items()})
    given.seed = seed if vjps else None
    return given


def accepted_result(graph, given, output_name: str,
                    memory_budget: float | None = None) -> VJPResult | None:
    """The result of the per-sample gradients ``given`` (:func:`per_sample_given` on the
    analysed ``graph``) where the probe rule accepts every input's, as the general analysis
    (:func:`vjp_magic.core.analysis.differentiate`) would build it from them: the same
    check (:func:`vjp_magic.core.given.agreed`, with the probes of the same seed), the same
    fields. Nothing is left for the analysis to decide there (a full Jacobian needs no
    pairing; no pass runs, so no ``retain_grad`` tensor needs keeping). None wherever it
    would decide something: a graph not hook-free (neither the replay nor the cell's own
    proved so: :attr:`.hookfree.AnalysedGraph.hook_free`), an input without a
    Jacobian checked per sample, a Jacobian not accepted, not finite or all 0 (notes, NaN
    filling), a custom Function on the way; the caller then runs the analysis."""
    if not isinstance(given, PerSampleGiven) or given.seed is None \
            or not getattr(graph, "hook_free", False):
        return None
    output, named = graph.output, graph.inputs
    if set(given) != set(named) or not all(
            isinstance(g, GivenJacobian) and g.samples_separated and g.probe_vjp is not None
            and g.probe_vjp[0] == given.seed
            and tuple(g.jacobian.shape) == tuple(output.shape) + tuple(named[n].shape)
            for n, g in given.items()):
        return None
    output = validation.check_output(output, output_name)
    named = validation.checked_inputs(named, None)
    validation.refuse_empty(output, named, output_name)
    budget = memory.resolve_budget(memory_budget, output.device)
    probes = Probes(output, named, given.seed)
    jacobians, magnitudes, separated = given_jacobians.split(given, lazy=True)
    if given_jacobians.agreed(probes, jacobians, magnitudes, separated) != set(named) \
            or not probes.ordinary >= set(named) or probes.nonfinite:
        return None
    proofs = axisflow.reach_proofs(output, named)
    if not all(p.depends and not p.custom and p.limitation is None for p in proofs.values()):
        return None
    remember_seconds(pass_key(output, named.values(), 0), probes.seconds)
    inputs = {name: analysis.input_result(name, t, proofs[name], analysis.GIVEN_TAKEN,
                                          jacobians[name])
              for name, t in named.items()}  # (one owner of an input's fields)
    return VJPResult(output=output, output_name=output_name, inputs=inputs, full=False,
                     memory_budget=budget, seed=probes.seed)


def _computed(replay: Replay, inputs: dict, data: dict, samples: dict, output,
              rules: bool = True) -> dict | None:
    """By the per-layer rules (one batched replay; the unweighted and probe passes, or the
    check's) where every input has one (and ``rules``: not already tried on the analysed
    graph's replay), else by vmap over samples of the batch-of-one replay (None where its
    values differ from the output: the samples are not independent)."""
    grads = per_sample_by_rules(replay, inputs, data, output, lazy=True) if rules else None
    if grads is not None:
        return grads
    if not samples_apart(replay, inputs, data, samples, output.shape[0]):
        return None  # a sample's loss reads other samples: vmap would compute another function
    one = batch_of_one(replay, output.shape[0])
    grads, values = _vectorised(one, inputs, data, samples, tuple(output.shape[1:]))
    if not close(values.reshape(output.shape), output.detach()):
        return None  # the samples are not independent: the per-sample forward differs
    return PerSampleGradients(grads, _rule_magnitudes(replay, inputs, data, output)
                              if rules else {})


def samples_apart(replay: Replay, inputs: dict, data: dict, samples: dict,
                  batch: int) -> bool:
    """Whether the record proves that output row b reads only row b of every per-sample
    tensor (``data`` by name, ``samples`` by id): the replay run once on leaves standing for
    the floating ones, and :func:`.axisflow.prove` must find output axis 0 carrying each
    one's axis 0. A step reading across the batch (a mean or softmax over it, BatchNorm in
    training mode, a sort, roll, index or cat along it, a matmul contracting it, a view
    merging it with no way back) loses that carry: decided from the graph's structure,
    never its numbers (a coupling of 1e-5 passes any tolerance, yet vmap's batch of one
    computes another function). Integer data (targets, token ids, masks) are followed by
    :class:`.integer_rows.IntegerRows`: only calls keeping rows apart may read them, and
    the floating tensors made from them are leaves proved as the data's. False where the
    run fails."""
    every = {**data, **samples}
    if not every:
        return True
    leaves = {key: t.detach().clone().requires_grad_() if t.is_floating_point() else t
              for key, t in every.items()}
    tensors = {name: t.detach() for name, t in inputs.items()}
    tensors.update({name: leaves[name] for name in data})
    runner = IntegerRows(replay.steps, batch)
    for t in leaves.values():
        if not t.is_floating_point():
            runner.follow(t)
    try:
        with torch.enable_grad():
            value = replay.run(tensors, {key: leaves[key] for key in samples}, runner)
    except Exception:  # noqa: BLE001 - not followed: not proved
        return False
    if runner.refused or not isinstance(value, torch.Tensor) or value.dim() < 1 \
            or value.shape[0] != batch:
        return False
    sources = [t for t in leaves.values() if t.is_floating_point()] + runner.leaves
    for leaf in sources:
        proof = axisflow.prove(value, leaf)
        if proof.depends and proof.carries.get(0) != (0,):
            return False
    return True


def _rule_magnitudes(replay: Replay, inputs: dict, data: dict, output) -> dict:
    """name -> the sums of the absolute terms adding up to each per-sample gradient entry
    (:class:`.expanded.PerSampleGradients`' ``magnitudes``), by the per-layer rules for the
    inputs whose every use has one, and for those whose every use is a call linear in each
    tensor (``x @ w``, ``h + b``: :mod:`.multilinear`), where some other input has neither
    (those read as data). vmap's gradients come without them, and an entry whose terms
    cancel to exactly 0 (a conv bias before InstanceNorm, which removes a per-channel
    constant; a key bias added by hand before an attention) is then float32 noise judged
    against its own size: refused, and that input's Jacobian recomputed by B backward
    passes. The rules check the samples apart as they do for every input (else none); the
    probes still judge vmap's Jacobian, now at the terms' scale. Each is a
    :class:`~vjp_magic.core.given.Deferred`: the rules' replay and passes run only if some
    Jacobian is refused at its own scale (and then once for all)."""
    batch = output.shape[0]
    ruled = {name: t for name, t in inputs.items()
             if rule_uses(replay, {name: t}, batch, linear=True) is not None}
    if not ruled or len(ruled) == len(inputs) and rule_uses(replay, inputs, batch) is not None:
        return {}  # none, or all by the rules alone: those already failed
    rest = {name: t for name, t in inputs.items() if name not in ruled}
    made = Deferred(lambda: _made_magnitudes(replay, ruled, {**data, **rest}, output))
    return {name: made.then(lambda found, name=name: found.get(name)) for name in ruled}


def _made_magnitudes(replay: Replay, ruled: dict, data: dict, output) -> dict:
    """:func:`_rule_magnitudes`' M, when the analysis asks: {} where the rules fail."""
    try:  # the global RNG as a plain run leaves it, whatever the replay draws
        with torch.random.fork_rng(devices=_devices(output)):
            found = per_sample_by_rules(replay, ruled, data, output, linear=True)
    except Exception:  # noqa: BLE001 - never break the cell for a tolerance's scale
        return {}
    return {} if found is None else dict(found.magnitudes)


def sample_data(record, inputs: dict, output) -> tuple[Replay | None, dict]:
    """The replay of ``output`` from ``inputs`` and the per-sample data it reads as inputs
    (name -> recorded tensor): where a constant with an axis of the batch size was computed
    by recorded calls (``x.transpose(0, 1)`` inside a batch-first attention: the batch on
    axis 1), the tensors with the batch size on axis 0 they read, so that the replay
    computes it per sample."""
    replay = replayable(record, inputs, output, verify=False, user_code=False)
    if replay is None:
        return None, {}
    batch = output.shape[0]
    made = _producers(record)
    roots: dict = {}
    for key, value in replay.constants().items():
        if batch in value.shape:  # on axis 0 too: a sequence as long as the batch
            for tensor in _batch_first_sources(made, key, batch):
                roots.setdefault(id(tensor), tensor)
    if not roots:
        return replay, {}
    data = {f"sample data {i}": t for i, t in enumerate(roots.values())}
    named = {**inputs, **data}
    rebuilt = replayable(record, named, output, verify=False, user_code=False)
    return (rebuilt, data) if rebuilt is not None else (replay, {})


def _producers(record) -> dict:
    """id of a recorded result -> the call that made it."""
    return {id(tensor): call for call in record.calls for tensor in tensors_in(call.result)}


def _batch_first_sources(made: dict, key: int, batch: int, depth: int = 8) -> list:
    """The recorded tensors with the batch size on axis 0 that the calls making tensor
    ``key`` read, following only tensors with an axis of the batch size."""
    call = made.get(key)
    if call is None or not depth:
        return []
    found = []
    for tensor in tensors_in((call.args, call.kwargs)):
        if tensor.dim() and tensor.shape[0] == batch:
            found.append(tensor)
        elif batch in tensor.shape:
            found += _batch_first_sources(made, id(tensor), batch, depth - 1)
    return found


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
    record holds as the number B) reshaping to a batch of one instead; also those merging
    the batch as the outer factor of the leading axis and splitting it back (einops'
    ``'b c l -> (b c) l'``: ``reshape(B*C, L)`` becomes ``reshape(C, L)``); and an index
    whose first item is proved the identity on the batch (``logp[torch.arange(B), t]``)
    indexing with row 0's instead."""
    steps = [_index_for_one(_reshape_for_one(step, batch), batch) for step in replay.steps]
    return dataclasses.replace(replay, steps=steps)


def _index_for_one(step, batch: int):
    """``source[index]`` whose first item picks row b at b (:func:`.integer_rows.
    identity_index`, on the values the call read) as ``source[zeros, …]``: at a batch of one
    the sample's row is row 0."""
    if getattr(step.func, "__name__", "") != "__getitem__" or len(step.args) != 2:
        return step
    source, index = step.args
    read = index if isinstance(index, tuple) else (index,)
    items = identity_index(tuple(step.consts.get(id(i), i) if isinstance(i, torch.Tensor)
                                 else i for i in read), source, batch)
    if items is None:
        return step
    first = torch.zeros((1,) + tuple(items[0].shape[1:]), dtype=torch.long,
                        device=items[0].device)
    return dataclasses.replace(step, args=(source, (first,) + tuple(read[1:])))


def _reshape_for_one(step, batch: int):
    if getattr(step.func, "__name__", "") not in _RESHAPES or not step.args:
        return step
    source, result = step.args[0], step.result
    if not (isinstance(source, torch.Tensor) and isinstance(result, torch.Tensor)
            and source.dim() and result.dim()):
        return step
    lead = _leading_for_one(tuple(source.shape), tuple(result.shape), batch)
    if lead is None:
        return step
    rest = step.args[1:]
    if len(rest) == 1 and isinstance(rest[0], (tuple, list)):  # view((B, -1))
        shape = tuple(rest[0])
        if shape and isinstance(shape[0], int) and shape[0] == result.shape[0]:
            return dataclasses.replace(step, args=(source, (lead,) + shape[1:]))
    elif rest and isinstance(rest[0], int) and rest[0] == result.shape[0]:  # view(B, -1)
        return dataclasses.replace(step, args=(source, lead) + tuple(rest[1:]))
    return step


def _leading_for_one(source: tuple, result: tuple, batch: int) -> int | None:
    """The leading size a reshape of ``source`` to ``result`` takes at a batch of one: 1
    where both lead with the batch, or where ``result`` splits the batch back off a leading
    axis of ``B * k`` (``k`` the size of ``result``'s next axes); ``k`` where ``result``'s
    leading axis merges the batch with ``source``'s next axes; else None (left alone)."""
    def merged(lead: int, shape: tuple) -> bool:  # lead == batch * shape[1] * … * shape[j]
        size = batch
        for n in shape[1:]:
            size *= n
            if size >= lead:
                break
        return size == lead and lead > batch
    if source[0] == result[0] == batch:
        return 1
    if result[0] == batch and merged(source[0], result):
        return 1
    if source[0] == batch and merged(result[0], source):
        return result[0] // batch
    return None


def _vectorised(replay: Replay, inputs: dict, data: dict, samples: dict,
                rest: tuple) -> tuple[dict, torch.Tensor]:
    """vmap over samples of grad over the parameters of one sample's loss (the per-sample
    data, inputs of the replay, and constants, each a batch of one)."""
    keys = list(samples)
    params = {name: t.detach() for name, t in inputs.items()}
    values = {name: t.detach() for name, t in data.items()}

    def loss(parameters, own, *sample):
        overrides = {key: value.unsqueeze(0) for key, value in zip(keys, sample)}
        tensors = {**parameters, **{name: t.unsqueeze(0) for name, t in own.items()}}
        value = replay.run(tensors, overrides)
        value = value.reshape(())
        return value, value

    per_sample = torch.func.vmap(torch.func.grad(loss, has_aux=True),
                                 in_dims=(None, 0) + (0,) * len(keys))
    grads, values = per_sample(params, values, *[samples[k] for k in keys])
    return grads, values.reshape((-1,) + rest)


__all__ = ["PerSampleGiven", "accepted_result", "batch_of_one", "per_sample_constants",
           "per_sample_given", "per_sample_jacobians", "rules_capture", "samples_apart"]
