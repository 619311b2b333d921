"""Random probes vᵀJ on the output's graph: the evidence the probe rule judges a pairing on.

Probes come from plain (unbatched) backward passes: comparing them with results of batched
ones also catches a batching rule that computes something else than the plain backward does.
Probe entries are discrete (signed powers of two), so one probe can cancel a coupling exactly
by chance; a structure is accepted only when further independent probes agree too: read off a
checked Jacobian where there is one (:meth:`Probes.use_jacobian`), else from more plain
backward passes (:func:`.structure.probe_plan` says how many, and the bound they give). Every
probe is drawn from the run's seed (:attr:`Probes.seed`, kept on the result as ``r.seed``).
Where vᵀJ or vᵀD is not finite, no pairing is verified: the entry is kept in
:attr:`Probes.nonfinite` for the result's note.
"""
from __future__ import annotations

import time

import torch

from . import structure
from .derivatives import chunk_size, plain_vjp, vjp_batch
from .torch_api import TorchError, autograd_grad, torch_error


class Probes:
    """Random probes vᵀJ drawn from ``seed``, made when first needed. ``seconds``: how long
    probe 0's backward took; ``nonfinite``: name → the flat index of an input entry where a
    probe met a non-finite vᵀJ or vᵀD (the pairing could not be verified there)."""

    def __init__(self, output, named, seed: int):
        self.output, self.named, self.seed = output, named, seed
        self.plan = structure.probe_plan(output.dtype)
        self._plain: dict[str, torch.Tensor] | None = None
        self._jacobians: dict[str, torch.Tensor] = {}
        self._vectors: dict[int, torch.Tensor] = {}
        self.seconds: float | None = None
        self.ordinary: set[str] = set()  # accepted derivatives known finite, not all 0
        self.nonfinite: dict[str, int] = {}

    def vector(self, draw: int = 0) -> torch.Tensor:
        """Probe ``draw`` (0, 1, …) of this run; probe 0, asked for again and again, is kept."""
        if draw:
            return structure.probe_vector(self.output, self.seed, draw)
        if 0 not in self._vectors:
            self._vectors[0] = structure.probe_vector(self.output, self.seed, 0)
        return self._vectors[0]

    def vjp(self, name: str) -> torch.Tensor:
        """Probe 0's vᵀJ from a plain backward (one for all inputs, kept)."""
        if self._plain is None:
            names = list(self.named)
            began = time.perf_counter()
            grads = plain_vjp(self.output, [self.named[n] for n in names], self.vector())
            self.seconds = time.perf_counter() - began
            self._plain = dict(zip(names, grads))
        return self._plain[name]

    def use_jacobian(self, name: str, flat: torch.Tensor) -> None:
        """A checked Jacobian (output entries × input shape): more probes cost no backward."""
        self._jacobians[name] = flat

    def _confirming(self, name: str, draw: int):
        """(v, vᵀJ) for confirming probe ``draw``: a product with the checked Jacobian where
        there is one, else a plain backward (not kept)."""
        v = self.vector(draw)
        if name in self._jacobians:
            return v, structure.predicted_probe(self._jacobians[name], v.reshape(-1), ())
        return v, plain_vjp(self.output, [self.named[name]], v)[0]

    def agree(self, name: str, derivatives, pairing, batching: bool = False) -> bool:
        """The probe rule: probe 0, then every confirming probe, must find vᵀJ = vᵀD. With
        ``batching`` (a proved structure, batched derivatives) probe 0 alone checks the
        batching rule, and entries non-finite on both sides agree."""
        if batching:
            return structure.probe_agrees(derivatives, self.vector(), self.vjp(name), pairing,
                                          nonfinite_agree=True)
        if not pairing and name not in self._jacobians:  # a full Jacobian: all probes at once
            return name in self.agree_full({name: derivatives})
        for draw in range(self.plan.probes):  # one at a time, each freed before the next
            v, vjp = (self.vector(), self.vjp(name)) if draw == 0 else self._confirming(name, draw)
            if not structure.probe_agrees(derivatives, v, vjp, pairing):
                self._finite(name, vjp, derivatives)  # keeps a non-finite entry for the note
                return False
            del v, vjp
        return True

    def _finite(self, name: str, vjp: torch.Tensor, derivatives=None) -> bool:
        """Whether vᵀJ (and the derivatives, whose non-finite entries make vᵀD non-finite:
        v has no zero entry) are finite; where not, the input entry is kept for the note."""
        index = structure.first_nonfinite(vjp, *(() if derivatives is None else (derivatives,)))
        if index is not None:  # derivatives end with the input's axes
            self.nonfinite.setdefault(name, index % vjp.numel())
        return index is None

    def agree_full(self, jacobians: dict[str, torch.Tensor]) -> set[str]:
        """The inputs whose full Jacobian (``output.shape + input.shape``) the probe rule
        accepts: the same probes as :meth:`agree` (probe 0, then the confirming ones from
        plain backward passes), but one backward per draw serves every input, and each
        input's vᵀD for all draws is one product (see :class:`.structure.FullProbes`).
        Accepted ones known finite and not all 0 go to :attr:`ordinary`."""
        names = list(jacobians)
        vectors = [self.vector(draw) for draw in range(self.plan.probes)]
        tensors = [self.named[n] for n in names]
        draws = [[self.vjp(n) for n in names]]
        draws += [plain_vjp(self.output, tensors, v) for v in vectors[1:]]
        agreed = set()
        for i, name in enumerate(names):
            if not all(self._finite(name, vjps[i]) for vjps in draws) \
                    or not self._finite(name, draws[0][i], jacobians[name]):
                continue
            judge = structure.FullProbes(jacobians[name], vectors)
            if judge.mismatch([vjps[i] for vjps in draws]) <= 1.0:
                agreed.add(name)
                if judge.ordinary:
                    self.ordinary.add(name)
        return agreed

    def seconds_per_vector(self) -> float:
        """How long one backward pass takes (probe 0's, made now if it was not yet)."""
        self.vjp(next(iter(self.named)))
        return self.seconds


# -- probes supported on sets of output indices: dependency patterns ---------------------------
class OverTime(Exception):
    """Probing would take longer than it was allowed."""


class SetProber:
    """For dependency patterns (:mod:`.dependency`): which input indices (along ``b``) sets
    of output indices (along ``a``) reach.

    A probe is a random vector of entries ±(1..2) on the set's slices of the output and 0
    elsewhere, drawn from ``seed`` (``stream``: an independent draw); vᵀJ is non-zero at an
    input index exactly when some output entry of the set has a non-zero derivative there
    (barring an exact cancellation: the final check). A non-finite answer says nothing: its
    input index goes to :attr:`unknown` and is not a hit.
    """

    def __init__(self, output, x, a, b, budget, seed: int, max_seconds=None, stream: int = 0,
                 limit=None, workspace: int = 0):
        self.output, self.x, self.a, self.b, self.budget = output, x, a, b, budget
        self.seed = seed
        # each probe of a batch holds its own copy of every gradient on the graph
        self.limit = limit or chunk_size(output, [x], budget, workspace)
        generator = structure.probe_generator(seed, "dependency", stream)
        r = torch.rand(tuple(output.shape), generator=generator) * 2 - 1  # ±(1..2): r + sign r
        self.values = (r + r.sign()).to(dtype=output.dtype, device=output.device)
        self.began, self.max_seconds, self.count = time.perf_counter(), max_seconds, 0
        self.unknown = torch.zeros(x.shape[b], dtype=torch.bool)

    def vectors(self, sets: torch.Tensor) -> torch.Tensor:
        """One random vector restricted to each set: every probe's answer holds on its own
        (a cancellation needs a relation among the values on the set, which has chance 0)."""
        on = sets.to(device=self.output.device, dtype=self.output.dtype)
        on = on.reshape((len(sets),) + tuple(-1 if d == self.a else 1
                                              for d in range(self.output.dim())))
        return self.values * on

    def answers(self, sets: torch.Tensor, batched: bool = True):
        """(k × n_out) sets → (k × n_in) bool twice: which input indices each set reaches
        (a finite non-zero), and where its answer was NaN or ±inf."""
        self._check_time(len(sets))
        hits, unknown = [], []
        for start in range(0, len(sets), self.limit):
            part = sets[start:start + self.limit]
            (g,) = vjp_batch(self.output, [self.x], self.vectors(part), batched=batched)
            hit, bad = _read(g, 1 + self.b)
            hits.append(hit)
            unknown.append(bad)
            self.count += len(part)
        return torch.cat(hits), torch.cat(unknown)

    def hits(self, sets: torch.Tensor, batched: bool = True) -> torch.Tensor:
        """(k × n_out) sets → (k × n_in) bool: which input indices each set reaches."""
        hit, unknown = self.answers(sets, batched)
        self.unknown |= unknown.any(0)
        return hit

    def row_hits(self, rows: torch.Tensor, batched: bool = True) -> torch.Tensor:
        """One probe per output index in ``rows``: (len(rows) × n_in)."""
        return self.hits(self.row_sets(rows), batched)

    def row_sets(self, rows: torch.Tensor) -> torch.Tensor:
        sets = torch.zeros(len(rows), self.output.shape[self.a], dtype=torch.bool)
        sets[torch.arange(len(rows)), rows] = True
        return sets

    def _check_time(self, more: int) -> None:
        if self.max_seconds is None or not self.count:
            return
        spent = time.perf_counter() - self.began
        if spent + more * spent / self.count > self.max_seconds:
            raise OverTime


def _read(g: torch.Tensor, axis: int):
    """(k, …) answers → (k × size along ``axis``) bool twice: a finite non-zero anywhere on
    the slice, a NaN or ±inf anywhere on it."""
    g = g.detach().movedim(axis, 1)
    g = g.reshape(len(g), g.shape[1], -1)
    if structure.first_nonfinite(g) is None:  # the common case: one sum says so
        hit = g.ne(0).any(2).cpu()
        return hit, torch.zeros_like(hit)
    bad = ~torch.isfinite(g)
    return (g.ne(0) & ~bad).any(2).cpu(), bad.any(2).cpu()


def resolved_columns(prober: SetProber, columns: torch.Tensor) -> torch.Tensor:
    """(m × len(columns)): the dependences at input indices where a probe answered NaN or
    ±inf. Each output index's row (reverse mode) and each of these columns (forward mode)
    are read: an entry is a dependence where either finds a finite non-zero, or where both
    are non-finite (nothing rules it out); a finite zero either way rules it out."""
    m = prober.output.shape[prober.a]
    hit, unknown = prober.answers(prober.row_sets(torch.arange(m)), batched=False)
    hit, unknown = hit[:, columns], unknown[:, columns]
    forward_hit, forward_unknown = _forward_answers(prober, columns)
    return hit | forward_hit | (unknown & forward_unknown)


def _forward_answers(prober: SetProber, columns: torch.Tensor):
    """(m × len(columns)) bool twice: which output indices J u reaches (a finite non-zero)
    and where it is non-finite, for tangents u of random values on x's slices ``columns``
    along b. J u is the VJP of g(v) = vᵀJ (double backward); where the graph has none, every
    entry is unknown."""
    out, x, m = prober.output, prober.x, prober.output.shape[prober.a]
    unknown = torch.ones(m, len(columns), dtype=torch.bool)
    generator = structure.probe_generator(prober.seed, "dependency-tangents")
    r = torch.rand(tuple(x.shape), generator=generator) * 2 - 1
    values = (r + r.sign()).to(dtype=x.dtype, device=x.device)
    shape = (1,) + tuple(-1 if d == prober.b else 1 for d in range(x.dim()))  # a slice along b
    try:
        v = torch.zeros_like(out, requires_grad=True)
        (g,) = autograd_grad([out], [x], [v], retain_graph=True, create_graph=True,
                             allow_unused=True, materialize_grads=True)
        if not g.requires_grad:  # vᵀJ does not depend on v: nothing reaches x
            return ~unknown, ~unknown
        hits, bad = [], []
        for start in range(0, len(columns), prober.limit):
            part = columns[start:start + prober.limit]
            on = torch.zeros(len(part), x.shape[prober.b], dtype=x.dtype, device=x.device)
            on[torch.arange(len(part)), part.to(x.device)] = 1
            (ju,) = vjp_batch(g, [v], values * on.reshape((len(part),) + shape[1:]))
            hit, nonfinite = _read(ju, 1 + prober.a)
            hits.append(hit)
            bad.append(nonfinite)
    except (RuntimeError, NotImplementedError) as error:
        if torch_error(error) is TorchError.SECOND_PASS:
            raise
        return ~unknown, unknown
    return torch.cat(hits).T, torch.cat(bad).T


# -- what a result needs of the graph when its derivatives came from elsewhere --------------
def reach_proofs(output: torch.Tensor, named: dict) -> dict:
    """``{name: GraphProof}`` saying only whether ``output`` depends on each input (``depends``)
    and which custom backward functions lie on the way (``custom``): one walk of the graph for
    all inputs, for those whose derivatives need no structure from the graph (accepted full
    Jacobians). Where a custom function lies on the way, :func:`.axisflow.prove` gives it."""
    from .axisflow import GraphProof, _postorder, prove

    BackwardCFunction = torch.autograd.function.BackwardCFunction
    if output.grad_fn is None:
        return {name: GraphProof(output is t, {}) for name, t in named.items()}
    sources: dict = {}  # (id(node), output index) → the non-leaf inputs that edge carries
    for name, t in named.items():
        if t.grad_fn is not None:
            sources.setdefault((id(t.grad_fn), t.output_nr), set()).add(name)
    leaves = {id(t): name for name, t in named.items() if t.grad_fn is None}
    reach: dict[int, frozenset] = {}
    custom = False
    for node in _postorder(output.grad_fn):
        below = set()
        for producer, index in node.next_functions:
            if producer is None:
                continue
            below |= sources.get((id(producer), index), set())
            variable = getattr(producer, "variable", None)
            if variable is not None and id(variable) in leaves:
                below.add(leaves[id(variable)])
            # below a non-leaf input's own grad_fn, that input is constant
            below |= {n for n in reach.get(id(producer), ()) if named[n].grad_fn is not producer}
        reach[id(node)] = frozenset(below)
        custom = custom or (bool(below) and isinstance(node, BackwardCFunction))
    found = reach[id(output.grad_fn)]
    return {name: (prove(output, t) if custom or output is t
                   else GraphProof(name in found, {}))
            for name, t in named.items()}
