"""Compressed passes: one backward per colour of the observed pattern, decompressed into a
torch sparse CSR Jacobian, then checked by independent random probes.

v = 1 on the output entries of one colour (:mod:`.colouring`) gives vᵀJ whose entry j is
J[i, j] for the one row i of that colour that reads j (:mod:`.pattern`). The passes are
batched as the component VJPs are (:func:`.derivatives.vjp_batch`). The result is then
checked as a structure is (:mod:`.probes`): full random probes v (the run's seed, the count
of :func:`.probes.probe_plan`), vᵀJ from autograd (the first from a plain backward) against
vᵀ·J_sparse, each input entry judged against |v|ᵀ|J_sparse| times the probe tolerance. A
coupling the pattern missed shows there, and the result is refused (None): the caller falls
back to the exact path, never to a wrong sparse matrix.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from .colouring import colour_rows
from .derivatives import chunk_size, component_vjps, plain_vjp, vjp_batch
from .errors import VJPUsageError
from .memory import refuse_if_over, resolve_budget
from .pairing import Evidence
from .pattern import Pattern, observed_pattern
from .probes import new_seed, probe_plan, probe_vector
from .tolerances import tolerances
from .torch_api import TorchError, torch_error


@dataclass(frozen=True)
class SparseJacobian:
    """A Jacobian computed by compressed passes.

    ``matrix``: 2-D sparse CSR (output.numel() × x.numel()), row-major flattening;
    ``colours``: int64 (output.numel(),), the colour of each flat output entry (entries of
    one colour read disjoint entries of x); ``count``: the number of colours, i.e. backward
    passes for the values; ``evidence``: PROVED (the pattern follows from the graph's rules)
    or OBSERVED (found by probes at this x); ``pattern_passes``: backward passes spent finding
    the pattern (0 when proved).
    """

    matrix: torch.Tensor
    colours: torch.Tensor
    count: int
    evidence: Evidence
    pattern_passes: int

    @property
    def nnz(self) -> int:
        return int(self.matrix.col_indices().numel())


def compressed_jacobian(output: torch.Tensor, x: torch.Tensor, budget: int,
                        seed: int) -> SparseJacobian | None:
    """d output / d x by one backward per colour of its pattern (:class:`SparseJacobian`), or
    None: no pattern that pays, over the budget, or the check disagreed."""
    pattern = observed_pattern(output, x, budget, seed)
    if pattern is None or _csr_bytes(pattern, x) > budget:
        return None
    colours = colour_rows(pattern.crow.numpy(), pattern.col.numpy(), pattern.shape[1])
    if colours is None:
        return None
    colours = torch.from_numpy(colours)
    jacobian = decompressed(output, x, pattern, colours, budget)
    if not checked(output, x, jacobian, seed):
        return None
    count = int(colours.max()) + 1 if colours.numel() else 0
    return SparseJacobian(jacobian, colours, count, Evidence.OBSERVED, pattern.probes)


def _csr_bytes(pattern: Pattern, x: torch.Tensor) -> int:
    return pattern.nnz * (8 + x.element_size()) + 8 * (pattern.shape[0] + 1)


def decompressed(output, x, pattern: Pattern, colours: torch.Tensor, budget: int):
    """One VJP per colour (batched), each nonzero read off its row's colour."""
    flat = output.reshape(-1)
    count = int(colours.max()) + 1 if colours.numel() else 0
    rows = torch.repeat_interleave(torch.arange(pattern.shape[0]), pattern.crow.diff())
    passes = []
    limit = chunk_size(flat, [x], budget)
    for start in range(0, count, limit):
        ids = torch.arange(start, min(count, start + limit))
        v = (colours[None, :] == ids[:, None]).to(device=flat.device, dtype=flat.dtype)
        (g,) = vjp_batch(flat, [x], v)
        passes.append(g.detach().reshape(len(ids), -1))
    compressed = torch.cat(passes) if passes else x.new_zeros(0, x.numel())
    values = compressed[colours[rows].to(compressed.device), pattern.col.to(compressed.device)]
    return _csr(pattern.crow, pattern.col, values.cpu(), pattern.shape).to(x.device)


def checked(output, x, jacobian: torch.Tensor, seed: int) -> bool:
    """Full random probes: vᵀJ from autograd against vᵀ·J_sparse, entry by entry."""
    flat = output.reshape(-1)
    count = probe_plan(output.dtype).probes
    probes = torch.stack([probe_vector(flat, seed, draw) for draw in range(count)])
    (first,) = plain_vjp(flat, [x], probes[0])
    rest = vjp_batch(flat, [x], probes[1:])[0] if count > 1 else first[None][:0]
    observed = torch.cat([first.reshape(1, -1), rest.reshape(count - 1, -1)]).detach()
    predicted, scale = _products(jacobian, probes.to(jacobian.device, jacobian.dtype))
    if not (bool(torch.isfinite(observed).all()) and bool(torch.isfinite(predicted).all())):
        return False
    allowed = scale * tolerances(output.dtype).probe + torch.finfo(scale.dtype).tiny
    return bool(((observed - predicted).abs() <= allowed).all())


def _products(jacobian: torch.Tensor, probes: torch.Tensor):
    """(vᵀJ, |v|ᵀ|J|) for each probe v (rows of ``probes``), scattered over the nonzeros:
    one pass over them a probe, where a sparse CSR matmul with a transpose is far slower."""
    crow, col, values = jacobian.crow_indices(), jacobian.col_indices(), jacobian.values()
    rows = torch.repeat_interleave(torch.arange(jacobian.shape[0], device=crow.device),
                                   crow.diff())
    shape = (len(probes), jacobian.shape[1])
    predicted = probes.new_zeros(shape)
    scale = probes.new_zeros(shape)
    for k, v in enumerate(probes):
        terms = v[rows] * values
        predicted[k].index_add_(0, col, terms)
        scale[k].index_add_(0, col, terms.abs())
    return predicted, scale


def _csr(crow, col, values, shape) -> torch.Tensor:
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore")
        return torch.sparse_csr_tensor(crow, col, values, size=shape, check_invariants=False)


def sparse_jacobian(output: torch.Tensor, x: torch.Tensor,
                    memory_budget: int | float | None = None,
                    seed: int | None = None) -> torch.Tensor:
    """d output / d x as a 2-D sparse CSR tensor of shape (output.numel(), x.numel()),
    flattened row-major, from the live autograd graph.

    The sparsity pattern is observed at this x with grouped probes, its rows coloured so that
    rows of one colour read disjoint entries of x, and one backward pass per colour gives
    every nonzero; the result is checked with independent random probes. Where no pattern
    pays (a row reads more than 1/8 of x), or the check disagrees (a coupling the probes
    could not see, e.g. a custom ``autograd.Function``), the exact Jacobian (one backward
    per output entry) is computed instead and returned in the same layout. The memory budget
    counts nonzeros on the sparse path, the dense size on the exact one. ``x.grad`` is never
    changed.
    """
    if not isinstance(output, torch.Tensor) or not isinstance(x, torch.Tensor):
        raise VJPUsageError("sparse_jacobian(output, x) takes two tensors.")
    if output.grad_fn is None or not x.requires_grad:
        raise VJPUsageError("The output must be computed from x with autograd on: make x "
                            "with requires_grad=True and compute the output outside no_grad.")
    budget = resolve_budget(memory_budget, x.device)
    seed = new_seed() if seed is None else seed
    try:
        sparse = compressed_jacobian(output, x, budget, seed)
        return sparse.matrix if sparse is not None else _exact(output, x, budget)
    except RuntimeError as error:
        if torch_error(error) is not TorchError.SECOND_PASS:
            raise
        raise VJPUsageError("The output's graph was freed by a backward pass without "
                            "retain_graph=True: compute the output again.") from None


def _exact(output, x, budget: int) -> torch.Tensor:
    """Today's exact path: one VJP per output entry, the dense Jacobian, then CSR."""
    m, n = output.numel(), x.numel()
    refuse_if_over(m * n * x.element_size(), budget,
                   f"No sparsity pattern paid off, and the dense {m:,} × {n:,} Jacobian")
    (stacked,), _ = component_vjps(output.reshape(-1), [x], (), budget)
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore")
        return stacked.detach().reshape(m, n).to_sparse_csr()


