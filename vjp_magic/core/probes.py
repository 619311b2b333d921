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
from .derivatives import plain_vjp


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

    def _confirming_vjps(self, name: str):
        """(v, vᵀJ) for the confirming probes, made one after the other."""
        draws = range(1, self.plan.confirming + 1)
        if name in self._jacobians:
            flat = self._jacobians[name]
            for draw in draws:
                v = self.vector(draw)
                yield v, structure.predicted_probe(flat, v.reshape(-1), ())
            return
        for draw in draws:  # one at a time, not kept
            v = self.vector(draw)
            yield v, plain_vjp(self.output, [self.named[name]], v)[0]

    def agree(self, name: str, derivatives, pairing, batching: bool = False) -> bool:
        """The probe rule: probe 0, then every confirming probe, must find vᵀJ = vᵀD. With
        ``batching`` (a proved structure, batched derivatives) probe 0 alone checks the
        batching rule, and entries non-finite on both sides agree."""
        if batching:
            return structure.probe_agrees(derivatives, self.vector(), self.vjp(name), pairing,
                                          nonfinite_agree=True)
        if not pairing and name not in self._jacobians:  # a full Jacobian: all probes at once
            return name in self.agree_full({name: derivatives})
        if not self._finite(name, self.vjp(name), derivatives):
            return False
        if not structure.probe_agrees(derivatives, self.vector(), self.vjp(name), pairing):
            return False
        return all(self._finite(name, vjp) and structure.probe_agrees(derivatives, v, vjp, pairing)
                   for v, vjp in self._confirming_vjps(name))

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
