"""Second derivatives from the graph (double backward), with the same structure inference.

:func:`second_derivatives` runs the analysis on the output (which axes are points), recomputes
the first derivatives ``D`` (``component shape + x.shape``) with ``create_graph=True``, and
differentiates ``D`` again: along the output's points where it has some, else with the
analysis run on ``D`` (structure proved from the graph or verified by probes).

``h.derivatives[name]`` holds the per-point Hessians: shape ``(non-point output axes) +
x.shape + (x's non-point axes)``; entry ``[c, j, k']`` is ∂²y[c, p(j)] / ∂x_j ∂x_(p(j), k'),
where ``p(j)`` is the point of ``x``'s entry ``j`` and ``k'`` runs over one point's entries.
So an elementwise f at N points gives f″ at each point (shaped like x); a scalar of a vector
the n×n Hessian (``x.shape + x.shape``); a row-wise layer one Hessian per row and output
component. ``h.hessian(name)`` is the full one, ``output.shape + x.shape + x.shape``.
Several inputs give one Hessian each: no cross terms ∂²y/∂x∂w. ``x.grad`` is never changed.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import ClassVar, NamedTuple

import torch
from torch.autograd.function import BackwardCFunction
from torch.overrides import TorchFunctionMode

from . import analysis, axisflow, memory, probes, validation
from .checked_batches import checked_components
from .derivatives import chunk_size, forward_at_points, one_hot_gradients, plain_vjp
from .errors import VJPUsageError
from .marked import marked
from .pairing import Evidence, Pairing
from .quiet import guarded_reads, no_subclass_code
from .result import DerivativeResult, InputResult, Seen, SeenInput
from .retained import keeps_retained_grads
from .sparse_layout import block_csr, csr_matrix, csr_rows, unravelled
from .tagging import depends_on, walk_nodes
# A probe through the double-backward graph: see SECOND_ORDER_SLACK's note there.
from .sparse_hessian import (SECOND_ORDER_SLACK, SPARSE_FROM, SparseHessian,
                             dense_as_csr, empty_csr, sparse_hessian, symmetric_by_probes)
from .tolerances import tolerances
from .torch_api import COMPILED_ONCE, NOT_TWICE_DIFFERENTIABLE, once_differentiable_node
from .torch_api import guarded_grad as autograd_grad  # every pass under pass_guard
from .vector_sparse_hessian import SparseBlocks, vector_sparse_hessian


@dataclass
class HessianInput(SeenInput):
    """The second derivatives with respect to one input: ``pairing`` the output's point axes
    (``r.point_axes``), ``derivatives`` the per-point Hessians (module docstring);
    ``structure``/``second``: D's axes paired with x's and ∂D/∂x under that pairing (what
    :meth:`HessianResult.hessian` assembles); ``symmetric`` within tolerance (``asymmetry``:
    worst |H - Hᵀ| / its block's largest entry); ``constant``: linear in x (all zero);
    ``sparse``: a large Hessian of a scalar computed sparse (:mod:`.sparse_hessian`), whose
    ``derivatives`` are then its CSR matrix (x.numel() × x.numel()); ``sparse_blocks``: a vector
    output's second derivatives too large dense, computed sparse from its proved Jacobian
    pattern (``derivatives`` then a sparse COO tensor, y.shape + x.shape + x.shape);
    ``conditional_on``: the
    ops whose saved indices, masks or conditions a proof read (then "proved" holds for every
    x that gives the same ones: :attr:`.pattern.Pattern.conditional_on`)."""

    name: str
    tensor: torch.Tensor
    pairing: Pairing
    derivatives: torch.Tensor
    structure: Pairing = Pairing()
    second: torch.Tensor | None = None
    evidence: str = "proved"
    symmetric: bool = True
    asymmetry: float = 0.0
    unused: bool = False
    constant: bool = False
    unverified: tuple[str, ...] = ()
    sparse: SparseHessian | None = None  # the sparse path's CSR, colours, count, evidence
    conditional_on: tuple[str, ...] = ()
    # a vector output's second derivatives, sparse (:mod:`.vector_sparse_hessian`)
    sparse_blocks: SparseBlocks | None = None
    seen: Seen | None = field(default=None, repr=False, compare=False)  # (SeenInput)

    def __post_init__(self) -> None:
        self._note_seen()

    point_count = property(lambda self: self.pairing.point_count(self.shape))
    has_points = property(lambda self: any(self.shape[b] > 1
                                           for b in self.pairing.in_axes))

    @property
    def per_point_shape(self) -> tuple[int, ...]:
        """The shape of one point's entries of ``x`` (its non-point axes)."""
        paired = set(self.pairing.in_axes)
        return tuple(n for b, n in enumerate(self.shape) if b not in paired)

    def blocks(self, component_count: int) -> torch.Tensor:
        """The per-point Hessians as (components, points, m, m), m = entries per point (a
        view where the axes allow)."""
        x_ndim, pp = self.dim(), len(self.per_point_shape)
        d = self.derivatives.reshape((component_count,) + self.derivatives.shape[
            self.derivatives.dim() - x_ndim - pp:])
        in_points = list(self.pairing.in_axes)
        rest = [b for b in range(x_ndim) if b not in in_points]
        order = [0] + [1 + b for b in in_points + rest] + list(range(1 + x_ndim, d.dim()))
        m = math.prod(self.per_point_shape)
        return d.permute(order).reshape(component_count, self.point_count, m, m)


def _twin(item: HessianInput, name: str) -> HessianInput:
    """``item`` under another name of its tensor, with derivative tensors of its own (one
    changed in place does not change the other name's; the sparse path's record is shared)."""
    second = None if item.second is None else item.second.clone()
    return replace(item, name=name, derivatives=item.derivatives.clone(), second=second)


@guarded_reads
@dataclass(repr=False)
class HessianResult(DerivativeResult):
    """What ``%hessian`` and :func:`vjp_magic.hessian` return: second derivatives.

    ``derivatives[name]``: the per-point Hessians (module docstring for the shape);
    ``hessian(name)``: the full Hessian, ``output.shape + x.shape + x.shape``
    (``layout=torch.sparse_csr``: 2-D CSR); ``point_axes[name]``: the output's point
    axes, as for first derivatives;
    ``inputs[name].symmetric``; ``seed``: the seed of every random probe
    (``hessian(..., seed=h.seed)`` reproduces it).
    """

    order: ClassVar[int] = 2

    @no_subclass_code()  # x's shape read as torch's: a subclass's __torch_function__ not run
    def hessian(self, name: str | None = None, layout=torch.strided) -> torch.Tensor:
        """The full Hessian ``output.shape + x.shape + x.shape`` (``torch.autograd.functional.
        hessian`` for a scalar output): H[y, j, k] = ∂²y/∂x_j∂x_k, 0 across points.
        ``layout=torch.sparse_csr``: a 2-D CSR tensor (output.numel() · x.numel() ×
        x.numel(), flattened row-major), without densifying a Hessian computed sparse."""
        name = self.input_name(name)
        item = self.inputs[name]
        if layout not in (torch.strided, torch.sparse_csr):  # as r.jacobian takes
            raise VJPUsageError("layout is torch.strided (dense) or torch.sparse_csr.")
        blocks = item.sparse_blocks
        if blocks is not None and layout is torch.sparse_csr:
            return blocks.csr(
                self.memory_budget or memory.resolve_budget(None, self.output.device),
                f"The sparse Hessian of {self.output_name} with respect to {name}")
        n = item.numel()
        if layout is torch.sparse_csr and item.sparse is not None:
            return item.sparse.matrix
        size = self.output.numel() * n ** 2
        budget = self.memory_budget or memory.resolve_budget(None, self.output.device)
        if layout is torch.sparse_csr and item.second is not None and size:
            return points_csr(self.output.shape, item, budget,
                              f"The sparse Hessian of {self.output_name} with respect to {name}")
        advice = "Use h.hessian(name, layout=torch.sparse_csr)" if item.sparse is not None \
            else "Use h.derivatives[name] (sparse COO, y.shape + x.shape + x.shape) or " \
            "h.hessian(name, layout=torch.sparse_csr)" if item.sparse_blocks is not None \
            else "Use h.derivatives (the point structure keeps only what is non-zero)"
        memory.refuse_if_over(
            size * item.element_size(), budget, f"The full Hessian of "
            f"{self.output_name} with respect to {name} ({size:,} entries)", advice=advice)
        if item.sparse_blocks is not None:
            full = item.sparse_blocks.coo().to_dense()
        elif item.sparse is not None:
            full = item.sparse.matrix.to_dense().reshape(
                tuple(self.output.shape) + tuple(item.shape) * 2)
        else:
            full = full_hessian(self.output.shape, item)
        return full if layout is torch.strided else dense_as_csr(full, self.output.numel() * n, n)


@keeps_retained_grads  # a retain_grad tensor's .grad as a plain run leaves it
def second_derivatives(output: torch.Tensor, inputs, names=None, *, output_name: str = "y",
                       memory_budget: float | None = None,
                       **analysis_options) -> HessianResult:
    """Second derivatives of ``output`` with respect to each input, with their structure.

    ``inputs`` and ``names`` as for :func:`~vjp_magic.core.analysis.differentiate` (whose
    further keywords ``analysis_options`` are). One Hessian per input, no cross terms. A graph
    without double backward is a :class:`VJPUsageError` of one sentence.
    """
    first = _scalar_first_order(output, inputs, names, output_name, memory_budget,
                                analysis_options) or \
        analysis.differentiate(output, inputs, names, output_name=output_name,
                               memory_budget=memory_budget, keep_graph=True,
                               **analysis_options)
    output, budget = first.output, first.memory_budget
    options = {**analysis_options, "seed": first.seed}  # one seed for every probe of the run
    items: dict = {}
    first_name: dict = {}  # one tensor under several names: its Hessian computed once
    for name, item in first.inputs.items():
        twin = first_name.setdefault(id(item.tensor), name)
        items[name] = _input_hessian(output, output_name, item, budget, options) \
            if twin == name else _twin(items[twin], name)
    result = HessianResult(output=output.detach(), output_name=output_name, inputs=items,
                           memory_budget=budget, seed=first.seed)
    result.notes.extend(_notes(result))
    return result


class _FirstOrder(NamedTuple):
    """What the second derivatives read of a first-order result."""

    output: torch.Tensor
    inputs: dict
    memory_budget: int
    seed: int


def _scalar_first_order(output, inputs, names, output_name, memory_budget,
                        options) -> _FirstOrder | None:
    """For a scalar of inputs that all take the sparse path (:data:`SPARSE_FROM` entries or
    more), what the first-order analysis would give without its gradient, which nothing here
    reads (:func:`first_derivatives` computes it again, with a graph): the output and inputs
    checked as it checks them, no points (the empty pairing, proved), and whether the scalar
    reads each input and through which custom functions (one walk of the graph). None: the
    analysis itself is needed (another output, a smaller input, an option that changes it)."""
    output = validation.check_output(output, output_name)
    named = validation.checked_inputs(inputs, names)
    validation.refuse_empty(output, named, output_name)
    if output.numel() != 1 or options.get("full") or options.get("given") or \
            not options.get("graph_proof", True) or \
            any(t.numel() < SPARSE_FROM for t in named.values()):
        return None
    proofs = axisflow.reach_proofs(output, named)
    items = {}
    for name, tensor in named.items():
        pairing = proofs[name].pairing(tuple(output.shape), tuple(tensor.shape))
        if pairing:  # size-1 axes paired: the analysis decides
            return None
        items[name] = InputResult(name, tensor, pairing, None, not proofs[name].depends,
                                  Evidence.PROVED, tuple(dict.fromkeys(proofs[name].custom)))
    seed = options.get("seed")
    return _FirstOrder(output, items, memory.resolve_budget(memory_budget, output.device),
                       probes.new_seed() if seed is None else validation.checked_seed(seed))


def _input_hessian(output, output_name, item, budget, options) -> HessianInput:
    """Differentiate the first derivatives of one input again (see the module docstring);
    a large Hessian of a scalar sparse where it can (:mod:`.sparse_hessian`)."""
    x, pairing = item.tensor, item.pairing
    comp = pairing.component_shape(output.shape)
    per_point = math.prod(n for b, n in enumerate(x.shape) if b not in set(pairing.in_axes))
    entries = math.prod(comp) * x.numel() * per_point

    def refuse():
        memory.refuse_if_over(entries * x.element_size(), budget,
                              f"The second derivatives of {output_name} with respect to "
                              f"{item.name} ({entries:,} entries)",
                              advice=sparse_advice(output, item, output_name))

    # a scalar's Hessian too large dense is judged by its nonzeros: sparse where it can be
    sparse_first = output.numel() == 1 and (x.numel() >= SPARSE_FROM or
                                            entries * x.element_size() > budget)
    if not sparse_first and entries * x.element_size() > budget:
        blocks = _vector_sparse(output, output_name, item, budget, options["seed"])
        if blocks is not None:
            return blocks
    if not sparse_first:
        refuse()
    base = HessianInput(item.name, x, pairing, derivatives=None, unused=item.unused,
                        evidence=item.evidence, unverified=item.unverified,
                        conditional_on=_conditional(item))
    d = None if item.unused else first_derivatives(output, x, pairing, budget, item.derivatives)
    if d is not None:
        refuse_once_differentiable(d, output_name, item)
    if not item.unused:
        refuse_graphless_backward(output, x, output_name, item)
    if d is None or not d.requires_grad:
        return _zero_sparse(base) if sparse_first else _zero(base, comp)
    with _twice_differentiable(output_name):
        if sparse_first:
            sparse = sparse_hessian(d, x, budget, options["seed"], item.name, output,
                                    symmetric=not base.unverified)
            if sparse is not None:
                return _judged(_sparse_input(base, sparse), d, options["seed"], 1)
            refuse()
        inner = _at_points(d, x, pairing, item.evidence, budget, options["seed"], output) or \
            _diagonal(d, x, options["seed"]) or \
            _analysed(d, x, item.name, output_name, budget, options)
    if inner.unused:  # the first derivatives do not depend on x: the output is linear in x
        base.constant = True
        return _zero(base, comp)
    base.structure, base.second = inner.pairing, inner.derivatives
    base.evidence = "proved" if item.evidence == inner.evidence == "proved" else "observed"
    base.conditional_on = _joined(base.conditional_on, inner.conditional_on)
    base.derivatives = per_point_hessians(output.shape, base)
    return _judged(base, d, options["seed"], math.prod(comp))


def _judged(item: HessianInput, d: torch.Tensor, seed: int, count: int) -> HessianInput:
    """``item`` with its symmetry judged (:func:`asymmetry`; a symmetric path's sparse CSR is
    symmetric as read). Through a custom backward (``item.unverified``) nothing proves H
    symmetric, so rounding does not excuse an asymmetry: past the entries' own rounding (the
    ``symbolic`` tolerance), globally or pair by pair, it is symmetric only where
    :func:`.sparse_hessian.symmetric_by_probes` finds uᵀ(Hv) = vᵀ(Hu) within measured
    rounding (a scalar's Hessian; a vector's per-point ones are not checked so)."""
    if item.sparse is not None and not item.unverified:
        return item
    worst, pairwise = asymmetry(item, count, pairwise=bool(item.unverified))
    dtype = item.dtype
    if item.sparse is None:
        item.symmetric = worst <= max(tolerances(dtype).symbolic, rounding_range(dtype))
    item.asymmetry = worst
    if item.unverified and max(worst, pairwise) > tolerances(dtype).symbolic:
        item.symmetric = worst <= rounding_range(dtype) and count == 1 and \
            symmetric_by_probes(d, item.tensor, seed)
    return item


def asymmetry(item: HessianInput, count: int, pairwise: bool = True) -> tuple[float, float]:
    """|H - Hᵀ| of each per-point Hessian (a sparse one's CSR), measured two ways: its
    largest over the Hessian's largest |entry| (the notes say it), and, where ``pairwise``
    (else 0), the largest |H_ij − H_ji| / (|H_ij| + |H_ji|): a skew between two small entries
    is not hidden by a large one elsewhere (a 2e8 diagonal beside H_21 = 2, H_12 = 1); inf
    where the sparse H's and Hᵀ's entries cannot be paired (the measured check decides)."""
    if item.sparse is not None:
        coo = item.sparse.matrix.to_sparse_coo().coalesce()
        if not coo.values().numel():
            return 0.0, 0.0
        gap, size = (coo - coo.t()).coalesce(), (coo.abs() + coo.t().abs()).coalesce()
        scale = coo.values().abs().max()
        paired = torch.equal(gap.indices(), size.indices())  # (both: H's and Hᵀ's union)
        gap, size = gap.values().abs(), size.values()
        if pairwise and not paired:
            return _relative(gap, scale), math.inf
    elif math.prod(item.per_point_shape) <= 1:
        return 0.0, 0.0
    else:
        blocks = item.blocks(count)
        gap = (blocks - blocks.transpose(-2, -1)).abs()
        scale = blocks.abs().amax(dim=(-2, -1), keepdim=True)
        size = blocks.abs() + blocks.transpose(-2, -1).abs() if pairwise else None
    return _relative(gap, scale), _relative(gap, size) if pairwise else 0.0


def _relative(gap: torch.Tensor, by: torch.Tensor) -> float:
    """The largest ``gap / by`` (``gap`` itself where ``by`` is 0; NaN read as 0)."""
    if not gap.numel():
        return 0.0
    relative = torch.where(by > 0, gap / by.clamp_min(torch.finfo(by.dtype).tiny), gap)
    return float(relative.nan_to_num(nan=0.0).max())


def _vector_sparse(output, output_name, item, budget, seed) -> HessianInput | None:
    """A vector output's second derivatives, too large dense, computed sparse from its
    proved Jacobian pattern (:mod:`.vector_sparse_hessian`), or None (the caller refuses)."""
    x = item.tensor
    if output.numel() == 1 or item.unused or item.unverified or \
            any(x.shape[b] > 1 for b in item.pairing.in_axes):
        return None
    with _twice_differentiable(output_name):
        blocks = vector_sparse_hessian(output, x, budget, seed, item.name)
    if blocks is None:
        return None
    return HessianInput(item.name, x, item.pairing, derivatives=blocks.coo(),
                        unused=False, constant=blocks.products == 0,  # no sum had a graph
                        evidence=item.evidence,
                        unverified=item.unverified, sparse_blocks=blocks,
                        conditional_on=_joined(_conditional(item), blocks.conditional_on))


def sparse_advice(output: torch.Tensor, item, output_name: str) -> str:
    """The refusal's advice for a vector output whose Jacobian pattern is proved sparse
    (the first-order result's :class:`.compressed.SparseJacobian`): y[i]'s Hessian is 0
    outside supp(i)×supp(i), supp(i) the entries of x that y[i] reads for every x, so its
    second derivatives have at most Σ_i |supp(i)|² nonzeros (the bytes: a COO tensor of
    shape y.shape + x.shape + x.shape). Else the memory module's default advice."""
    sparse = getattr(item, "sparse", None)
    if sparse is None or output.numel() == 1 or str(sparse.evidence) != "proved":
        return memory.DEFAULT_ADVICE
    reads = torch.diff(sparse.matrix.crow_indices().cpu())
    nnz = int((reads * reads).sum())
    index_bytes = 8 * (output.dim() + 2 * item.dim())
    nbytes = nnz * (index_bytes + item.element_size())
    given = "" if not sparse.conditional_on else \
        f" (for every x that gives {', '.join(sparse.conditional_on)} the same selections)"
    return (f"As sparse second derivatives they have at most {nnz:,} nonzeros "
            f"({memory.gb(nbytes)} with their indices): each {output_name}[i] reads at most "
            f"{int(reads.max()):,} entries of {item.name}{given}. Differentiate each "
            f"{output_name}[i] (or a sum of entries that read disjoint entries of "
            f"{item.name}) as a scalar, whose Hessian is computed sparse, or "
            f"{memory.DEFAULT_ADVICE[0].lower()}{memory.DEFAULT_ADVICE[1:]}")


def _sparse_input(base: HessianInput, sparse: SparseHessian) -> HessianInput:
    """The Hessian computed sparse: its CSR as the derivatives. Symmetric: the probes that
    checked it compare vᵀH with the matrix read off symmetrically."""
    base.sparse, base.derivatives = sparse, sparse.matrix
    base.constant = sparse.nnz == 0  # no second derivative: linear in x
    base.evidence = "proved" if base.evidence == sparse.evidence == "proved" else "observed"
    base.conditional_on = _joined(base.conditional_on, sparse.conditional_on)
    return base


def _conditional(item) -> tuple[str, ...]:
    """The saved selections a first-order result's proved sparse pattern read, if any."""
    return tuple(getattr(getattr(item, "sparse", None), "conditional_on", ()) or ())


def _joined(*parts: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(name for part in parts for name in part))


def _zero_sparse(base: HessianInput) -> HessianInput:
    """A large scalar linear in x (or not reading it): the empty sparse Hessian."""
    matrix = empty_csr(base.tensor)
    base.constant = not base.unused
    base.sparse = SparseHessian(matrix, torch.zeros(base.numel(), dtype=torch.int64),
                                0, 0, "proved")
    base.derivatives = matrix
    return base


class _Inner(NamedTuple):
    """How D depends on x: D's axes paired with x's, the derivatives under that pairing."""

    pairing: Pairing
    derivatives: torch.Tensor | None
    evidence: str
    unused: bool = False
    conditional_on: tuple[str, ...] = ()


def _analysed(d, x, name, output_name, budget, options) -> _Inner:
    """The analysis run on D as on any output: structure proved, or found by probes."""
    inner = analysis.differentiate(d, {name: x}, output_name=f"d{output_name}",
                                   memory_budget=budget, **options).inputs[name]
    derivatives = inner.derivatives
    if derivatives is not None and derivatives.layout != torch.strided:
        derivatives = derivatives.to_dense()  # a sparse Jacobian of D (within the budget)
    if derivatives is not None and inner.pairing and \
            tuple(derivatives.shape) == tuple(d.shape) + tuple(x.shape):
        derivatives = _at_pairing(derivatives, d.shape, x.shape, inner.pairing)
    return _Inner(inner.pairing, derivatives, inner.evidence, inner.unused, _conditional(inner))


def _at_pairing(full: torch.Tensor, d_shape, x_shape, pairing: Pairing) -> torch.Tensor:
    """``full`` (D.shape + x.shape: a sparse Jacobian of D is documented whole, its pairing
    kept, e.g. an axis of size 1) read at its points: component shape + x.shape, the shape
    the pairing's derivatives have everywhere else (:func:`_read` indexes that)."""
    paired = dict(zip(pairing.out_axes, pairing.in_axes))
    comp_axes = [a for a in range(len(d_shape)) if a not in paired]
    ndim, device = len(comp_axes) + len(x_shape), full.device
    x_index = [_axis(n, len(comp_axes) + b, ndim, device) for b, n in enumerate(x_shape)]
    d_index = [x_index[paired[a]] if a in paired else
               _axis(d_shape[a], comp_axes.index(a), ndim, device) for a in range(len(d_shape))]
    return full[tuple(d_index) + tuple(x_index)]


def _at_points(d, x, pairing: Pairing, evidence: str, budget: int, seed: int,
               output=None) -> _Inner | None:
    """Where the output has points, D has the same ones: D[c, j] is a derivative of y at
    j's point, so it depends on that point's entries of x only (for every x when that holds
    of y). One VJP per component of D and entry of a point; unless that is proved, checked
    by probes as the analysis checks a pairing (with :data:`SECOND_ORDER_SLACK`); None (let
    the analysis decide) when they disagree."""
    if not any(x.shape[b] > 1 for b in pairing.in_axes):
        return None
    k = d.dim() - x.dim()
    lifted = Pairing((k + b, b) for b in pairing.in_axes)
    vectors = [probes.probe_vector(d, seed, draw)
               for draw in range(probes.probe_plan(d.dtype).probes)]
    (first,) = autograd_grad([d], [x], [vectors[0]], retain_graph=True, allow_unused=True)
    if first is None:
        return _Inner(lifted, None, evidence, unused=True)
    stacked = checked_components(d, [x], lifted.out_axes, budget)
    second = stacked[0].reshape(lifted.component_shape(d.shape) + tuple(x.shape))
    checks = [] if evidence == "proved" else \
        [(vectors[0], first)] + [(v, plain_vjp(d, [x], v)[0]) for v in vectors[1:]]
    if any(probes.probe_mismatch(second, v, vjp, lifted) > SECOND_ORDER_SLACK
           for v, vjp in checks):
        return None
    if evidence == "proved" and output is not None and bool(second.detach().isnan().any()):
        second = validation.nan_filled(second.detach(), (
            lambda: _forward_twice(output, x, pairing, lifted),))
    return _Inner(lifted, second, evidence)


# Components of D from which a diagonal Hessian per component is tried first (_diagonal)
DIAGONAL_FROM = 8


def _diagonal(d, x, seed: int) -> _Inner | None:
    """Where every component's Hessian is diagonal (y = A·g(x), A linear, g elementwise: a
    convolution, pooling or padded stencil of x**2), D[c, j] depends on x_j alone: D's x
    axes pair with x's, every entry of x a point. The analysis finds that pairing by probes
    but then takes one VJP per component of D (as many as y has entries, each through the
    double-backward graph: O(n) passes, 6.6 s at n = 100 for conv1d(x**2)); forward mode
    reads the pairing's entries in one J·u, u = ones (:func:`.derivatives.forward_at_points`,
    2 passes), then the analysis's probes judge it as they judge the per-component result
    (every probe vᵀJ of D within :data:`SECOND_ORDER_SLACK` of vᵀ(what the pairing says)):
    observed, as the analysis's own verdict on that pairing would be; where the graph proves
    the pairing (:func:`.axisflow.prove`), proved, after one probe. None (the analysis
    decides) where D has under :data:`DIAGONAL_FROM` components, forward mode is not
    available, or a probe disagrees (a Hessian with off-diagonal entries: 3 passes spent)."""
    k = d.dim() - x.dim()
    if math.prod(d.shape[:k]) < DIAGONAL_FROM or x.numel() < 2:
        return None
    pairing = Pairing((k + b, b) for b in range(x.dim()))
    second = forward_at_points(d, x, pairing)
    if second is None:
        return None
    held = axisflow.prove(d, x).pairing(tuple(d.shape), tuple(x.shape))
    proved = {tuple(p) for p in pairing} <= {tuple(p) for p in held}  # (W @ sin(x)'s D)
    for draw in range(1 if proved else probes.probe_plan(d.dtype).probes):
        v = probes.probe_vector(d, seed, draw)
        (vjp,) = plain_vjp(d, [x], v)
        if vjp is None or probes.probe_mismatch(second, v, vjp, pairing) > SECOND_ORDER_SLACK:
            return None
    return _Inner(pairing, second, "proved" if proved else "observed")


def _forward_twice(output, x, pairing: Pairing, lifted: Pairing) -> torch.Tensor | None:
    """Second derivatives at proved points by forward mode over forward mode: reverse mode
    sends v = 0 into every other component's branch, whose infinite derivative makes 0·∞ =
    NaN in D and so in ∂D/∂x (stack([1/x, 5x²]) at 0: f_2''(0) NaN, where it is 10)."""
    d = forward_at_points(output, x, pairing, graph=True)
    return None if d is None or not d.requires_grad else \
        forward_at_points(d, x, lifted)


def _zero(item: HessianInput, comp) -> HessianInput:
    x = item.tensor
    item.second = x.new_zeros(comp + tuple(x.shape) + tuple(x.shape))
    item.derivatives = x.new_zeros(comp + tuple(x.shape) + item.per_point_shape)
    return item


def first_derivatives(output, x, pairing: Pairing, budget: int,
                      expected: torch.Tensor) -> torch.Tensor | None:
    """D = the first derivatives (component shape + x.shape), with a graph: one VJP per
    non-point output component, batched where PyTorch can and checked against ``expected``
    (the analysis's own first derivatives, dense or a sparse layout), else one by one (and
    so where the graph indexes x, up to :data:`PLAIN_ROWS` components: :func:`_indexes`)."""
    comp = pairing.component_shape(output.shape)
    count = math.prod(comp)
    if expected is not None and expected.layout != torch.strided:
        expected = expected.to_dense()  # D is as large, and dense: within the refused budget
        if expected.numel() != count * x.numel():  # not laid out per component: no check
            expected = None
    if 1 < count <= PLAIN_ROWS and _indexes(output):  # plain passes: D's graph vmaps fast
        expected = None
    step = max(1, chunk_size(output, [x], budget))
    parts = []
    for start in range(0, count, step):
        stop = min(count, start + step)
        vectors = one_hot_gradients(output.shape, pairing.out_axes, start, stop,
                                    output.dtype, output.device)
        parts.append(_vjps_with_graph(output, x, vectors, None if expected is None else
                                      expected.reshape((count,) + tuple(x.shape))[start:stop]))
    if any(p is None for p in parts):
        return None
    return (torch.cat(parts) if len(parts) > 1 else parts[0]).reshape(comp + tuple(x.shape))


# Up to this many components, D is made by plain passes where the graph indexes x (below).
PLAIN_ROWS = 1024
# Nodes whose backward (index_put) has no batching rule: through a D made by a batched pass
# over them, the second derivatives' vectorised passes take vmap's slow fallback (a
# permutation's vector Hessian at n = 80: 2 s for 30 vectors, 0.004 s through a D made by
# plain passes, whose vmapped passes then beat plain ones 10x).
_UNBATCHED = frozenset({"IndexBackward0", "IndexPutBackward0"})
_WALKED = 10_000  # nodes looked at, at most


def _indexes(output: torch.Tensor) -> bool:
    """Whether the graph of ``output`` (its first :data:`_WALKED` nodes) has a node of
    :data:`_UNBATCHED`."""
    for k, node in enumerate(walk_nodes([output.grad_fn])):
        if k >= _WALKED:
            return False
        if node.name() in _UNBATCHED:
            return True
    return False


def _vjps_with_graph(output, x, vectors, expected) -> torch.Tensor | None:
    """vᵀJ with a graph for each v in ``vectors``; None when no result has a graph. The
    vectors require grad, so a backward marked ``once_differentiable`` leaves its error node
    (:func:`refuse_once_differentiable`) instead of a silently constant result. One batched
    pass where ``expected`` is given and agrees, else plain passes."""
    vectors = vectors.detach().clone().requires_grad_(True)
    if len(vectors) > 1 and expected is not None:
        try:
            (d,) = autograd_grad([output], [x], [vectors], retain_graph=True,
                                 create_graph=True, is_grads_batched=True,
                                 materialize_grads=True)
            same = d.shape == expected.shape  # an unused x: zeros without the batch axis
            if same and d.requires_grad and torch.allclose(d.detach(), expected, equal_nan=True):
                return d
        except (RuntimeError, NotImplementedError):
            pass
    rows = [autograd_grad([output], [x], [v], retain_graph=True, create_graph=True,
                          materialize_grads=True)[0] for v in vectors]
    if not any(r.requires_grad for r in rows):
        return None
    return torch.stack(rows)


def refuse_once_differentiable(d: torch.Tensor, output_name: str, item) -> None:
    """A create_graph pass through a backward marked ``once_differentiable`` leaves an error
    node that would only fail (or be skipped as unused) later: refuse it now."""
    if once_differentiable_node(d.grad_fn) is not None:
        which = ", ".join(n.removesuffix("Backward") for n in item.unverified) \
            or "a custom autograd.Function"
        raise VJPUsageError(
            f"{output_name} cannot be differentiated twice: {which} has no double backward "
            "(its backward is marked @once_differentiable), so autograd cannot compute "
            "second derivatives through it.")


def refuse_graphless_backward(output: torch.Tensor, x: torch.Tensor, output_name: str,
                              item) -> None:
    """A custom ``autograd.Function`` between the output and x whose backward reads what it
    saved without a graph (through NumPy, under ``no_grad``, or ``.detach()``) has right
    first derivatives, but autograd's second derivatives through it are 0 where they are
    not (x³: 0 for 6x), as if it were linear: refused, naming it. Each such node's backward
    is called once more on ones (:func:`_reads_saved`); one that saved nothing needing grad
    (a linear map, a straight-through estimator) is taken as autograd reads it."""
    if not item.unverified or output.grad_fn is None:
        return
    for node in walk_nodes([output.grad_fn]):
        if not isinstance(node, BackwardCFunction):
            continue
        try:
            saved = [t for t in node.saved_tensors if t is not None and t.requires_grad]
        except RuntimeError:  # freed: the passes before would have said so
            continue
        if saved and _reaches(node, x) and _reads_saved(node, saved) is False:
            name = type(node).__name__.removesuffix("Backward")
            raise VJPUsageError(
                f"{output_name} cannot be differentiated twice: the backward of {name} (a "
                "custom autograd.Function) reads the tensors it saved without a graph "
                "(through NumPy, under torch.no_grad() or .detach()), so autograd would give "
                "0 for its second derivatives. Write its backward in torch operations on "
                "ctx.saved_tensors, or mark it @once_differentiable.")


def _reaches(node, x: torch.Tensor) -> bool:
    """Whether x (a leaf, or the output of a node) lies below ``node`` on the graph."""
    target = x.grad_fn
    for below in walk_nodes([node]):
        if below is target if target is not None else getattr(below, "variable", None) is x:
            return True
    return False


def _reads_saved(node, saved: list[torch.Tensor]) -> bool | None:
    """Whether the custom node's backward, called on ones that require grad, reads what it
    saved with a graph: False where no output's graph reaches one of ``saved`` and the
    backward cut a graph on the way (:class:`_Cuts`: ``.detach()``, ``.numpy()``,
    ``.data``, ``.item()``, an op under ``no_grad``); True otherwise (a mask ``x > 0`` of
    a piecewise-linear function, ``ones_like(x)``: its second derivatives are 0 indeed);
    None where it cannot be called so (it raised)."""
    grads = [torch.ones(m.shape, dtype=m.dtype, device=m.device, requires_grad=True)
             for m in node._input_metadata]
    cuts = _Cuts()
    try:
        with torch.enable_grad(), cuts:
            outputs = node.apply(*grads)
    except Exception:  # noqa: BLE001 - the user's backward, called as no pass calls it
        return None
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    return not cuts.cut or any(isinstance(o, torch.Tensor) and o.requires_grad and
                               depends_on(o, t) for o in outputs for t in saved)


_DATA = torch.Tensor.data  # .data's __get__ is a new object each time: known by its owner


class _Cuts(TorchFunctionMode):
    """Notes whether code under it reads a tensor that requires grad without a graph:
    ``.detach()``, ``.numpy()``, ``.data``, ``.item()``, ``.tolist()``, or any op on one
    while grad mode is off."""

    _READS = frozenset({torch.Tensor.detach, torch.Tensor.numpy, torch.Tensor.item,
                        torch.Tensor.tolist})

    def __init__(self):
        super().__init__()
        self.cut = False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if not self.cut and func is not torch._C._set_grad_enabled and any(
                isinstance(a, torch.Tensor) and a.requires_grad for a in args) and (
                func in self._READS or getattr(func, "__self__", None) is _DATA
                or not torch.is_grad_enabled()):
            self.cut = True
        return func(*args, **(kwargs or {}))


@contextmanager
def _twice_differentiable(output_name: str):
    """Turn PyTorch's error for an op without double backward, raised inside, into a
    one-sentence :class:`VJPUsageError`; any other error propagates as it is."""
    try:
        yield
    except (NotImplementedError, RuntimeError) as error:
        if NOT_TWICE_DIFFERENTIABLE.search(str(error)) is None and COMPILED_ONCE not in str(error):
            raise
        raise VJPUsageError(_no_double_backward(output_name, error)) from None


def _no_double_backward(output_name: str, error: BaseException) -> str:
    match = NOT_TWICE_DIFFERENTIABLE.search(str(error))
    op = match.group(1).strip("_").removesuffix("_backward") if match else \
        "torch.compile'd code (its CompiledFunctionBackward)" if COMPILED_ONCE in str(error) \
        else "an operation"
    return (f"{output_name} cannot be differentiated twice: {op} has no double backward in "
            f"PyTorch ({str(error).strip().rstrip('.')}), so second derivatives through it "
            "are not available.")


# -- assembling: per-point Hessians and the full Hessian from ∂D/∂x ---------------------------
def _axis(size: int, position: int, ndim: int, device) -> torch.Tensor:
    shape = [1] * ndim
    shape[position] = size
    return torch.arange(size, device=device).reshape(shape)


def _read(item: HessianInput, d_index, k_index, shape) -> torch.Tensor:
    """∂D[d]/∂x[k] at broadcast index tensors (one per axis of D, one per axis of x), read
    off ``item.second`` under ``item.structure``; 0 where the structure says so."""
    paired = set(item.structure.out_axes)
    comp_index = [d_index[a] for a in range(len(d_index)) if a not in paired]
    second = item.second
    values = second[tuple(comp_index) + tuple(k_index)] if comp_index or k_index else second
    same = torch.ones((), dtype=torch.bool, device=second.device)
    for a, b in item.structure:
        same = same & (d_index[a] == k_index[b])
    zero = torch.zeros((), dtype=second.dtype, device=second.device)
    return torch.where(same, values, zero).expand(shape).clone()


def per_point_hessians(out_shape, item: HessianInput) -> torch.Tensor:
    """``component shape + x.shape + per-point shape``: ∂²y[c, p(j)]/∂x_j ∂x_(p(j), k')."""
    x_shape = tuple(item.shape)
    comp = item.pairing.component_shape(out_shape)
    pp = item.per_point_shape
    ndim, device = len(comp) + len(x_shape) + len(pp), item.second.device
    d_index = [_axis(n, a, ndim, device) for a, n in enumerate(comp + x_shape)]
    points = set(item.pairing.in_axes)
    rest = [b for b in range(len(x_shape)) if b not in points]
    k_index = [d_index[len(comp) + b] if b in points else
               _axis(x_shape[b], len(comp) + len(x_shape) + rest.index(b), ndim, device)
               for b in range(len(x_shape))]
    return _read(item, d_index, k_index, comp + x_shape + pp)


def full_hessian(out_shape, item: HessianInput) -> torch.Tensor:
    """``output.shape + x.shape + x.shape``: H[y, j, k] = ∂D[c(y), j]/∂x_k where ``j`` is at
    ``y``'s point, else 0."""
    out_shape, x_shape = tuple(out_shape), tuple(item.shape)
    o, n = len(out_shape), len(x_shape)
    ndim, device = o + 2 * n, item.second.device
    points = set(item.pairing.out_axes)
    d_index = [_axis(size, a, ndim, device) for a, size in enumerate(out_shape)
               if a not in points]
    d_index += [_axis(size, o + b, ndim, device) for b, size in enumerate(x_shape)]
    k_index = [_axis(size, o + n + b, ndim, device) for b, size in enumerate(x_shape)]
    values = _read(item, d_index, k_index, out_shape + x_shape + x_shape)
    same = torch.ones((), dtype=torch.bool, device=device)
    for a, b in item.pairing:
        same = same & (_axis(out_shape[a], a, ndim, device) == _axis(x_shape[b], o + b, ndim,
                                                                        device))
    return torch.where(same, values, torch.zeros((), dtype=values.dtype, device=device))


def points_csr(out_shape, item: HessianInput, budget: int, what: str) -> torch.Tensor:
    """The full Hessian of a point structure as 2-D CSR (output.numel()·n × n, row-major),
    with no dense Hessian: ∂D/∂x as CSR (:func:`.sparse_layout.block_csr` of ``item.second``
    under ``item.structure``, rows (c, j) of D = ∂y/∂x), each row moved to the Hessian's row
    (y, j), y the output entry of component c at j's point (one y per (c, j)). Refused over
    the budget, which counts its row pointers and nonzeros."""
    out_shape, x_shape = tuple(out_shape), tuple(item.shape)
    n, m = item.numel(), math.prod(out_shape)
    comp = item.pairing.component_shape(out_shape)
    d = block_csr(item.second, comp + x_shape, item.structure)
    cols, values = d.col_indices(), d.values()
    memory.refuse_if_over(8 * (m * n + 1) + cols.numel() * (8 + values.element_size()),
                          budget, f"{what} ({cols.numel():,} nonzeros in {m * n:,} rows)")
    rows = csr_rows(d.crow_indices())  # D's row c·n + j
    component, j = torch.div(rows, n, rounding_mode="floor"), rows.remainder(n)
    strides = [math.prod(out_shape[a + 1:]) for a in range(len(out_shape))]
    points = dict(item.pairing)
    y = torch.zeros_like(rows)
    for a, index in zip([a for a in range(len(out_shape)) if a not in points],
                        unravelled(component, comp)):
        y += index * strides[a]
    at = unravelled(j, x_shape)
    for a, b in points.items():
        y += at[b] * strides[a]
    moved = y * n + j  # distinct rows of D go to distinct rows: a stable sort keeps columns
    order = torch.sort(moved, stable=True).indices
    crow = torch.zeros(m * n + 1, dtype=torch.int64, device=rows.device)
    crow[1:] = torch.cumsum(torch.bincount(moved, minlength=m * n), 0)
    return csr_matrix(crow, cols[order], values[order], (m * n, n))


def rounding_range(dtype: torch.dtype) -> float:
    """The largest asymmetry |H - Hᵀ|, relative to a Hessian's largest entry, that rounding
    in ``dtype`` can give, 30√eps (at most 0.1; 1e-2 in float32, 4.5e-7 in float64): past
    the rounding of the entries themselves (the ``symbolic`` tolerance) where the terms
    summing into them cancel, as a LayerNorm's squared outputs summed (terms ~1, Hessian
    ~1e-4: 1e-3 in float32, 1e-12 in float64). The terms' own magnitudes are not known here
    (autograd gives sums only): an asymmetry below this is said with its size (a note), not
    called a kink; past it, no rounding gives it."""
    return min(0.1, 30 * torch.finfo(dtype).eps ** 0.5)


def _nonfinite_note(name: str, d: torch.Tensor) -> str:
    """The note on second derivatives with NaN or infinite entries, counted and its name
    marked as the first derivatives' note (:func:`validation.nonfinite_notes`): an infinite
    one may be a derivative past the dtype's range (exp of a large number) as well as a
    singularity, so the note names both and how to tell them apart, and no symmetry is judged
    on them."""
    nan = int(torch.isnan(d).sum())
    inf = d.numel() - int(torch.isfinite(d).sum()) - nan
    what = " and ".join(p for p in [validation.counted_entries(nan, "NaN"),
                                    validation.counted_entries(inf, "infinite")] if p)
    dtype = str(d.dtype).replace("torch.", "")
    if inf:  # (either is possible: nothing here tells them apart)
        why = (f"either a second derivative there is past {dtype}'s range (an overflow, as "
               "exp of a large number gives" + (": computed in float64 it stays finite"
                                               if d.dtype != torch.float64 else "")
               + "), or f has a singularity there (sqrt or log at 0, a division by zero)")
    else:
        why = "f is not twice differentiable there, or the computation divided 0 by 0"
    return marked(f"The second derivatives with respect to `{name}` have {what}: {why}. "
                  "Whether the Hessian is symmetric is not judged on them.")


def _notes(result: HessianResult) -> list[str]:
    """Non-finite second derivatives, asymmetric Hessians, custom backward functions."""
    notes = []
    for name, item in result.inputs.items():
        d = item.sparse.matrix.values() if item.sparse is not None else \
            item.sparse_blocks.values if item.sparse_blocks is not None else item.derivatives
        finite = not d.numel() or bool(torch.isfinite(d.sum())) or bool(torch.isfinite(d).all())
        if not finite:
            notes.append(_nonfinite_note(name, d))
        if not item.symmetric and finite:
            notes.append(f"The Hessian with respect to {name} is not symmetric (|H - Hᵀ| up to "
                         f"{item.asymmetry:.2g} of its largest entry): the function is not twice "
                         "continuously differentiable here (a kink, clamp or abs), or a custom "
                         "backward is not the derivative of its forward.")
        elif item.asymmetry > tolerances(item.dtype).symbolic:
            dtype = str(item.dtype).replace("torch.", "")
            notes.append(f"The Hessian with respect to {name} is symmetric up to {dtype} "
                         f"rounding in sums that cancel: |H - Hᵀ| is up to "
                         f"{item.asymmetry:.2g} of its largest entry, more than the rounding "
                         "of the entries alone; its smallest entries may carry that error. "
                         "In float64 the same Hessian would be symmetric to ~1e-12 where "
                         "the function is smooth.")
    custom = list(dict.fromkeys(n for i in result.inputs.values() for n in i.unverified))
    if custom:
        which = ", ".join(f"`{n}`" for n in custom)
        notes.append(marked(
            f"The graph contains {which}, a custom `autograd.Function`: the second "
            "derivatives are the derivatives of its backward, which vjp_magic cannot verify "
            "(check with `torch.autograd.gradgradcheck`)."))
    return notes
