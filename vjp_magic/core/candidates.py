"""The candidate pairings of one input, in the order they are tried: the larger pairings the
shapes propose (:func:`.structure.candidate_pairings`), then the one the graph proves; and the
pairing a few rows of the Jacobian suggest, tried early (:func:`row_proposal`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from . import structure
from .derivatives import plain_vjp
from .pairing import Pairing


@dataclass
class Candidate:
    """A pairing to try for one input; ``proved`` ones need no structure check."""

    pairing: Pairing
    proved: bool


def candidates(output, tensor, proof, full: bool, per_size: int) -> list[Candidate]:
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


def with_proposal(candidates: list[Candidate], pairing, position: int = 0) -> list[Candidate]:
    """``candidates`` with ``pairing`` tried at ``position``, if it is new and claims more than
    the proved pairing (the last candidate)."""
    proved = candidates[-1].pairing
    known = {c.pairing for c in candidates}
    if pairing in known or not set(proved) < set(pairing):
        return candidates
    return candidates[:position] + [Candidate(pairing, False)] + candidates[position:]


def _rows(output, read_row, seed: int) -> list[tuple[tuple, torch.Tensor]]:
    """(output multi-index, nonzero input multi-indices) for a few rows of the Jacobian, at
    output entries drawn from the run's ``seed``; a reader with a ``nonzero`` method (a
    sparse Jacobian's) gives those indices without a dense row."""
    rows, strides = [], structure.row_major_strides(output.shape)
    nonzero = getattr(read_row, "nonzero", None)
    for index in structure.row_indices(tuple(output.shape), seed):
        flat = sum(i * stride for i, stride in zip(index, strides))
        rows.append((index, read_row(flat).nonzero() if nonzero is None else nonzero(flat)))
    return rows


def row_proposal(output, tensor, candidates, position, read_row, seed, drop=None):
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
    return with_proposal(candidates, pairing, position)


class SharedRows:
    """Rows of J read for several inputs at once (:func:`row_proposal`'s ``read_row`` per
    input, :meth:`reader`): the rows read depend on the output alone, so the first read of a
    row computes it for every input with one plain backward."""

    def __init__(self, output: torch.Tensor, tensors: dict) -> None:
        self.output, self.tensors = output, tensors
        self.rows: dict[int, dict] = {}

    def reader(self, name: str):
        return lambda flat: self.read(flat)[name]

    def read(self, flat: int) -> dict:
        """Row ``flat`` of J (output entries flattened), name → the row shaped like its input."""
        if flat not in self.rows:
            v = torch.zeros(self.output.numel(), dtype=self.output.dtype,
                            device=self.output.device)
            v[flat] = 1
            grads = plain_vjp(self.output, list(self.tensors.values()),
                              v.reshape(self.output.shape))
            self.rows[flat] = dict(zip(self.tensors, grads))
        return self.rows[flat]
