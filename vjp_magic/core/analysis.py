"""The analysis: given the output and the inputs, infer each input's point structure and
compute its derivatives.

:func:`differentiate` proves what the autograd graph allows (:mod:`.axisflow`), proposes
larger pairings from the shapes (:mod:`.structure`), judges them with random probes, and
computes the derivatives with one VJP per component (:mod:`.derivatives`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from . import axisflow, dependency, memory, structure
from . import validation
from .validation import check_output
from .derivatives import (CHUNK_SECONDS, LOOP_COMPONENTS, component_vjps, forward_jacobian,
                          plain_vjp)
from .pairing import Pairing
from .probes import Probes, reach_proofs
from .result import InputResult, VJPResult
from .torch_api import TorchError, torch_error

# Up to this many Jacobian entries (and output entries), one batched backward computes the
# whole Jacobian and the candidate pairings are judged on it: cheaper than a backward per
# pairing. Either way a pairing is judged by the same probe rule, so the answer does not
# depend on which side of this threshold a problem falls.
SMALL_JACOBIAN = 2**18
SMALL_OUTPUT = 4096
EXACT_PER_SIZE = 24  # candidate pairings per number of point axes on the exact path


@dataclass
class Candidate:
    """A pairing to try for one input; ``proved`` ones need no structure check."""

    pairing: Pairing
    proved: bool


def _candidates(output, tensor, proof, full: bool, per_size: int) -> list[Candidate]:
    """Larger pairings first (only those containing what the graph proves); the proved one last.

    When the graph analysis is exact, the proved pairing is the whole structure: it alone.
    """
    if full:
        return [Candidate(Pairing(), True)]
    proved = proof.pairing(tuple(output.shape), tuple(tensor.shape))
    if proof.exact:
        return [Candidate(proved, True)]
    larger = [p for p in structure.candidate_pairings(output.shape, tensor.shape, per_size)
              if set(proved) < set(p)]
    return [Candidate(p, False) for p in larger] + [Candidate(proved, True)]


def differentiate(
    output: torch.Tensor,
    inputs,
    names=None,
    *,
    output_name: str = "y",
    full: bool = False,
    memory_budget: float | None = None,
    batched: bool = True,
    max_chunk: int | None = None,
    max_pairings: int = structure.PER_SIZE,
    graph_proof: bool = True,
    keep_graph: bool = False,
    given: dict[str, torch.Tensor] | None = None,
    seed: int | None = None,
) -> VJPResult:
    """Derivatives of ``output`` with respect to ``inputs``, with their point structure inferred.

    ``inputs`` is a tensor (named ``"x"`` unless ``names`` says otherwise), a sequence of
    tensors, or a dict name → tensor. ``full=True`` skips point inference (plain Jacobian).
    ``memory_budget`` is bytes, or a fraction of free memory (default 0.25).
    ``max_pairings`` caps the candidate pairings probed per number of point axes;
    ``graph_proof=False`` ignores what the autograd graph proves (every pairing probed).
    ``given`` maps input names to full Jacobians (``output.shape + input.shape``) computed
    another way (e.g. vectorised per-sample gradients): each is used only if the probe rule
    accepts it against the graph's own vector-Jacobian products, else recomputed.
    The result keeps no reference to the output's graph unless ``keep_graph``.
    Every random probe is drawn from ``seed`` (a fresh one per call unless given; torch's
    global RNG is never used), kept as ``r.seed``: the same seed gives the same result.
    ``x.grad`` is never changed.
    """
    output = check_output(output, output_name)
    named = validation.checked_inputs(inputs, names)
    validation.refuse_empty(output, named, output_name)
    budget = memory.resolve_budget(memory_budget, output.device)
    seed = structure.new_seed() if seed is None else int(seed)
    probes = Probes(output, named, seed)
    accepted = _from_given(output, named, given or {}, probes)
    rest = {n: t for n, t in named.items() if n not in accepted}
    proofs = {name: _proof(output, t, graph_proof) for name, t in rest.items()}
    if accepted:  # their derivatives need no structure: only what the graph reaches
        proofs.update(reach_proofs(output, {n: named[n] for n in accepted}))
    workspace = max(p.workspace for p in proofs.values())
    context = _Context(output, output_name, budget, batched, max_chunk, workspace, full, probes)
    if rest:
        accepted.update(_accepted(context, rest, proofs, max_pairings))
    accepted = {name: (c, _nan_filled(context, named[name], c.pairing, d))
                for name, (c, d) in accepted.items()}
    results = {name: _input_result(name, named[name], proofs[name], *accepted[name],
                                   rejected=context.rejected.get(name, ()))
               for name in named}
    result = VJPResult(output=output, output_name=output_name, inputs=results, full=full,
                       memory_budget=budget, seed=seed)
    result.notes.extend(validation.unverifiable_notes(result, probes.nonfinite))
    _annotate(result, probes.ordinary)  # NaN/inf, zero Jacobians, unverified backward
    result.notes.extend(dict.fromkeys(p.limitation for p in proofs.values() if p.limitation))
    if not keep_graph:
        result.release_graph()
    return result


def _nan_filled(context, tensor, pairing, derivatives) -> torch.Tensor:
    """A full Jacobian (no points) with its NaN entries filled from the other mode where it has
    a number. Reverse mode reads 0·∞ where a zero seed meets an infinite local derivative
    (every other row of sqrt at 0); forward mode carries another seed through other nodes,
    so between them an entry is NaN only where both are."""
    if any(tensor.shape[b] > 1 for b in pairing.in_axes) or not bool(derivatives.isnan().any()):
        return derivatives
    output = context.output
    return validation.nan_filled(derivatives, (lambda: forward_jacobian(output, tensor),
                                           lambda: context.vjps([tensor], (), batched=False)[0][0]))


def _annotate(result, ordinary: set) -> None:
    """:func:`.validation.annotate`, without its pass over the derivatives when every input's are
    known finite and not all 0 (then it would add no note on them)."""
    if ordinary >= set(result.inputs):
        result.notes.extend(validation.unverified_notes(result))
    else:
        validation.annotate(result)


def _accepted(context, named, proofs, max_pairings) -> dict[str, tuple[Candidate, torch.Tensor]]:
    """Per input, the first candidate pairing the probe rule accepts, and its derivatives."""
    output = context.output
    small = output.numel() * sum(t.numel() for t in named.values()) <= SMALL_JACOBIAN
    exact = small and context.batched and output.numel() <= SMALL_OUTPUT
    per_size = EXACT_PER_SIZE if exact else max_pairings
    candidates = {name: _candidates(output, t, proofs[name], context.full, per_size)
                  for name, t in named.items()}
    if exact:
        return _from_exact_jacobian(context, named, candidates, context.probes)
    return _from_verified_pairings(context, named, candidates, context.probes)


def _from_given(output, named, given, probes) -> dict[str, tuple[Candidate, torch.Tensor]]:
    """The full Jacobians computed elsewhere that the probe rule accepts."""
    usable = {}
    for name, jacobian in given.items():
        tensor = named.get(name)
        shape = tuple(output.shape) + tuple(tensor.shape) if tensor is not None else ()
        if tensor is not None and tuple(jacobian.shape) == shape:
            usable[name] = jacobian
    agreed = probes.agree_full(usable) if usable else set()
    for name in usable:  # a given Jacobian not accepted is recomputed: no note on it
        probes.nonfinite.pop(name, None)
    return {name: (Candidate(Pairing(), True), usable[name]) for name in usable
            if name in agreed}


def _input_result(name, tensor, proof, candidate: Candidate, derivatives,
                  rejected=()) -> InputResult:
    return InputResult(name=name, tensor=tensor, pairing=candidate.pairing,
                       derivatives=derivatives, unused=not proof.depends,
                       evidence="proved" if candidate.proved else "observed",
                       unverified=tuple(dict.fromkeys(proof.custom)), rejected=tuple(rejected))


def _proof(output, tensor, graph_proof: bool) -> axisflow.GraphProof:
    proof = axisflow.prove(output, tensor)
    if not graph_proof:  # keep what the walk found out, claim no structure
        proof.carries, proof.exact = {}, False
    return proof


@dataclass
class _Context:
    """What every stage of one analysis needs to know."""

    output: torch.Tensor
    output_name: str
    budget: int
    batched: bool
    max_chunk: int | None
    workspace: int
    full: bool
    probes: Probes
    rejected: dict = field(default_factory=dict)  # name → pairings the probe rule rejected

    def reject(self, name: str, pairing) -> None:
        self.rejected.setdefault(name, []).append(pairing)

    def vjps(self, tensors, point_out, batched=None):
        """One VJP per component (see :func:`component_vjps`); a batched run starts with a
        chunk sized by how long one plain backward takes, so even its first chunk is short."""
        batched = self.batched if batched is None else batched
        count = math.prod(n for a, n in enumerate(self.output.shape) if a not in point_out)
        first = None
        if batched and count > LOOP_COMPONENTS:
            seconds = max(self.probes.seconds_per_vector(), 1e-6)
            first = max(1, int(CHUNK_SECONDS / seconds))
        return component_vjps(self.output, tensors, point_out, self.budget, batched=batched,
                              max_chunk=self.max_chunk, workspace=self.workspace, first=first)

    def refuse_if_over(self, nbytes: int, count: int, named=(), point_out=()) -> None:
        """Refuse over the budget, saying where a rejected pairing broke (for ``named``)."""
        advice = memory.DEFAULT_ADVICE + (
            ", or let the point structure work (drop --full)" if self.full else "")
        with dependency.verdict_on_refusal(self, dict(named), point_out):
            memory.refuse_if_over(
                nbytes, self.budget, f"The derivatives of {self.output_name} ({count:,} "
                "backward passes)", advice=advice)


def _prefers_forward(output: torch.Tensor, tensor: torch.Tensor) -> bool:
    return output.numel() > FORWARD_RATIO * tensor.numel()


FORWARD_RATIO = 4  # forward mode when the output has this many times more entries than x


def _jacobian_either_mode(context, tensor, probes, name) -> torch.Tensor:
    """The full Jacobian: forward mode (n passes) where possible, else reverse (m passes).

    Forward mode relies on double backward, which some graphs silently lack (custom
    functions marked once_differentiable), so its result is checked with the probe.
    """
    output = context.output
    try:
        jac = forward_jacobian(output, tensor)
        flat = jac.reshape((output.numel(),) + tuple(tensor.shape))
        if structure.probe_agrees(flat, probes.vector().reshape(-1), probes.vjp(name), (),
                                  nonfinite_agree=True):  # the same numbers, another way
            return jac
    except RuntimeError as error:
        if torch_error(error) is TorchError.SECOND_PASS:
            raise
    flat = context.vjps([tensor], (), batched=False)[0][0]
    return flat.reshape(tuple(output.shape) + tuple(tensor.shape))


def _checked_jacobians(context, named, probes) -> dict[str, torch.Tensor]:
    """Full Jacobians from batched backward passes, each checked against the plain probe."""
    output = context.output
    reverse = [n for n in named if not _prefers_forward(output, named[n])]
    flats = dict(zip(reverse, context.vjps([named[n] for n in reverse], ())[0])) \
        if reverse else {}
    jacobians = {}
    v = probes.vector().reshape(-1)
    for name in named:
        if name not in flats:
            jacobians[name] = _jacobian_either_mode(context, named[name], probes, name)
            continue
        flat = flats[name]
        if output.numel() > 1 and not structure.probe_agrees(
                flat, v, probes.vjp(name), (), nonfinite_agree=True):
            flat = context.vjps([named[name]], (), batched=False)[0][0]  # batching went wrong
        jacobians[name] = flat.reshape(tuple(output.shape) + tuple(named[name].shape))
    return jacobians


def _with_proposal(candidates: list[Candidate], pairing, position: int = 0) -> list[Candidate]:
    """``candidates`` with ``pairing`` tried at ``position``, if it is new and claims more than
    the proved pairing (the last candidate)."""
    proved = candidates[-1].pairing
    known = {c.pairing for c in candidates}
    if pairing in known or not set(proved) < set(pairing):
        return candidates
    return candidates[:position] + [Candidate(pairing, False)] + candidates[position:]


def _rows(output, read_row, seed: int) -> list[tuple[tuple, torch.Tensor]]:
    """(output multi-index, nonzero input multi-indices) for a few rows of the Jacobian, at
    output entries drawn from the run's ``seed``."""
    rows, strides = [], structure.row_major_strides(output.shape)
    for index in structure.row_indices(tuple(output.shape), seed):
        flat = sum(i * stride for i, stride in zip(index, strides))
        rows.append((index, read_row(flat).nonzero()))
    return rows


def _row_proposal(output, tensor, candidates, position, read_row, seed, drop=None):
    """A few rows of J: the pairing they suggest is tried at ``position``. With ``drop`` (called
    with each), candidates from there on holding a pair the rows break (a non-zero entry off
    the points) are dropped untried; the proved one is kept."""
    if len(candidates) < 2 or output.numel() <= 1:  # nothing to choose, or a scalar output
        return candidates
    rows = _rows(output, read_row, seed)
    if drop is not None:
        broken = structure.broken_pairs(output.shape, tensor.shape, rows)
        kept = candidates[:position]
        for candidate in candidates[position:]:
            if candidate.proved or not broken & set(candidate.pairing):
                kept.append(candidate)
            else:
                drop(candidate.pairing)
        candidates = kept
    pairing = structure.consistent_pairing(output.shape, tensor.shape, rows)
    return _with_proposal(candidates, pairing, position)


def _one_hot_row(output, tensor, flat: int) -> torch.Tensor:
    v = torch.zeros(output.numel(), dtype=output.dtype, device=output.device)
    v[flat] = 1
    return plain_vjp(output, [tensor], v.reshape(output.shape))[0]


def _from_exact_jacobian(context, named, candidates, probes):
    """Small problems: one batched backward gives the whole Jacobian; each candidate pairing
    is judged on it by the probe rule (the same rule as for large problems)."""
    out_ndim = context.output.dim()
    jacobians = _checked_jacobians(context, named, probes)
    accepted = {}
    for name, jac in jacobians.items():
        flat = jac.reshape((context.output.numel(),) + tuple(named[name].shape))
        if not candidates[name][0].proved:  # rows of J suggest a pairing, whatever the order
            candidates[name] = _row_proposal(context.output, named[name], candidates[name], 0,
                                             lambda row, flat=flat: flat[row], probes.seed)
        probes.use_jacobian(name, flat)
        for candidate in candidates[name]:
            derivatives = structure.gather_derivatives(jac, out_ndim, candidate.pairing)
            if candidate.proved or probes.agree(name, derivatives, candidate.pairing):
                accepted[name] = (candidate, derivatives)
                break
            context.reject(name, candidate.pairing)
    return accepted


def _from_verified_pairings(context, named, candidates, probes):
    """Large problems: per candidate pairing, one VJP per component; the plain probe checks
    the structure (unless proved) and the batching (when batched)."""
    output = context.output
    position = dict.fromkeys(named, 0)
    accepted: dict[str, tuple[Candidate, torch.Tensor]] = {}
    while len(accepted) < len(named):
        pending = [n for n in named if n not in accepted]
        # Inputs whose current pairing uses the same output point axes share one backward.
        point_out = _point_out(candidates[pending[0]][position[pending[0]]])
        group = [n for n in pending if _point_out(candidates[n][position[n]]) == point_out]
        count = math.prod(output.shape[a] for a in range(output.dim()) if a not in point_out)
        if _skip_over_budget(context, named, candidates, position, group, count):
            continue  # a later candidate may fit
        context.refuse_if_over(
            count * sum(named[n].numel() for n in group) * output.element_size(), count,
            {n: named[n] for n in group}, point_out)
        forward = [n for n in group if count == output.numel() and candidates[n][position[n]].proved
                   and _prefers_forward(output, named[n])]
        for name in forward:
            candidate = candidates[name][position[name]]
            jac = _jacobian_either_mode(context, named[name], probes, name)
            accepted[name] = (candidate, structure.gather_derivatives(jac, output.dim(),
                                                                      candidate.pairing))
        group = [n for n in group if n not in forward]
        if not group:
            continue
        stacked, was_batched = context.vjps([named[n] for n in group], point_out)
        for i, name in enumerate(group):
            candidate = candidates[name][position[name]]
            derivatives = stacked[i].reshape(
                structure.component_shape(output.shape, candidate.pairing)
                + tuple(named[name].shape))
            if not candidate.proved and not probes.agree(name, derivatives, candidate.pairing):
                context.reject(name, candidate.pairing)
                if position[name] == 0:  # the likeliest pairing failed: ask a few rows of J
                    candidates[name] = _row_proposal(
                        output, named[name], candidates[name], 1,
                        lambda row, t=named[name]: _one_hot_row(output, t, row), probes.seed,
                        drop=lambda pairing, n=name: context.reject(n, pairing))
                position[name] += 1
                continue
            if was_batched and candidate.proved and not probes.agree(
                    name, derivatives, candidate.pairing, batching=True):  # batching went wrong
                derivatives = context.vjps([named[name]], point_out, batched=False)[0][0] \
                    .reshape(derivatives.shape)
            accepted[name] = (candidate, derivatives)
    return accepted


def _skip_over_budget(context, named, candidates, position, group, count) -> bool:
    """When the group's derivatives would be over the budget, skip the largest input's
    candidate if it is not its last one (True); the last one is refused by the caller."""
    size = context.output.element_size()
    if count * sum(named[n].numel() for n in group) * size <= context.budget:
        return False
    skippable = [n for n in group if position[n] < len(candidates[n]) - 1]
    if not skippable:
        return False
    position[max(skippable, key=lambda n: named[n].numel())] += 1
    return True


def _point_out(candidate: Candidate) -> tuple[int, ...]:
    return tuple(sorted(candidate.pairing.out_axes))
