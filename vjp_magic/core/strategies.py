"""The two ways one analysis judges its candidate pairings, by the same probe rule:

- :func:`from_exact_jacobian` (small problems): one batched backward gives the whole
  Jacobian, checked against a plain probe, and every candidate is judged on it;
- :func:`from_verified_pairings` (large ones): per candidate, one VJP per component, then the
  probes of :class:`.probes.Probes` on the derivatives.

:class:`Context` is what every stage of one analysis needs to know.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from . import couplings, dependency, memory, structure
from .candidates import Candidate, SharedRows, row_proposal
from .checked_batches import (batching_trusted, batching_vector, batching_verdict, plain_probe,
                              within_noise)
from .derivatives import (CHUNK_SECONDS, LOOP_COMPONENTS, component_vjps, forward_jacobian,
                          pass_key, plain_components, remember_seconds, remembered_seconds)
from .probes import Probes, probe_agrees
from .retained import flush_now
from .torch_api import TorchError, torch_error


@dataclass
class Context:
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
    sparse: object | None = None  # the compressed path (core.sparse_choice.SparseChoice)
    key: tuple = ()  # the graph's fingerprint with every input (derivatives.pass_key)
    # the classes of the graph's nodes, per input's walk (axisflow.GraphProof.kinds): where
    # each batches right under vmap (:meth:`batching_trusted`), a vectorised full Jacobian
    # needs no batching probe
    kinds: tuple = ()

    def batching_trusted(self) -> bool:
        """Whether every walk of the graph found only nodes that batch right
        (:func:`.checked_batches.batching_trusted`); False where none was walked."""
        inputs = self.probes.named.values()
        return bool(self.kinds) and all(batching_trusted(k, self.output, inputs)
                                        for k in self.kinds)

    def reject(self, name: str, pairing) -> None:
        self.rejected.setdefault(name, []).append(pairing)

    def vjps(self, tensors, point_out, batched=None):
        """One VJP per component (see :func:`component_vjps`); a batched run starts with a
        chunk sized by how long one plain backward takes (the probe's, if it ran already, or
        on the last run of the same graph, :func:`remembered_seconds`; else the first chunk is
        one plain pass, timed), so even its first chunk is short."""
        batched = self.batched if batched is None else batched
        count = _components(self.output, point_out)
        first = seconds = None
        if batched and count > LOOP_COMPONENTS:
            seconds = self.probes.seconds  # no probe made only to time it: one pass less
            if seconds is None:
                seconds = remembered_seconds(self.key or pass_key(
                    self.output, self.probes.named.values(), self.workspace))
            first = 1 if seconds is None else max(1, int(CHUNK_SECONDS / max(seconds, 1e-6)))
        every = len(tensors) == len(self.probes.named) and all(
            a is b for a, b in zip(tensors, self.probes.named.values()))
        return component_vjps(self.output, tensors, point_out, self.budget, batched=batched,
                              max_chunk=self.max_chunk, workspace=self.workspace, first=first,
                              seconds=seconds, key=self.key if every else None)

    def refuse_if_over(self, nbytes: int, count: int, named=(), point_out=()) -> None:
        """Refuse over the budget, saying where a rejected pairing broke (for ``named``)."""
        advice = memory.DEFAULT_ADVICE + (
            ", or let the point structure work (drop --full)" if self.full else "")
        with dependency.verdict_on_refusal(self, dict(named), point_out):
            memory.refuse_if_over(
                nbytes, self.budget, f"The derivatives of {self.output_name} ({count:,} "
                "backward passes)", advice=advice)


def prefers_forward(output: torch.Tensor, tensor: torch.Tensor) -> bool:
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
        if probe_agrees(flat, probes.vector().reshape(-1), probes.vjp(name), (),
                                  nonfinite_agree=True):  # the same numbers, another way
            return jac
    except RuntimeError as error:
        if torch_error(error) is TorchError.SECOND_PASS:
            raise
    flat = context.vjps([tensor], (), batched=False)[0][0]
    return flat.reshape(tuple(output.shape) + tuple(tensor.shape))


def _checked_jacobians(context, named, probes, proved=False,
                       ordinary=None) -> dict[str, torch.Tensor]:
    """Full Jacobians from batched backward passes (one run for all inputs), each checked
    against a plain probe where a vectorised backward computed some of it (``proved``: no
    structure is probed afterwards, so the check need not use probe 0). ``ordinary`` (a set)
    gets the names whose Jacobian that check showed finite and not all 0. A graph whose
    every node batches right (``context.batching_trusted()``) gets no check: its vectorised
    Jacobian is the plain passes' own (the retain_grad guard's pass of zeros then follows
    at once, :func:`.retained.flush_now`)."""
    output = context.output
    reverse = [n for n in named if not prefers_forward(output, named[n])]
    stacked, vectorised = context.vjps([named[n] for n in reverse], ()) if reverse else ([], [])
    flats = dict(zip(reverse, stacked))
    del stacked
    redo = []
    if vectorised and output.numel() > 1 and not context.batching_trusted():
        v, vjps = _batching_probe(context, {n: named[n] for n in reverse}, probes,
                                  own=proved and len(reverse) == len(named))
        verdicts = {n: batching_verdict(flats[n], v, vjps[n]) for n in reverse}
        redo = [n for n in reverse if not verdicts[n][0]]  # went wrong
        if ordinary is not None:
            ordinary.update(n for n in reverse if all(verdicts[n]))
        noisy = within_noise(output, named, v, vjps, {n: (flats[n], ()) for n in redo})
        redo = [n for n in redo if n not in noisy]  # rounding only: kept
    elif vectorised:  # no plain pass follows: the retain_grad guard's pass of zeros now
        flush_now(output, [named[n] for n in reverse])
    flats.update(_plain_again(output, {n: named[n] for n in redo}, (), vectorised, flats))
    return {name: flats[name].reshape(tuple(output.shape) + tuple(named[name].shape))
            if name in flats else _jacobian_either_mode(context, named[name], probes, name)
            for name in named}


def _batching_probe(context, named, probes, own: bool) -> tuple[torch.Tensor, dict]:
    """(v, name → vᵀJ from one plain backward for every input of ``named``): probe 0 where
    it is made anyway (``own`` false: structures are probed too, or forward mode checks with
    it; or it was made already), else :func:`.checked_batches.batching_vector`, its pass timed
    for the next run's chunks as probe 0's would be."""
    if not own or probes.seconds is not None:
        return probes.vector().reshape(-1), {n: probes.vjp(n) for n in named}
    output = context.output
    v = batching_vector(output, probes.seed)
    grads, seconds = plain_probe(output, list(named.values()), v)
    remember_seconds(context.key or pass_key(output, probes.named.values(), context.workspace),
                     seconds)
    return v.reshape(-1), dict(zip(named, grads))


def _plain_again(output, redo: dict, point_out, vectorised, derivatives) -> dict:
    """name → ``derivatives[name]`` of the inputs in ``redo`` with the components a vectorised
    backward computed (``vectorised``: spans) computed again by plain passes, each pass for
    all of them."""
    if not redo:
        return {}
    again = [plain_components(output, list(redo.values()), point_out, *span)
             for span in vectorised]
    return {name: _with_rows(derivatives[name], vectorised, [part[i] for part in again])
            for i, name in enumerate(redo)}


def _with_rows(derivatives, spans, rows) -> torch.Tensor:
    """``derivatives`` with its components ``start:stop`` (flattened) replaced by ``rows``,
    for each span."""
    flat = derivatives.reshape((-1,) + tuple(rows[0].shape[1:]))
    pieces, at = [], 0
    for (start, stop), part in zip(spans, rows):
        pieces += [flat[at:start], part]
        at = stop
    pieces.append(flat[at:])
    return torch.cat(pieces).reshape(derivatives.shape)


def from_exact_jacobian(context, named, candidates, probes):
    """Small problems: one batched backward gives the whole Jacobian; each candidate pairing
    is judged on it by the probe rule (the same rule as for large problems)."""
    out_ndim = context.output.dim()
    known = set()  # Jacobians the batching check saw finite and not all 0
    jacobians = _checked_jacobians(context, named, probes,
                                   proved=all(candidates[n][0].proved for n in named),
                                   ordinary=known)
    accepted = {}
    for name, jac in jacobians.items():
        flat = jac.reshape((context.output.numel(),) + tuple(named[name].shape))
        if not candidates[name][0].proved:  # rows of J suggest a pairing, whatever the order
            candidates[name] = row_proposal(context.output, named[name], candidates[name], 0,
                                             lambda row, flat=flat: flat[row], probes.seed)
        probes.use_jacobian(name, flat)
        for candidate in candidates[name]:
            derivatives = structure.gather_derivatives(jac, out_ndim, candidate.pairing)
            if candidate.proved or probes.agree(name, derivatives, candidate.pairing) and \
                    not couplings.nonzero_outside(jac, out_ndim, candidate.pairing):
                accepted[name] = (candidate, derivatives)
                if name in known and derivatives.numel() == jac.numel():  # every entry of J
                    probes.ordinary.add(name)
                break
            context.reject(name, candidate.pairing)
    return accepted


def from_verified_pairings(context, named, candidates, probes):
    """Large problems: per candidate pairing, one VJP per component; the plain probe checks
    the structure (unless proved) and the batching (when batched). Inputs whose current
    pairings have the same output point axes share every backward pass."""
    output = context.output
    position = dict.fromkeys(named, 0)
    accepted: dict[str, tuple[Candidate, torch.Tensor]] = {}
    while len(accepted) < len(named):
        pending = [n for n in named if n not in accepted]
        _refuted_by_sparse(context, named, candidates, position, pending)
        # Inputs whose current pairing uses the same output point axes share one backward.
        point_out = _point_out(candidates[pending[0]][position[pending[0]]])
        group = [n for n in pending if _point_out(candidates[n][position[n]]) == point_out]
        count = _components(output, point_out)
        if count == output.numel() and context.sparse is not None:  # no points: compressed?
            group = context.sparse.take(named, group, candidates, position, accepted)
        elif context.sparse is not None:  # points: a large batch of stencils by its colours?
            group = context.sparse.at_points(named, group, candidates, position, count,
                                             accepted)
            if not group:
                continue
        if _skip_over_budget(context, named, candidates, position, group, count):
            continue  # a later candidate may fit
        if count < output.numel() and context.sparse is not None and count * sum(
                named[n].numel() for n in group) * output.element_size() > context.budget:
            group = context.sparse.past_points(named, group, accepted)  # points too large
            if not group:
                continue
        context.refuse_if_over(
            count * sum(named[n].numel() for n in group) * output.element_size(), count,
            {n: named[n] for n in group}, point_out)
        forward = [n for n in group if count == output.numel() and candidates[n][position[n]].proved
                   and prefers_forward(output, named[n])]
        for name in forward:
            candidate = candidates[name][position[name]]
            jac = _jacobian_either_mode(context, named[name], probes, name)
            accepted[name] = (candidate, structure.gather_derivatives(jac, output.dim(),
                                                                      candidate.pairing))
        group = [n for n in group if n not in forward]
        if group:
            accepted.update(_group_derivatives(context, named, candidates, position, group,
                                               point_out))
    return accepted


def _group_derivatives(context, named, candidates, position, group, point_out):
    """The group's derivatives from one VJP per component for all its inputs at once, judged
    by probes shared by all of them too: name → (candidate, derivatives) for those accepted.
    An input whose pairing the probe rule rejects moves on to its next candidate alone;
    where a probe finds batched derivatives wrong, the components a vectorised backward
    computed are computed again by plain passes (one per component for all such inputs)."""
    output, probes = context.output, context.probes
    current = {name: candidates[name][position[name]] for name in group}
    stacked, vectorised = context.vjps([named[n] for n in group], point_out)
    derivatives = {name: stacked[i].reshape(
        structure.component_shape(output.shape, current[name].pairing)
        + tuple(named[name].shape)) for i, name in enumerate(group)}
    del stacked
    unproved = {n: (derivatives[n], current[n].pairing) for n in group if not current[n].proved}
    agreed = couplings.confirmed(context, named, unproved, probes.agree_many(unproved)) \
        if unproved else set()
    rejected = [name for name in unproved if name not in agreed]
    readers = _sparse_readers(context, named, candidates, [n for n in rejected
                                                           if position[n] == 0])
    rows = SharedRows(output, {n: named[n] for n in rejected
                               if position[n] == 0 and n not in readers})
    for name in rejected:
        del derivatives[name]
        _next_candidate(context, named, candidates, position, name,
                        readers.get(name) or rows.reader(name))
    redo = [n for n in derivatives if vectorised and current[n].proved and not probes.agree(
        n, derivatives[n], current[n].pairing, batching=True)]  # batching went wrong
    if redo:  # rounding only: kept
        noisy = within_noise(output, named, probes.vector(), {n: probes.vjp(n) for n in redo},
                             {n: (derivatives[n], current[n].pairing) for n in redo})
        redo = [n for n in redo if n not in noisy]
    derivatives.update(_plain_again(output, {n: named[n] for n in redo}, point_out, vectorised,
                                    derivatives))
    return {name: (current[name], d) for name, d in derivatives.items()}


def _next_candidate(context, named, candidates, position, name, read_row) -> None:
    """``name``'s current pairing was rejected: on to its next candidate (after the likeliest
    one, a few rows of J, ``read_row``, propose one and rule out those they break)."""
    context.reject(name, candidates[name][position[name]].pairing)
    if position[name] == 0:
        candidates[name] = row_proposal(
            context.output, named[name], candidates[name], 1, read_row,
            context.probes.seed, drop=lambda pairing, n=name: context.reject(n, pairing))
    position[name] += 1


def _refuted_by_sparse(context, named, candidates, position, pending) -> None:
    """Each pending input whose current pairing (with points) its compressed Jacobian refutes
    (:meth:`.sparse_choice.SparseChoice.refuting`, where the last candidate has no points, so
    the passes would run anyway) moves on untried: no VJP per component, no probe. The
    refuted likeliest pairing's rows for the row proposal are read off that Jacobian. A
    pairing over the budget is left to be skipped, never tried, as before."""
    for name in pending if context.sparse is not None else ():
        while not candidates[name][position[name]].proved and _ends_without_points(
                context, candidates[name]) and _fits(context, named[name],
                                                     candidates[name][position[name]]):
            reader = context.sparse.refuting(name, named[name],
                                             candidates[name][position[name]].pairing)
            if reader is None:
                break
            _next_candidate(context, named, candidates, position, name, reader)


def _fits(context, tensor, candidate: Candidate) -> bool:
    """Whether ``candidate``'s derivatives of ``tensor`` fit the budget."""
    output = context.output
    count = _components(output, _point_out(candidate))
    return count * tensor.numel() * output.element_size() <= context.budget


def _ends_without_points(context, candidates) -> bool:
    """Whether the last candidate (always reached) has no points: its derivatives are the
    full Jacobian."""
    last = _point_out(candidates[-1])
    return math.prod(context.output.shape[a] for a in last) == 1 and context.output.numel() > 1


def _sparse_readers(context, named, candidates, names) -> dict:
    """name → a reader of J's rows off its compressed Jacobian, for the inputs of ``names``
    whose last candidate (always reached) has no points, so that the compressed passes would
    run anyway unless a pairing with points is accepted first (:meth:`.sparse_choice.SparseChoice.
    row_reader`); the others read rows by one-hot backward passes (:class:`SharedRows`)."""
    readers = {}
    for name in names if context.sparse is not None else ():
        if _ends_without_points(context, candidates[name]):
            reader = context.sparse.row_reader(name, named[name])
            if reader is not None:
                readers[name] = reader
    return readers


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


def _components(output: torch.Tensor, point_out) -> int:
    """How many components (one VJP each) a pairing whose output point axes are
    ``point_out`` has: the product of the output's other axes."""
    return math.prod(n for a, n in enumerate(output.shape) if a not in point_out)


def _point_out(candidate: Candidate) -> tuple[int, ...]:
    return tuple(sorted(candidate.pairing.out_axes))
