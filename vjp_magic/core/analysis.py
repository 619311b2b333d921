"""The analysis: given the output and the inputs, infer each input's point structure and
compute its derivatives.

:func:`differentiate` proves what the autograd graph allows (:mod:`.axisflow`), proposes
larger pairings (:mod:`.candidates`), judges them with random probes (:mod:`.probes`), on the
exact Jacobian of a small problem or per pairing on a large one (:mod:`.strategies`), and
computes the derivatives with one VJP per component (:mod:`.derivatives`).
"""
from __future__ import annotations

import dataclasses

import torch

from . import axisflow, memory, structure, validation
from . import given as given_jacobians
from .candidates import Candidate, candidates
from .sparse_choice import SparseChoice
from .derivatives import forward_at_points, forward_jacobian, pass_key, remember_seconds
from .indexmaps import proved_pattern
from .pairing import Evidence, Pairing
from .probes import Probes, new_seed
from .result import InputResult, VJPResult
from .retained import keeps_retained_grads
from .strategies import Context, from_exact_jacobian, from_verified_pairings

# Up to this many Jacobian entries (output entries × input entries; the default of
# ``exact_up_to``) and SMALL_OUTPUT output entries, one batched backward computes the whole
# Jacobian and the candidate pairings are judged on it: cheaper than a backward per pairing.
# Either way a pairing is judged by the same probe rule, so the answer does not depend on
# which side of this threshold a problem falls.
SMALL_JACOBIAN = 2**18
SMALL_OUTPUT = 4096
EXACT_PER_SIZE = 24  # candidate pairings per number of point axes on the exact path


@keeps_retained_grads  # a retain_grad tensor's .grad as a plain run leaves it
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
    exact_up_to: int = SMALL_JACOBIAN,
) -> VJPResult:
    """Derivatives of ``output`` with respect to ``inputs``, with their point structure inferred.

    ``inputs`` is a tensor (named ``"x"`` unless ``names`` says otherwise), a sequence of
    tensors, or a dict name → tensor. ``full=True`` skips point inference (plain Jacobian).
    An input with no points, of an output with 32 entries or more, gets a sparse Jacobian
    where one backward per colour of its pattern pays (:class:`.sparse_choice.SparseChoice`):
    ``r.derivatives[name]`` is then sparse COO, ``r.inputs[name].sparse`` says how.
    ``memory_budget`` is bytes, or a fraction of free memory (default 0.25).
    ``max_pairings`` caps the candidate pairings probed per number of point axes;
    ``graph_proof=False`` ignores what the autograd graph proves (every pairing probed).
    ``exact_up_to``: up to this many Jacobian entries (and at most 4096 output entries),
    pairings are judged on the whole Jacobian from one batched backward; above it, per
    pairing (``exact_up_to=0``: always per pairing). The same probe rule judges either way.
    ``given`` maps input names to full Jacobians (``output.shape + input.shape``) computed
    another way (e.g. vectorised per-sample gradients), or to :class:`.given.GivenJacobian`
    tuples (Jacobian, magnitudes, samples_separated; :mod:`.given`): each is used only if the
    probe rule accepts it against the graph's own vector-Jacobian products, else recomputed.
    The result keeps no reference to the output's graph unless ``keep_graph``.
    Every probe is drawn from ``seed`` (fresh per call unless given; never torch's global RNG),
    kept as ``r.seed``: the same seed, the same result. ``x.grad`` is never changed.
    """
    output = validation.check_output(output, output_name)
    named = validation.checked_inputs(inputs, names)
    validation.refuse_empty(output, named, output_name)
    budget = memory.resolve_budget(memory_budget, output.device)
    probes = Probes(output, named, new_seed() if seed is None else validation.checked_seed(seed))
    accepted = _from_given(output, named, given, probes) if given else {}
    rest = {n: t for n, t in named.items() if n not in accepted}
    proofs = {name: _proof(output, t, graph_proof) for name, t in rest.items()}
    if accepted:  # their derivatives need no structure: only what the graph reaches
        proofs.update(axisflow.reach_proofs(output, {n: named[n] for n in accepted}))
    workspace = max(p.workspace for p in proofs.values())
    context = Context(output, output_name, budget, batched, max_chunk, workspace, full, probes,
                      sparse=SparseChoice(output, output_name, budget, probes, full),
                      key=pass_key(output, named.values(), workspace),
                      kinds=tuple(p.kinds for p in proofs.values()))
    if rest:
        with context.sparse.on_refusal():  # says what a sparse Jacobian would need
            accepted.update(_accepted(context, rest, proofs, max_pairings, exact_up_to))
    result = _result(context, named, proofs, accepted)
    if not keep_graph:
        result.release_graph()
    return result


def _result(context: Context, named, proofs, accepted) -> VJPResult:
    """The result of the accepted candidates and their derivatives, with its notes."""
    probes = context.probes  # its plain pass's time sizes the next run's first chunk
    remember_seconds(context.key, probes.seconds)
    ordinary = probes.ordinary | {name for name, (_, d) in accepted.items()
                                  if name not in probes.ordinary and _ordinary(d)}
    accepted = {name: (c, d if name in ordinary  # known finite: no NaN to fill
                       else _nan_filled(context, named[name], c, d))
                for name, (c, d) in accepted.items()}
    results = {name: input_result(name, named[name], proofs[name], *accepted[name],
                                  rejected=context.rejected.get(name, ()),
                                  sparse=context.sparse.taken.get(name))
               for name in named}
    result = VJPResult(output=context.output, output_name=context.output_name, inputs=results,
                       full=context.full, memory_budget=context.budget, seed=probes.seed)
    result.notes.extend(validation.unverifiable_notes(result, probes.nonfinite))
    _annotate(result, ordinary | set(context.sparse.taken))  # NaN/inf, zeros, custom
    result.notes.extend(context.sparse.notes)  # a sparsity pattern that did not pay
    result.notes.extend(dict.fromkeys(p.limitation for p in proofs.values() if p.limitation))
    return result


def _ordinary(derivatives) -> bool:
    """Dense derivatives every entry of which is finite and not all 0, by one sum (as
    :func:`.validation.annotate` tells them): no NaN to fill, no note to add on them."""
    return derivatives.layout == torch.strided and validation._ordinary(derivatives)


def _nan_filled(context, tensor, candidate: Candidate, derivatives) -> torch.Tensor:
    """Derivatives with their NaN entries filled from the other mode where it has a number.
    Reverse mode reads 0·∞ where a zero seed meets an infinite local derivative (every other
    row of sqrt at 0, another component's branch at a point); forward mode carries another
    seed through other nodes, so between them an entry is NaN only where both are; outside
    the pattern the graph proves, both are 0·∞ artefacts and the entry is 0
    (:func:`.validation.nan_filled`). At points, forward mode reads a proved pairing only
    (:func:`.derivatives.forward_at_points`)."""
    pairing = candidate.pairing
    if derivatives.layout != torch.strided \
            or not (bool(derivatives.sum().isnan()) and bool(derivatives.isnan().any())):
        return derivatives  # (a NaN entry makes the sum NaN: a cheap first look)
    output = context.output
    if any(tensor.shape[b] > 1 for b in pairing.in_axes):  # points
        if not candidate.proved:
            return derivatives
        return validation.nan_filled(derivatives, (
            lambda: forward_at_points(output, tensor, pairing),))
    return validation.nan_filled(derivatives, (lambda: forward_jacobian(output, tensor),
                                           lambda: context.vjps([tensor], (), batched=False)[0][0]),
                                 proved=lambda: proved_pattern(output, tensor, context.budget,
                                                              dense=True))


def _annotate(result, ordinary: set) -> None:
    """:func:`.validation.annotate`, without its pass over the derivatives when every input's are
    known finite and not all 0 (then it would add no note on them); sparse derivatives (their
    values checked finite) are left out of that pass."""
    if ordinary >= set(result.inputs):
        result.notes.extend(validation.unverified_notes(result))
    else:
        dense = dataclasses.replace(result, notes=[], inputs={
            n: i for n, i in result.inputs.items() if i.derivatives.layout == torch.strided})
        validation.annotate(dense)
        custom = validation.unverified_notes(dense)
        result.notes.extend([n for n in dense.notes if n not in custom]
                            + validation.unverified_notes(result))


def _accepted(context, named, proofs, max_pairings,
              exact_up_to) -> dict[str, tuple[Candidate, torch.Tensor]]:
    """Per input, the first candidate pairing the probe rule accepts, and its derivatives:
    judged on the exact Jacobian up to ``exact_up_to`` entries, else per pairing."""
    output = context.output
    small = output.numel() * sum(t.numel() for t in named.values()) <= exact_up_to
    exact = small and context.batched and output.numel() <= SMALL_OUTPUT
    per_size = EXACT_PER_SIZE if exact else max_pairings
    tried = {name: candidates(output, t, proofs[name], context.full, per_size)
             for name, t in named.items()}
    if exact:
        return context.sparse.after_exact(
            from_exact_jacobian(context, named, tried, context.probes), named)
    return from_verified_pairings(context, named, tried, context.probes)


def _from_given(output, named, given, probes) -> dict[str, tuple[Candidate, torch.Tensor]]:
    """The full Jacobians computed elsewhere that the probe rule accepts (:mod:`.given`)."""
    jacobians, magnitudes, separated = given_jacobians.split(given)
    usable = {}
    for name, jacobian in jacobians.items():
        tensor = named.get(name)
        shape = tuple(output.shape) + tuple(tensor.shape) if tensor is not None else ()
        if tensor is not None and tuple(jacobian.shape) == shape:
            usable[name] = jacobian
    agreed = given_jacobians.agreed(probes, usable, magnitudes, separated) if usable else set()
    for name in usable:  # a given Jacobian not accepted is recomputed: no note on it
        probes.nonfinite.pop(name, None)
    return {name: (GIVEN_TAKEN, usable[name]) for name in usable if name in agreed}


# The candidate a given Jacobian the probes accept takes: the whole Jacobian (no pairing), as
# proved as the probes make it (also the per-sample result built directly, run.persample).
GIVEN_TAKEN = Candidate(Pairing(), True)


def input_result(name, tensor, proof, candidate: Candidate, derivatives,
                 rejected=(), sparse=None) -> InputResult:
    """One input's result from its graph proof and accepted candidate: the one owner of
    these fields (also for the per-sample result built directly, ``run.persample``)."""
    return InputResult(name=name, tensor=tensor, pairing=candidate.pairing,
                       derivatives=derivatives, unused=not proof.depends,
                       evidence=Evidence.PROVED if candidate.proved else Evidence.OBSERVED,
                       unverified=tuple(dict.fromkeys(proof.custom)), rejected=tuple(rejected),
                       sparse=sparse, conditional_on=tuple(proof.conditional_on)
                       if candidate.proved and candidate.pairing else ())


def _proof(output, tensor, graph_proof: bool) -> axisflow.GraphProof:
    proof = axisflow.prove(output, tensor)
    if not graph_proof:  # keep what the walk found out, claim no structure
        proof.carries, proof.exact = {}, False
    return proof
