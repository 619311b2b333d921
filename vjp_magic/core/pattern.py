"""The sparsity pattern of the Jacobian of an output with respect to one input, observed at
this x with grouped probes (group testing over output entries), as CSR index arrays.

The pattern is *observed at this x*, not proved: a derivative that happens to be 0 here (x³
at 0), or a coupling a probe cannot see, is missing from it. The compressed passes that use
it (:mod:`.compressed`) check their result with an independent random probe and give up
where it disagrees. Graph rules for index maps (shifts, pads, convolutions) are later work.

Output entries (flat, row-major) are split into k groups by index mod k, k = 1, 2, 4, …;
within a group, entry i's bits are spelt by probes on the entries whose bit is 1 and on
those whose bit is 0 (2·log₂(m/k) probes a group). An input entry read by one entry of a
group answers each pair once and so names it; one read by several answers some pair twice,
and k doubles. A NaN or ±inf answer says nothing: the pattern is refused (None).
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from .derivatives import chunk_size, vjp_batch
from .probes import set_probe_values

# Refused when a row reads more than this fraction of the input: colouring would not pay.
DENSE_FRACTION = 1 / 8
MIN_PROBES = 512
MIN_ROW = 8  # ... or more than this many entries, on a small input


class Pattern(NamedTuple):
    """CSR index arrays (int64) of an (m × n) pattern, rows sorted, columns sorted per row."""

    crow: torch.Tensor
    col: torch.Tensor
    shape: tuple[int, int]
    probes: int  # backward passes spent finding it

    @property
    def nnz(self) -> int:
        return int(self.col.numel())


def observed_pattern(output: torch.Tensor, x: torch.Tensor, budget: int, seed: int,
                     max_probes: int | None = None) -> Pattern | None:
    """The pattern of d output / d x at this x (flat, row-major), or None: too dense (a row
    reads more than ``DENSE_FRACTION`` of x, and more than ``MIN_ROW`` entries), a
    non-finite probe, or more than ``max_probes`` backward passes (default: m, what one
    pass per row would take, or ``MIN_PROBES`` on a small output)."""
    flat = output.reshape(-1)
    m, n = flat.numel(), x.numel()
    limit = max_probes if max_probes is not None else max(m, MIN_PROBES)
    groups, spent = 1, 0
    while True:
        sets, bits = _group_sets(m, groups)
        if spent + len(sets) > limit or groups > 2 * _most_per_row(n):
            return None
        answers = _answers(flat, x, sets, budget, seed, groups)
        spent += len(sets)
        if answers is None:
            return None
        decoded = _decode(answers, m, groups, bits)
        if decoded is not None:
            rows, cols = decoded
            break
        groups *= 2
    if rows.numel() > _most_per_row(n) * max(m, 1):
        return None
    return _csr(rows, cols, m, n, spent)


def _most_per_row(n: int) -> float:
    return max(MIN_ROW, n * DENSE_FRACTION)


def _group_sets(m: int, groups: int) -> tuple[torch.Tensor, int]:
    """(groups · 2 · bits × m) bool: for each group, the entries whose bit b of i // groups
    is 1, then those where it is 0 (bits ≥ 1: a group of one entry is probed twice)."""
    index = torch.arange(m)
    group, within = index % groups, index // groups
    bits = max(1, (max(-(-m // groups), 1) - 1).bit_length())
    bit = ((within[None, :] >> torch.arange(bits)[:, None]) & 1) == 1  # bits × m
    in_group = group[None, :] == torch.arange(groups)[:, None]  # groups × m
    sets = torch.stack([in_group[:, None, :] & bit[None], in_group[:, None, :] & ~bit[None]], 1)
    return sets.reshape(-1, m), bits


def _answers(flat, x, sets, budget: int, seed: int, draw: int) -> torch.Tensor | None:
    """(len(sets) × n) bool: which input entries each set reaches; None if any is not finite."""
    values = set_probe_values(flat, seed, "sparse-pattern", draw)
    limit = chunk_size(flat, [x], budget)
    hits = []
    for start in range(0, len(sets), limit):
        part = sets[start:start + limit].to(device=flat.device, dtype=flat.dtype)
        (g,) = vjp_batch(flat, [x], values * part)
        g = g.detach().reshape(len(part), -1)
        if not bool(torch.isfinite(g).all()):
            return None
        hits.append(g.ne(0).cpu())
    return torch.cat(hits)


def _decode(answers, m: int, groups: int, bits: int):
    """(rows, cols) of every dependence, or None where some group has an input entry read by
    several of its entries (k must grow)."""
    answers = answers.reshape(groups, 2, bits, -1)
    one, zero = answers[:, 0], answers[:, 1]  # groups × bits × n
    read = (one | zero).any(1)  # groups × n
    single = (one ^ zero).all(1)
    if bool((read & ~single).any()):
        return None
    within = (one.long() << torch.arange(bits)[None, :, None]).sum(1)  # groups × n
    group, col = read.nonzero(as_tuple=True)
    rows = within[group, col] * groups + group
    if bool((rows >= m).any()):
        return None
    return rows, col


def _csr(rows, cols, m: int, n: int, probes: int) -> Pattern:
    order = torch.argsort(rows * n + cols)
    rows, cols = rows[order], cols[order]
    crow = torch.zeros(m + 1, dtype=torch.int64)
    crow[1:] = torch.cumsum(torch.bincount(rows, minlength=m), 0)
    return Pattern(crow, cols.to(torch.int64), (m, n), probes)
