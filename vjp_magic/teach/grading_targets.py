"""What an answer is compared with (``--check``): the answer read as float64 values, the
values it may equal with each entry's tolerance (:class:`Target`), and the derivatives of one
input in every accepted form (:class:`Expected`): as ``r.derivatives`` holds them, the
input-shaped gradient (one component per point), the full Jacobian, and the layouts a course
uses where their shape tells them apart: one Jacobian per row (points first: (N, m, d)) and
the full Jacobian flattened to m × n (as ``%jacobian`` shows it).

A tolerance is relative to the magnitudes that sum into the entry's point (never to the
largest entry overall), plus ``slack``: an absolute allowance per entry where autograd's own
float32 value is imprecise (:mod:`.grading_reference`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from ..core.errors import VJPUsageError
from ..core.tolerances import tolerances
from ..render.sparse import display_colours
from .sparse_dense import column_sums, csr_row, is_sparse

JACOBIAN_LIMIT = 1 << 22  # entries: a full-Jacobian answer is compared up to this size


DENSE_ANSWER_ENTRIES = 1 << 24  # a sparse answer is graded dense up to this many entries


def as_tensor(answer) -> tuple[torch.Tensor | None, torch.dtype | None]:
    """The answer as float64 values (a list/tuple is stacked) and its own dtype."""
    if isinstance(answer, torch.Tensor):
        a = answer.detach()
        if a.is_complex() or a.dtype == torch.bool:
            return None, None
        if a.layout != torch.strided:  # the layout r.jacobian(..., layout=) gives: its values
            if a.numel() > DENSE_ANSWER_ENTRIES:
                raise VJPUsageError(
                    f"The answer is a sparse tensor of {a.numel():,} entries (dense), too many "
                    "to grade: grade the answer of a smaller problem.")
            a = a.to_dense()
        return a.double(), (a.dtype if a.is_floating_point() else None)
    if isinstance(answer, (list, tuple)) and answer:
        items = [as_tensor(a) for a in answer]
        if all(t is not None for t, _ in items) and len({t.shape for t, _ in items}) == 1:
            return torch.stack([t for t, _ in items]), items[0][1]
        return None, None
    try:
        return as_tensor(torch.as_tensor(answer)) if answer is not None else (None, None)
    except (TypeError, ValueError, RuntimeError):
        return None, None


@dataclass
class Target:
    """Values an answer may equal, each entry's tolerance, and which axes are points."""

    form: str
    value: torch.Tensor
    tol: torch.Tensor
    point_axes: tuple[int, ...] = ()

    def mismatch(self, a: torch.Tensor, factor: int = 1) -> torch.Tensor:
        e = self.value * factor
        same = (a == e) | (a.isnan() & e.isnan())
        return ~(same | ((a - e).abs() <= factor * self.tol))

    def matches(self, a: torch.Tensor, factor: int = 1) -> bool:
        return a.shape == self.value.shape and not bool(self.mismatch(a, factor).any())

    def vanishes(self) -> bool:
        """Every entry is zero within its tolerance (softmax's column sums)."""
        return not bool((self.value.abs() > self.tol).any())

    def multiple(self, a: torch.Tensor) -> int | None:
        """k ≥ 2 when ``a`` is k times the value, and no other k would do: some entry is
        known well enough to tell k from k ± 1 (|value| > (2k + 1)·tol)."""
        if a.shape != self.value.shape:
            return None
        ok = torch.isfinite(a) & torch.isfinite(self.value)
        e, x = self.value[ok], a[ok]
        norm = float((e * e).sum())
        k = round(float((x * e).sum()) / norm) if norm > 0 else 0
        if k < 2 or not bool((e.abs() > (2 * k + 1) * self.tol[ok]).any()):
            return None
        return k if self.matches(a, k) else None

    def permuted(self, order) -> Target:
        points = tuple(i for i, old in enumerate(order) if old in self.point_axes)
        return Target(self.form, self.value.permute(order), self.tol.permute(order), points)

    def reshaped(self, shape) -> Target:
        return Target(self.form, self.value.reshape(shape), self.tol.reshape(shape))


def target(form: str, value, magnitude, point_axes, rtol: float, slack=None) -> Target:
    """Each entry judged relative to the largest magnitude summing into its point's entries
    (never to another point's: a large derivative elsewhere excuses no small one), plus
    ``slack`` (shaped like ``value``) where autograd's own rounding is larger (a derivative
    whose terms cancel: :mod:`.grading_reference`)."""
    mag = torch.nan_to_num(magnitude, nan=0.0, posinf=0.0)
    others = tuple(d for d in range(mag.dim()) if d not in point_axes)
    local = mag.amax(dim=others, keepdim=True) if others and mag.numel() else mag
    tol = rtol * local + torch.finfo(torch.float64).tiny
    tol = tol.expand(value.shape) if slack is None else tol + torch.nan_to_num(slack, nan=0.0)
    return Target(form, value, tol.expand(value.shape), tuple(point_axes))


def fits(a: torch.Tensor, shape: tuple) -> torch.Tensor | None:
    """``a`` in ``shape`` when it has it, or differs only by axes of size 1."""
    if tuple(a.shape) == shape:
        return a
    squeezed = tuple(n for n in a.shape if n != 1)
    if squeezed == tuple(n for n in shape if n != 1):
        return a.reshape(shape)
    return None


class Expected:
    """The derivatives of one input in every accepted form, made on demand: ``name``, ``item``
    (the result's input), ``x`` (its tensor), ``comp``/``count`` (the output's component
    shape and how many), ``d`` (the float64 derivatives), ``shape``, ``jacobian_shape``.
    ``refined``: (values, slack) from :func:`~.grading_reference.refinement`, where
    autograd's own float32 rounding must not count against an answer."""

    def __init__(self, result, name: str, answer_dtype, refined=None, coloured=None):
        self.result, self.name = result, name
        self.coloured = coloured  # the SparseJacobian the display taught (kept when densified)
        self.item = item = result.inputs[name]
        self.x = item.tensor
        self.comp = tuple(result.component_shape(name))
        self.count = math.prod(self.comp)
        # a sparse Jacobian too large to densify (:func:`~.sparse_dense.densified` made the
        # others dense): graded from its CSR, the forms that need every entry left out
        self.csr = item.sparse.matrix if is_sparse(item) else None
        self.d = None if self.csr is not None else item.derivatives.detach().double()
        self.slack = None
        if refined is not None:
            self.d, self.slack = (t.to(self.d.device) for t in tuple(refined)[:2])
        dtypes = [item.derivatives.dtype] + ([answer_dtype] if answer_dtype else [])
        self.rtol = max(tolerances(t).backward for t in dtypes)
        self.points = tuple(len(self.comp) + b for b in item.pairing.in_axes)
        self.jacobian_shape = tuple(result.output.shape) + tuple(self.x.shape)
        self.shape = tuple(self.d.shape) if self.d is not None else \
            self.comp + tuple(self.x.shape) if item.has_points else self.jacobian_shape

    def refuse_too_large(self, a: torch.Tensor) -> None:
        """A VJPUsageError where ``a`` has the shape of the point structure's dense blocks
        (as ``r.derivatives`` holds them, or one Jacobian per row) while they were kept
        sparse, too large to grade entry by entry (:func:`.sparse_dense.fits_dense`)."""
        if self.d is not None or not self.item.has_points or \
                a.numel() != math.prod(self.shape):
            return
        raise VJPUsageError(
            f"The answer has {a.numel():,} entries, the dense blocks of {self.count:,} "
            f"components at every point: too many to grade here. Grade the answer of a "
            f"smaller batch (the derivatives have shape {tuple(self.shape)}, or one Jacobian "
            f"per row: {self._per_row_shape()}).")

    @property
    def device(self) -> torch.device:
        return self.csr.device if self.d is None else self.d.device

    def derivatives(self) -> Target | None:
        if self.d is None:
            return None
        return target("derivatives", self.d, self.d.abs(), self.points, self.rtol, self.slack)

    def forms(self) -> list[tuple]:
        """(shape, make the Target) for each accepted form, the plain ones first; a layout
        whose shape another form has (up to axes of size 1) is left out: ambiguous."""
        found = [(self.shape, self.derivatives), (tuple(self.x.shape), self.gradient),
                 (self.jacobian_shape, self.jacobian)]
        for shape, make in ((self._per_row_shape(), self.per_row),
                            (self._flat_shape(), self.flat_jacobian)):
            squeezed = tuple(n for n in shape or () if n != 1)
            if shape and all(squeezed != tuple(n for n in s if n != 1) for s, _ in found):
                found.append((shape, make))
        return found

    def _per_row_order(self) -> tuple | None:
        """The derivatives' axes in per-row order: points, components, the rest of the
        input's axes; None where there are no points, components or further input axes."""
        c = len(self.comp)
        points = list(self.points)
        rest = [c + b for b in range(self.x.dim()) if c + b not in points]
        if not points or not c or not rest or not self.item.has_points:
            return None
        return tuple(points + list(range(c)) + rest)

    def _per_row_shape(self) -> tuple | None:
        order = self._per_row_order()
        return None if order is None else tuple(self.shape[i] for i in order)

    def per_row(self) -> Target | None:
        """One Jacobian per row (point): shape points + components + the input's other axes."""
        order = self._per_row_order()
        if order is None:
            return None
        moved = self.derivatives().permuted(order)
        return Target("per-row", moved.value, moved.tol, moved.point_axes)

    def _flat_shape(self) -> tuple | None:
        m, n = math.prod(self.jacobian_shape[:len(self.result.output.shape)]), self.x.numel()
        return (m, n) if m * n <= JACOBIAN_LIMIT and self.d is not None else None

    def flat_jacobian(self) -> Target | None:
        """The full Jacobian as the m × n matrix ``%jacobian`` shows (row-major)."""
        full = self.jacobian() if self.jacobian_shape != self.shape else self.derivatives()
        shape = self._flat_shape()
        if full is None or shape is None:
            return None
        return Target("flat-jacobian", full.value.reshape(shape), full.tol.reshape(shape))

    def gradient(self) -> Target | None:
        """x-shaped, for one component per point (or a scalar output)."""
        return self.component(0) if self.count == 1 else None

    def jacobian(self) -> Target | None:
        size = math.prod(self.jacobian_shape)
        if self.jacobian_shape == self.shape or size > JACOBIAN_LIMIT or self.d is None:
            return None
        j = self._full(self.d)
        slack = None if self.slack is None else self._full(self.slack)
        return target("jacobian", j, j.abs(), (), self.rtol, slack)

    def _full(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` (shaped like the derivatives) placed in the full Jacobian."""
        if self.slack is None:
            return self.result.jacobian(self.name).detach().double()
        item = replace(self.item, derivatives=values)
        placed = replace(self.result, inputs={**self.result.inputs, self.name: item})
        return placed.jacobian(self.name).detach().double()

    def summed(self) -> Target:
        """What v = ones gives: the components' derivatives added up (x-shaped)."""
        if self.d is None:  # vᵀJ with v = ones from the CSR's columns
            sums, magnitude = (column_sums(self.csr, a).reshape(self.x.shape)
                               for a in (False, True))
            return target("gradient", sums, magnitude, self.item.pairing.in_axes, self.rtol)
        axes = tuple(range(len(self.comp)))
        slack = None if self.slack is None else self.slack.sum(axes)
        return target("gradient", self.d.sum(axes), self.d.abs().sum(axes),
                      self.item.pairing.in_axes, self.rtol, slack)

    def component(self, k: int) -> Target:
        """Component ``k``'s derivatives (row-major), x-shaped."""
        rows = (self.count,) + tuple(self.x.shape)
        if self.d is None:  # one row of the CSR
            value = csr_row(self.csr, k).reshape(self.x.shape)
            return target("gradient", value, value.abs(), self.item.pairing.in_axes, self.rtol)
        value = self.d.reshape(rows)[k]
        slack = None if self.slack is None else self.slack.reshape(rows)[k]
        return target("gradient", value, value.abs(), self.item.pairing.in_axes, self.rtol,
                      slack)

    def compressed_shapes(self) -> list[tuple]:
        """The shapes of the compressed rows the display teaches: (colours, n) and (colours,
        *x.shape) — by columns, (colours, m) and (colours, *y.shape) — or none."""
        sparse = self.coloured
        if sparse is None:
            return []
        across = self.result.output if str(getattr(sparse, "mode", "rows")) == "columns" \
            else self.x
        return [(sparse.count, across.numel()), (sparse.count, *across.shape)]

    def compressed(self) -> Target | None:
        """The compressed rows the display's code computes, numbered as it numbers the
        colours (:func:`~vjp_magic.render.sparse.display_colours`): row c is vᵀJ for v = 1 on
        the output's entries of colour c (by columns: J u, u = 1 on the input's), read off
        the pattern's every nonzero; each entry judged against its column's magnitudes."""
        sparse = self.coloured
        if sparse is None:
            return None
        matrix = sparse.matrix
        crow, col = matrix.crow_indices(), matrix.col_indices()
        values = matrix.values().detach().double()
        m, n = matrix.shape
        rows = torch.repeat_interleave(torch.arange(m, device=crow.device), crow.diff())
        colour = display_colours(sparse, self.result.output.shape, self.x.shape).to(crow.device)
        if str(getattr(sparse, "mode", "rows")) == "columns":
            at, width = colour[col] * m + rows, m
        else:
            at, width = colour[rows] * n + col, n
        made = [torch.zeros(sparse.count * width, dtype=torch.float64, device=values.device)
                .index_add_(0, at, v).reshape(sparse.count, width) for v in (values, values.abs())]
        return target("compressed", made[0], made[1], (1,), self.rtol)

    def accepted(self) -> list[tuple]:
        shapes = [self.shape]
        if self.count == 1 and tuple(self.x.shape) != self.shape:
            shapes.append(tuple(self.x.shape))
        if self.jacobian_shape != self.shape and math.prod(self.jacobian_shape) <= JACOBIAN_LIMIT:
            shapes.append(self.jacobian_shape)
        shapes += [s for s, _ in self.forms()[3:]]
        return shapes


__all__ = ["JACOBIAN_LIMIT", "Expected", "Target", "as_tensor", "fits", "target"]
