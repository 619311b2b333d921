"""Sparse Hessians of a scalar: one Hessian-vector product per colour of a symmetric
colouring, read off into a torch sparse CSR matrix, checked by random probes.

From the gradient d = ∇f (kept with its graph by :mod:`.hessian`): the pattern of ∂d/∂x is
found at this x (:mod:`.pattern`), made symmetric with its diagonal, and coloured so that
every nonzero can be read directly from the products H·v_c, v_c = 1 on the entries of colour
c (:func:`.colouring.colour_symmetric`: distance-2 or star colouring). Each product is one
backward pass through d (vᵀ∂d/∂x = (Hv)ᵀ, H symmetric). The result is then checked as a
sparse Jacobian is (:func:`checked`: full random probes vᵀH against vᵀH_sparse, each entry
within the probe tolerance of its magnitudes, else of its measured rounding noise); a
coupling the pattern missed, or an H that is not symmetric, fails there, and the caller
takes the exact path instead. The memory budget counts nonzeros here.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

from . import memory, probes
from . import pattern as patterns
from .colouring import (colour_count, colour_rows, colour_symmetric, recover_symmetric,
                        recoverable, symmetrised, valid_rows)
from .checked_batches import CheckedBatches as PaidBatches
from .derivatives import chunk_size, plain_vjp
from .indexmaps.summed import depends, summed_hessian_pattern
from .rounding import measured_noise, rounding_noise
from .sparse_check import within_noise  # the sparse Jacobian's noise judgement, reused
from .sparse_layout import csr_matrix, csr_rows, dense_to_csr
from .tolerances import tolerances

# Up to this many colours, plain backward passes one after another (faster on CPU than one
# vectorised backward of the same vectors); batched beyond.
LOOP_PASSES = 64
# A probe through the double-backward graph sums terms larger than the second derivatives
# they cancel to: the points' and diagonal probes of :mod:`.hessian` allow this many times the
# probe rule's tolerance (:func:`checked` judges against measured rounding instead).
SECOND_ORDER_SLACK = 64
# A Hessian is tried sparse from this many entries of x (n² ≥ 2²² entries dense): smaller
# ones keep the dense display the tutorial's examples show.
SPARSE_FROM = 2048
LATTICE_TRIES = 16  # periods tried past a row's nonzeros for the j mod p colouring


class SparseHessian(NamedTuple):
    """The sparse Hessian and how it was found (the display words its pattern:
    :func:`vjp_magic.render.sparse.hessian_paragraph`)."""

    matrix: torch.Tensor  # sparse CSR, x.numel() × x.numel() (flattened row-major)
    colours: torch.Tensor  # int64, one per entry of x: the products' indicator vectors
    count: int  # Hessian-vector products (colours)
    probes: int  # backward passes spent finding the pattern
    evidence: str = "observed"
    # a proved pattern's saved selections (:attr:`.pattern.Pattern.conditional_on`)
    conditional_on: tuple[str, ...] = ()
    by_rows: bool = False  # H[i, j] read as (v_(colour i)ᵀ∂d/∂x)[j]: H not proved symmetric

    @property
    def nnz(self) -> int:
        return int(self.matrix.col_indices().numel())


def sparse_hessian(d: torch.Tensor, x: torch.Tensor, budget: int, seed: int,
                   name: str = "x", output: torch.Tensor | None = None,
                   symmetric: bool = True) -> SparseHessian | None:
    """The Hessian whose gradient ``d`` (shaped like x, with its graph) is given, sparse, or
    None: no pattern that pays, no colouring, or the probes disagreed. ``output``: the scalar
    itself, whose first-order graph may prove the pattern (:func:`.indexmaps.summed`: a sum
    of terms); else the pattern of ∂d/∂x is found as any Jacobian's. A pattern whose
    nonzeros exceed the memory budget is refused (VJPUsageError, with the count).
    ``symmetric``: the graph proves H symmetric (torch's own ops only); else only a
    distance-2 colouring, whose products give each row of autograd's ∂d/∂x as it is, with no
    symmetric read (a custom backward's "Hessian" need not be symmetric)."""
    n = x.numel()
    summed = None if output is None else summed_hessian_pattern(output, x, budget)
    hubs = None
    if summed is not None:
        pattern, offsets = summed
        if not depends(d, x):  # the gradient is constant: f is linear in x
            pattern = pattern._replace(crow=torch.zeros(n + 1, dtype=torch.int64),
                                       col=torch.zeros(0, dtype=torch.int64))
    else:
        (pattern, hubs), offsets = _found(d, x, budget, seed, symmetric), None
    if pattern is None:
        return None
    evidence = str(getattr(pattern, "evidence", "observed"))
    conditional = tuple(getattr(pattern, "conditional_on", ())) if evidence == "proved" else ()
    draws = 1 if evidence == "proved" else None  # as a sparse Jacobian's check
    if pattern.nnz == 0:  # d does not depend on x: f is linear (checked below)
        matrix = empty_csr(x)
        if not checked(d, x, matrix, seed, budget, draws):
            return None
        return SparseHessian(matrix, torch.zeros(n, dtype=torch.int64), 0, pattern.probes,
                             evidence, conditional)
    crow, col = (pattern.crow.numpy(), pattern.col.numpy()) if summed is not None \
        else symmetrised(pattern.crow.numpy(), pattern.col.numpy(), n)
    nnz = len(col)
    memory.refuse_if_over(nnz * (8 + x.element_size()) + 8 * (n + 1), budget,
                          f"The sparse Hessian with respect to {name} ({nnz:,} nonzeros)")
    coloured = _coloured(crow, col, n, tuple(x.shape), offsets, symmetric) if hubs is None \
        else _hub_coloured(crow, col, n, hubs.numpy())
    if coloured is None:
        return None
    colours, direct = coloured
    count = colour_count(colours)
    flat = d.reshape(-1)
    products = colour_products(flat, x, torch.from_numpy(colours), count, budget)
    rows = torch.from_numpy(np.repeat(np.arange(n, dtype=np.int64), np.diff(crow)))

    def read(prods: torch.Tensor) -> torch.Tensor:  # the nonzeros' values off the products
        return direct_values(rows, col, colours, prods, not symmetric) if direct else \
            recover_symmetric(crow, col, colours, prods)

    matrix = csr_matrix(torch.from_numpy(crow), torch.from_numpy(col), read(products).cpu(),
                        (n, n)).to(x.device)
    noise = lambda: read(_value_noise(flat, x, torch.from_numpy(colours), count,  # noqa: E731
                                      budget, products))
    if not checked(flat, x, matrix, seed, budget, draws, rows.to(x.device), noise):
        return None
    return SparseHessian(matrix, torch.from_numpy(colours), count, pattern.probes, evidence,
                         conditional, by_rows=not symmetric)


def _coloured(crow, col, n: int, shape, offsets,
              symmetric: bool = True) -> tuple[np.ndarray, bool] | None:
    """(colours, every nonzero read directly): j mod p where the pattern's rows draw their
    columns from j + ``offsets`` and p, as few colours as a row's nonzeros, separates those
    offsets (:func:`lattice_period`); else :func:`.colouring.colour_symmetric` (or the
    lattice where that needs more), read directly where it is a distance-2 colouring. Not
    ``symmetric`` (H not proved symmetric): a distance-2 colouring only, or None."""
    most = int(np.diff(crow).max()) if n else 0
    period = None if offsets is None else lattice_period(offsets, most)
    if period is not None and period == most:
        return np.arange(n, dtype=np.int64) % period, True
    colours = colour_symmetric(crow, col, n, shape=shape, symmetric=True)
    if period is not None and (colours is None or colour_count(colours) > period):
        return np.arange(n, dtype=np.int64) % period, True
    # a distance-2 colouring (rows sharing a column apart) reads every entry directly
    direct = colours is not None and valid_rows(crow, col, n, colours)
    if not symmetric and not direct:  # a star colouring's mirrored reads assume H = Hᵀ
        colours = colour_rows(crow, col, n, shape=None if shape is None else (shape, shape))
        direct = colours is not None
    return None if colours is None else (colours, direct)


def _value_noise(flat, x, colours: torch.Tensor, count: int, budget: int,
                 products: torch.Tensor) -> torch.Tensor:
    """The measured rounding of the colour products (count × n,
    :func:`.rounding.measured_noise`: each again from c·v_c). Linear in v_c, so a coupling
    the pattern misses or a symmetric read of an asymmetric H shows alike in each: never
    as noise."""
    return measured_noise(
        lambda c: [colour_products(flat, x, colours, count, budget, c)], [products],
        flat.dtype)[0]


# Dense rows: entries of x whose column is read in every one of at least HUB_DRAWS row
# subsets of HUB_FRACTION of the rows (:func:`hub_draws`; drawn from a fixed stream: the
# path taken does not depend on the run's seed), ...
HUB_DRAWS, HUB_FRACTION = 4, 1 / 32
HUB_CANDIDATES = 64  # ... at most this many, each row then read exactly (one batched pass);
# up to this many entries of x, every row is read exactly (no subsets)


def _found(d: torch.Tensor, x: torch.Tensor, budget: int, seed: int, symmetric: bool):
    """(pattern of ∂d/∂x, dense rows' mask or None): proved from the graph
    (:func:`.indexmaps.proved_pattern`), else, H symmetric, with a few dense rows
    (:func:`_with_dense_rows`: looked for first, one batched pass, as the observer spends
    hundreds before it gives up on a dense column), else observed (:mod:`.pattern`)."""
    from .indexmaps import proved_pattern  # the rules build Patterns: imported when needed

    proved = proved_pattern(d, x, budget)
    if proved is not None:
        return proved, None
    if symmetric:
        pattern, hubs = _with_dense_rows(d.reshape(-1), x, budget, seed)
        if hubs is not None:
            return pattern, hubs
    return patterns.observed_pattern(d, x, budget, seed), None


def _with_dense_rows(flat: torch.Tensor, x: torch.Tensor, budget: int, seed: int):
    """(pattern, dense rows' mask) of a symmetric Hessian with a few dense rows
    (:func:`dense_rows`), or (None, None): the other rows observed without the dense rows
    and columns (:func:`.pattern.observed_pattern` of the gradient with those rows zeroed,
    those columns skipped), the dense rows' own nonzeros (read exactly) added; their
    columns are the mirror (:func:`.colouring.symmetrised`)."""
    found = dense_rows(flat, x)
    if found is None:
        return None, None
    hubs, hub_rows, hub_cols = found
    rest = patterns.observed_pattern(flat * (~hubs).to(flat.device, flat.dtype), x, budget,
                                     seed, skip=hubs)
    if rest is None:
        return None, None
    n = flat.numel()
    keys = np.concatenate([np.repeat(np.arange(n, dtype=np.int64), np.diff(rest.crow.numpy()))
                           * n + rest.col.numpy(), hub_rows * n + hub_cols])
    keys = np.unique(keys)
    crow = np.concatenate([[0], np.cumsum(np.bincount(keys // n, minlength=n))])
    return rest._replace(crow=torch.from_numpy(crow), col=torch.from_numpy(keys % n)), hubs


def dense_rows(flat: torch.Tensor, x: torch.Tensor):
    """(mask, rows, cols): the dense rows of a symmetric Hessian (gradient ``flat`` with its
    graph), each reading more than :func:`.pattern.most_per_row` entries (a coupling such as
    x[0]·Σx², whose column no colouring of the others' can share), as an (n,) bool mask,
    and their nonzeros (int64 arrays); or None (none, or too many). Candidates
    (:func:`_hub_candidates`): every row up to :data:`HUB_CANDIDATES` entries of x, else
    the columns the row subsets all read; each candidate's row read exactly (one-hot
    products; H symmetric: its column too). Which rows are dense depends on the function
    and x only, never on the run's seed."""
    n = flat.numel()
    if n <= patterns.most_per_row(n):  # no row can read more entries than x has
        return None
    candidates = torch.arange(n) if n <= HUB_CANDIDATES else _hub_candidates(flat, x)
    if candidates is None:
        return None
    one_hot = flat.new_zeros(candidates.numel(), n)
    one_hot[torch.arange(candidates.numel()), candidates.to(flat.device)] = 1
    read = _batched(flat, x, one_hot, None).ne(0).cpu()
    dense = read.sum(1) > patterns.most_per_row(n)
    if not bool(dense.any()):
        return None
    hubs = torch.zeros(n, dtype=torch.bool)
    hubs[candidates[dense]] = True
    at, cols = read[dense].nonzero(as_tuple=True)
    return hubs, candidates[dense][at].numpy(), cols.numpy()


def _hub_candidates(flat: torch.Tensor, x: torch.Tensor) -> torch.Tensor | None:
    """The entries j with (wᵀ∂d/∂x)[j] ≠ 0 for each of :func:`hub_draws` row subsets w of
    ceil(n·:data:`HUB_FRACTION`) rows drawn with replacement (at least one each), or None
    (none, or more than :data:`HUB_CANDIDATES`). A column read by r rows is in all with
    chance about (1 - (1 - fraction)^r)^draws: a fully dense one (the arrow's) always, one of
    r > n/8 rows but for (7/8)^(n·fraction) per subset (2e-4 from 2,048 entries). The
    subsets come from a stream of their own with a fixed seed (not the run's): the same x
    gives the same candidates."""
    n = flat.numel()
    generator = probes.probe_generator(0, "sparse-hessian-hubs", n)
    rows = torch.randint(0, n, (hub_draws(n), math.ceil(n * HUB_FRACTION)), generator=generator)
    subsets = torch.zeros(len(rows), n, dtype=flat.dtype).scatter_(1, rows, 1).to(flat.device)
    reached = torch.ones(n, dtype=torch.bool, device=flat.device)
    for w in subsets:  # plain passes (as :func:`colour_products`'): cheaper than one batched
        reached &= plain_vjp(flat, [x], w)[0].detach().reshape(-1).ne(0)
    candidates = reached.cpu().nonzero().squeeze(1)
    return candidates if 0 < candidates.numel() <= HUB_CANDIDATES else None


def hub_draws(n: int) -> int:
    """How many row subsets at n entries: :data:`HUB_DRAWS`, or more where a banded column
    (3 readers: in a subset with chance about 3·:data:`HUB_FRACTION`) would be in all but
    one of them for more than :data:`HUB_CANDIDATES` / 2 of the n columns on average (a
    dense row drawn into one subset reaches every column there): 4 at 20,000 entries, 6 at
    10⁶ (4 left the tridiagonal arrow 66 candidates there, too many: refused)."""
    spare = math.log(max(n / (HUB_CANDIDATES / 2), 1)) / -math.log(3 * HUB_FRACTION)
    return max(HUB_DRAWS, 1 + math.ceil(spare))


def _hub_coloured(crow, col, n: int, hubs: np.ndarray) -> tuple[np.ndarray, bool] | None:
    """(colours, False): each dense row (``hubs``) a colour of its own, the others coloured
    as the pattern without the dense rows and columns (:func:`.colouring.colour_symmetric`);
    read by :func:`.colouring.recover_symmetric` (a dense row from its own product, H
    symmetric), or None where that cannot read every nonzero."""
    rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(crow))
    keep = ~hubs[rows] & ~hubs[col]
    rest_crow = np.zeros(n + 1, dtype=np.int64)
    rest_crow[1:] = np.cumsum(np.bincount(rows[keep], minlength=n))
    colours = colour_symmetric(rest_crow, col[keep], n, symmetric=True)
    if colours is None:
        return None
    colours = colours.copy()
    colours[hubs] = colour_count(colours) + np.arange(int(hubs.sum()))
    return (colours, False) if recoverable(crow, col, colours) else None


def lattice_period(offsets: np.ndarray, least: int) -> int | None:
    """The smallest p ≥ ``least`` (up to :data:`LATTICE_TRIES` more) dividing no difference
    of two ``offsets``: then j mod p gives the columns j + d of any row distinct colours (a
    distance-2 colouring, every Hessian entry read directly), or None."""
    offsets = np.asarray(offsets, dtype=np.int64)
    gaps = np.unique(np.abs(offsets[:, None] - offsets[None, :]))
    gaps = gaps[gaps > 0]
    for p in range(max(least, 1), max(least, 1) + LATTICE_TRIES):
        if not bool((gaps % p == 0).any()):
            return p
    return None


def direct_values(rows: torch.Tensor, col, colours, products: torch.Tensor,
                  by_rows: bool = False) -> torch.Tensor:
    """The values of a distance-2 coloured pattern: H[i, j] = (H·v_(colour j))[i] (rows
    sharing a column have distinct colours); ``by_rows``: (v_(colour i)ᵀ∂d/∂x)[j], row i of
    autograd's ∂d/∂x as it is, which assumes no symmetry (a custom backward's "Hessian")."""
    device = products.device
    if by_rows:
        at = torch.index_select(torch.from_numpy(colours).to(device), 0, rows.to(device)).mul_(
            products.shape[1]).add_(torch.as_tensor(col).to(device))
        return torch.take(products, at)
    at = torch.from_numpy(colours[col]).to(device).mul_(products.shape[1]).add_(rows.to(device))
    return torch.take(products, at)


def colour_products(flat: torch.Tensor, x: torch.Tensor, colours: torch.Tensor, count: int,
                    budget: int, factor: float = 1.0) -> torch.Tensor:
    """(count × n): H·v_c for v_c = 1 on the entries of colour c (vᵀ∂d/∂x, H symmetric),
    from plain backward passes up to :data:`LOOP_PASSES` colours, batched beyond (one
    vectorised pass costs more CPU time than a loop of few: 0.13 s against 0.10 s for three
    on Rosenbrock at 10⁶, one thread). ``factor``: v_c times it (the rounding measured)."""
    colours = colours.to(flat.device)
    if count <= LOOP_PASSES:
        rows = [plain_vjp(flat, [x], (colours == c).to(flat.dtype).mul_(factor))[0].detach()
                .reshape(-1) for c in range(count)]
        return torch.stack(rows) if rows else x.new_zeros(0, x.numel())
    ids = torch.arange(count, device=flat.device)
    return _batched(flat, x, (colours[None, :] == ids[:, None]).to(flat.dtype).mul_(factor),
                    budget)


def _batched(flat: torch.Tensor, x: torch.Tensor, vectors: torch.Tensor,
             budget: int | None) -> torch.Tensor:
    """vᵀ∂flat/∂x for each row v of ``vectors`` (count × n), in batches the budget allows,
    vectorised while that pays (:class:`.derivatives.PaidBatches`)."""
    limit = len(vectors) if budget is None else chunk_size(flat, [x], budget)
    passes, batches = [], PaidBatches()
    for start in range(0, len(vectors), max(limit, 1)):
        part = vectors[start:start + max(limit, 1)]
        (g,) = batches(flat, [x], part)
        passes.append(g.detach().reshape(len(part), -1))
    return torch.cat(passes) if passes else x.new_zeros(0, x.numel())


def checked(d: torch.Tensor, x: torch.Tensor, matrix: torch.Tensor, seed: int,
            budget: int | None = None, draws: int | None = None,
            rows: torch.Tensor | None = None, value_noise=None) -> bool:
    """Full random probes v (:func:`_check_probes`, the run's seed; ``draws`` of them, by
    default the probe plan's count: a proved pattern takes one, as a sparse Jacobian's
    check): vᵀ∂d/∂x from autograd against vᵀH_sparse, entry by entry, judged as
    :func:`.sparse_check.checked` judges a sparse Jacobian: entry j within the probe
    tolerance of its scale (:func:`_scale`), else within that plus the measured rounding
    of the matrix's values (``value_noise``: per nonzero, or a function giving them once,
    :func:`_value_noise`) spread by |v|, plus :data:`.tolerances.NOISE_MULTIPLE` times the
    rounding noise of its vᵀ∂d/∂x, measured (:func:`.sparse_check.within_noise`; no slack
    of fixed size, which let 1e-3 relative errors through in float32: measured rounding
    only, of both sides: autograd forms H[j, j] of Rosenbrock from
    1200x_j² - 400x_(j+1) + 202, and an MLP's from a sum over hidden units, whose terms may
    cancel to far less than they are). The noise judgement holds for an observed pattern
    too: the observer finds every derivative non-zero at this x (:mod:`.pattern`), and a
    coupling the matrix lacks appears alike in each re-scaled product, so never as noise.
    Several probes go through one batched backward (vmap: faster here than a loop); the
    products they check came from plain ones, so a batching rule that went wrong shows as
    a disagreement, never as a wrong result. ``rows``: each nonzero's row, where known."""
    flat = d if d.dim() == 1 else d.reshape(-1)
    vectors = _check_probes(flat, seed, draws)
    observed = plain_vjp(flat, [x], vectors[0])[0].detach().reshape(1, -1) \
        if len(vectors) == 1 else _batched(flat, x, vectors, budget)
    if not _finite(observed):
        return False
    col, values = matrix.col_indices(), matrix.values()
    rows = csr_rows(matrix.crow_indices()) if rows is None else rows
    row_sums = values.abs().new_zeros(matrix.shape[0]).index_add_(0, rows, values.abs())
    tolerance = tolerances(flat.dtype).probe
    for v, seen in zip(vectors, observed):
        v_rows = torch.index_select(v.to(values.device, values.dtype), 0, rows)
        predicted = values.new_zeros(matrix.shape[1]).index_add_(0, col, v_rows * values)
        if not _finite(predicted):
            return False
        scale = _scale(v_rows, row_sums, rows, col, matrix.shape[1])
        excess = seen.to(predicted.device).sub(predicted).abs_().sub_(scale, alpha=tolerance)
        if bool(excess.amax() <= torch.finfo(excess.dtype).tiny) and \
                bool(scale.amax() * tolerance < math.inf):
            continue
        if value_noise is not None:  # the matrix's own measured rounding, spread by |v|
            noise = value_noise() if callable(value_noise) else value_noise
            value_noise = noise
            scale = scale.add(values.new_zeros(matrix.shape[1]).index_add_(
                0, col, v_rows.abs() * noise.to(values.device, values.dtype)), alpha=1 / tolerance)
        if len(vectors) > 1:  # the noise is measured by plain passes: vᵀ∂d/∂x by one too
            seen = plain_vjp(flat, [x], v)[0].detach().reshape(-1)
        if not _within_measured(flat, x, v, seen, predicted, scale, tolerance):
            return False
    return True


def _within_measured(flat, x, v, seen, predicted, scale, tolerance: float) -> bool:
    """The second judgement of a probe: |vᵀ∂d/∂x (``seen``, from a plain pass) -
    vᵀH_sparse| within ``tolerance``·scale (``scale`` holding the matrix's measured rounding
    over ``tolerance``, where measured) plus the measured rounding of vᵀ∂d/∂x
    (:func:`.sparse_check.within_noise`)."""
    excess = seen.to(predicted.device).sub(predicted).abs_().sub_(scale, alpha=tolerance)
    return within_noise(flat, x, v.to(flat.device), seen, excess, scale, tolerance)


def _scale(v_rows, row_sums, rows, col, n: int) -> torch.Tensor:
    """Per column j: Σ_i |v_i|·Σ_k |H[i, k]| over the rows i that meet column j (autograd
    forms H[j, j] from terms as large as the entries of the neighbouring rows)."""
    weights = v_rows.abs().mul_(torch.index_select(row_sums, 0, rows))
    return weights.new_zeros(n).index_add_(0, col, weights)


def _finite(t: torch.Tensor) -> bool:
    """Every entry finite (the sum first: one pass, and exact whenever it is finite)."""
    return bool(torch.isfinite(t.sum())) or bool(torch.isfinite(t).all())


def symmetric_by_probes(d: torch.Tensor, x: torch.Tensor, seed: int) -> bool:
    """Whether autograd's ∂d/∂x (the Hessian whose gradient ``d`` is given, with its graph)
    is symmetric at this x, checked: uᵀ(Hv) against vᵀ(Hu) for two random probes u, v (two
    plain passes), their difference within the measured rounding of uᵀH and vᵀH
    (:func:`.rounding.rounding_noise`, :data:`.tolerances.NOISE_MULTIPLE` times it)
    weighed by |v| and |u|, the dot products summed in float64. Proves nothing for other x;
    a skew that rounding cannot give fails (a custom backward that is not a gradient)."""
    flat = d.reshape(-1)
    u, v = _check_probes(flat, seed, 2, "sparse-hessian-symmetry")
    if len(u) == 0:
        return True
    sides, bound = [], 0.0
    for left, right in ((u, v), (v, u)):
        (product,) = plain_vjp(flat, [x], left)
        product = product.detach().reshape(-1)
        (noise,) = rounding_noise(flat, [x], left, [product])
        weights = right.to(product.device, torch.float64)
        sides.append(float(product.double() @ weights))
        bound += float(noise.double().abs() @ weights.abs()) + float(
            product.double().abs() @ weights.abs()) * flat.numel() * torch.finfo(
            torch.float64).eps
    gap = abs(sides[0] - sides[1])
    return math.isfinite(gap) and gap <= bound


def _check_probes(flat: torch.Tensor, seed: int, draws: int | None = None,
                  purpose: str = "sparse-hessian-check") -> torch.Tensor:
    """The check's probes (draws × n, by default the count of :func:`.probes.probe_plan` for
    the dtype): :class:`.probes.ProbeDraws` (random signed powers of two, exactly uniform),
    from the run's seed on a stream of their own (``purpose``)."""
    plan = probes.probe_plan(flat.dtype)
    count = plan.probes if draws is None else min(draws, plan.probes)
    drawn = probes.ProbeDraws(flat, probes.stream_seed(seed, purpose))
    return torch.stack([drawn.vector(k).reshape(-1) for k in range(count)])


def empty_csr(x: torch.Tensor) -> torch.Tensor:
    """The n × n CSR with no nonzeros (n = x.numel()), on x's device and dtype."""
    n = x.numel()
    return csr_matrix(torch.zeros(n + 1, dtype=torch.int64, device=x.device),
                      torch.zeros(0, dtype=torch.int64, device=x.device), x.new_zeros(0), (n, n))


def dense_as_csr(hessian: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """A dense Hessian as a 2-D CSR tensor (rows × cols, row-major)."""
    return dense_to_csr(hessian.reshape(rows, cols))


