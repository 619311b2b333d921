"""The result object: derivatives, gradient arguments, point axes, full Jacobians.

How it displays is its ``view``'s business (``render/view.py``, set by the pipeline)."""
from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar, NamedTuple

import torch

from . import memory
from .compressed import SparseJacobian
from .dependency import Dependency, from_result
from .derivatives import one_hot_gradients
from .errors import OutOfRange, UnknownName, VJPUsageError
from .outer import OuterProducts
from .pairing import Pairing
from .quiet import entry_point, guarded_reads, no_subclass_code
from .sparse_layout import block_csr, coo_derivatives, csr_block, unravelled
from .validation import parameter_expression, spelled_for


@guarded_reads(plain=("__getitem__",))
class GradientList(Sequence):
    """The ``gradient`` arguments, one per non-point output component, made on demand.

    ``r.gradients['x'][k]`` is a tensor shaped like the output; iterating yields them in
    row-major order of the component axes (the tutorial's 0/1 vectors).
    """

    def __init__(self, output: torch.Tensor, point_out_axes: Sequence[int]):
        self._shape = output.shape
        self._dtype = output.dtype
        self._device = output.device
        self.point_out_axes = tuple(point_out_axes)
        self._count = math.prod(
            n for a, n in enumerate(self._shape) if a not in self.point_out_axes
        )

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self._count))]
        if index < 0:
            index += self._count
        if not 0 <= index < self._count:
            raise OutOfRange(f"Gradient index {index} is out of range: there are {self._count} "
                             f"(indices 0 to {self._count - 1}).")
        return self._vector(index)

    def _vector(self, index: int) -> torch.Tensor:
        return one_hot_gradients(
            self._shape, self.point_out_axes, index, index + 1, self._dtype, self._device
        )[0].contiguous()

    def __repr__(self) -> str:
        return f"<{self._count} gradient argument(s) shaped {tuple(self._shape)}>"


@guarded_reads
class ColouredGradients(GradientList):
    """Coloured 0/1 vectors shaped like ``like``, one per colour of its flat entries (made on
    demand): ``[c]`` is 1 on the entries of colour c; together they cover every entry exactly
    once. ``r.gradients``: the output's (the ``gradient`` arguments of the backward passes,
    :attr:`.compressed.SparseJacobian.output_colours`); ``r.tangents``: the input's (the u of
    the forward-mode passes, where the values were computed by columns)."""

    def __init__(self, like: torch.Tensor, colours: torch.Tensor, count: int | None = None):
        super().__init__(like, ())
        self._colours = colours
        self._count = count if count is not None else \
            int(colours.max()) + 1 if colours.numel() else 0

    def _vector(self, index: int) -> torch.Tensor:
        return (self._colours == index).to(self._dtype).reshape(self._shape).to(self._device)


@guarded_reads
class SparseDerivatives(NamedTuple):
    """Derivatives kept as the 2-D CSR ``matrix`` (output.numel() × input.numel()) until read:
    :class:`InputResult` makes them the sparse COO tensor ``out_shape + in_shape`` when its
    ``derivatives`` are first read (:func:`.sparse_layout.coo_derivatives`), so an analysis
    whose caller reads only the CSR (``r.jacobian(name, layout=torch.sparse_csr)``) never
    builds it. ``layout``, ``shape``, ``dtype`` and ``device`` are the COO tensor's.
    ``point_out_axes``: a point structure's (its every nonzero on the points, the values from
    the colours): the COO tensor is then of the component shape + ``in_shape``, as for any
    point structure."""

    matrix: torch.Tensor
    out_shape: tuple
    in_shape: tuple
    point_out_axes: tuple = ()
    layout = torch.sparse_coo

    @property
    def shape(self) -> torch.Size:
        kept = tuple(n for a, n in enumerate(self.out_shape) if a not in self.point_out_axes)
        return torch.Size(kept + tuple(self.in_shape))

    @property
    def dtype(self) -> torch.dtype:
        return self.matrix.dtype

    @property
    def device(self) -> torch.device:
        return self.matrix.device

    def tensor(self) -> torch.Tensor:
        return coo_derivatives(self.matrix, self.out_shape, self.in_shape, self.point_out_axes)


class _Derivatives:
    """:attr:`InputResult.derivatives`: held as given, a :class:`SparseDerivatives` or
    :class:`.outer.OuterProducts` made into its tensor when first read (and kept), as an
    entry point (:func:`.quiet.entry_point`: a first read in a later cell, under the user's
    torch mode, runs none of it)."""

    def __set_name__(self, owner, name: str) -> None:
        self.slot = "_" + name

    def __get__(self, item, owner=None):
        if item is None:  # on the class: a dataclass field without a default
            raise AttributeError("derivatives")
        value = item.__dict__[self.slot]
        if isinstance(value, (SparseDerivatives, OuterProducts)):
            value = item.__dict__[self.slot] = entry_point(value.tensor)()
        return value

    def __set__(self, item, value) -> None:
        item.__dict__[self.slot] = value


class Seen(NamedTuple):
    """An input tensor's metadata as the analysis saw it (:func:`seen`)."""

    shape: torch.Size
    dtype: torch.dtype
    device: torch.device
    layout: torch.layout
    is_leaf: bool


def seen(tensor: torch.Tensor) -> Seen:
    """``tensor``'s :class:`Seen`, read as torch's (no subclass's ``__torch_function__``)."""
    with torch._C.DisableTorchFunctionSubclass():
        return Seen(tensor.shape, tensor.dtype, tensor.device, tensor.layout, tensor.is_leaf)


class SeenInput:
    """An input's record (:class:`InputResult`, a Hessian's input): its shape, dtype, device,
    layout, ``is_leaf``, ``numel()``, ``dim()`` and ``element_size()`` as the analysis saw
    them, noted when the record was made (field ``seen``). The one place a result's reads
    take them from: the user's tensor (``.tensor``, kept for its identity: the graph walks
    of the analysis, a parameter's spelling, the code's ``_.inputs[name].tensor``) may have
    been given new data, resized, detached since (``x.data = torch.zeros(7)``)."""

    tensor: torch.Tensor
    seen: Seen | None

    def _note_seen(self) -> None:
        if self.seen is None:
            self.seen = seen(self.tensor)

    shape = property(lambda self: self.seen.shape)
    dtype = property(lambda self: self.seen.dtype)
    device = property(lambda self: self.seen.device)
    layout = property(lambda self: self.seen.layout)
    is_leaf = property(lambda self: self.seen.is_leaf)

    def numel(self) -> int:
        return math.prod(self.seen.shape)

    def dim(self) -> int:
        return len(self.seen.shape)

    def element_size(self) -> int:
        return torch._utils._element_size(self.seen.dtype)


@dataclass
class InputResult(SeenInput):
    """Everything known about one input."""

    name: str
    tensor: torch.Tensor
    pairing: Pairing
    derivatives: torch.Tensor = _Derivatives()  # type: ignore[assignment]
    unused: bool = False
    # "proved": the pairing follows from the autograd graph and holds for every input value;
    # "observed": larger than what the graph proves, checked by random probes at this input.
    evidence: str = "proved"
    unverified: tuple[str, ...] = ()  # custom autograd.Function backward nodes on the way
    rejected: tuple[Pairing, ...] = ()  # larger pairings the probe rule rejected, best first
    # The compressed passes' result, when they computed the derivatives (which are then a
    # sparse COO tensor, output.shape + input.shape; with points, the component shape +
    # input.shape, the pairing kept): pattern, colours, evidence.
    sparse: SparseJacobian | None = None
    # where the proved pairing rests on index values the graph saved (x[torch.arange(B), t]:
    # :attr:`.axisflow.GraphProof.conditional_on`): it holds for every input giving the same
    conditional_on: tuple[str, ...] = ()
    seen: Seen | None = field(default=None, repr=False, compare=False)  # (SeenInput)

    def __post_init__(self) -> None:
        self.pairing = Pairing(self.pairing)  # plain ((a, b), ...) pairs are accepted too
        self._note_seen()

    @property
    def point_count(self) -> int:
        """Number of points (product of the paired axes' sizes)."""
        return self.pairing.point_count(self.shape)

    @property
    def has_points(self) -> bool:
        return any(self.shape[b] > 1 for b in self.pairing.in_axes)

    def per_point_numel(self) -> int:
        paired = set(self.pairing.in_axes)
        return math.prod(n for b, n in enumerate(self.shape) if b not in paired)


def with_tensor(item, tensor: torch.Tensor):
    """``item`` (an :class:`InputResult`, or a Hessian's input) holding ``tensor``, its other
    fields as they are: a shallow copy, so derivatives not read yet are not made."""
    item = copy.copy(item)
    item.tensor, item.seen = tensor, seen(tensor)
    return item


class ByName(dict):
    """name → value, one per input of ``result`` (``r.derivatives``, ``r.gradients``, ...):
    it also takes each name as the display spells it (``net[0].weight`` for
    ``net.0.weight``), and refuses any other saying which are (:class:`.errors.UnknownName`,
    a ``KeyError``)."""

    def __init__(self, values, result: DerivativeResult):
        super().__init__(values)
        self._result = result

    def __missing__(self, key):
        return self[self._result.input_key(key)]


@guarded_reads
@dataclass(repr=False)
class DerivativeResult:
    """What every derivative result holds, of order 1 (:class:`VJPResult`) or 2
    (:class:`~vjp_magic.core.hessian.HessianResult`).

    ``derivatives[name]`` (their shape depends on the order); ``point_axes[name]`` the
    (output_axis, input_axis) pairs recognised as points; ``seed`` the seed every random probe
    was drawn from (pass it back as ``seed=r.seed`` to reproduce the run); ``notes``;
    ``symbolic[name]`` and ``crosscheck[name]`` with ``--symbolic``: SymPy's formula and
    whether it agrees with autograd at every point. ``view`` displays it
    (``render/view.py``, set by the pipeline).
    """

    order: ClassVar[int] = 1  # of the derivatives: 1 (first) or 2 (second)

    output: torch.Tensor
    output_name: str
    inputs: dict  # name → InputResult (order 1) or HessianInput (order 2)
    full: bool = False  # no point structure was looked for (--full)
    notes: list[str] = field(default_factory=list)
    memory_budget: int | None = None
    seed: int | None = None  # the probes' seed (core.probes.new_seed)
    symbolic: dict = field(default_factory=dict)  # SymPy's formulas (--symbolic)
    crosscheck: dict = field(default_factory=dict)  # each formula agrees with autograd
    cuts: tuple = ()  # values from an input that reach the output as constants (run/cuts.Cut)
    # values computed from an input read into Python, where they may steer the cell's path
    # (run/cuts.Read): what the graph proves then holds for the path this input took
    steers: tuple = ()
    view: object | None = field(default=None, repr=False, compare=False)

    @property
    def derivatives(self) -> dict[str, torch.Tensor]:
        return ByName({name: item.derivatives for name, item in self.inputs.items()}, self)

    @property
    def point_axes(self) -> dict[str, Pairing]:
        return ByName({name: item.pairing for name, item in self.inputs.items()}, self)

    def component_shape(self, name: str) -> tuple[int, ...]:
        return self.inputs[self.input_key(name)].pairing.component_shape(self.output.shape)

    def release_graph(self) -> None:
        """Keep the output's values, not its autograd graph (a stored result pins no memory)."""
        self.output = self.output.detach()

    def input_name(self, name: str | None = None) -> str:
        """The input ``name`` refers to: the one input when ``name`` is None (a usage error
        when there are several), else :meth:`input_key`."""
        if name is None:
            if len(self.inputs) == 1:
                return next(iter(self.inputs))
            raise VJPUsageError(f"Name the input: one of {self._names_said()}.")
        return self.input_key(name)

    def input_key(self, name) -> str:
        """The key of the input ``name`` names: the key itself, or the key's spelling in the
        display (``net[0].weight`` for ``net.0.weight``); :class:`.errors.UnknownName` (a
        ``KeyError``) saying which names are inputs for anything else."""
        if not isinstance(name, str):
            raise UnknownName(f"Name the input by its name, a str ({self._names_said()}), "
                              f"not a {type(name).__name__}.")
        if name in self.inputs:
            return name
        key = self._shown_names().get(name.replace(" ", ""))
        if key is None:
            raise UnknownName(f"No input named {name!r}; inputs are {self._names_said()}.")
        return key

    def _shown_names(self) -> dict[str, str]:
        """Each input's name as the display spells it → its key (parameters as their module
        spelled them: ``validation.parameter_expression``)."""
        with spelled_for({name: item.tensor for name, item in self.inputs.items()}):
            return {parameter_expression(name): name for name in self.inputs}

    def _names_said(self) -> str:
        """The inputs' names (the first 6), and how the display spells one, where it does."""
        names = list(self.inputs)
        said = ", ".join(names[:6]) + (f", … ({len(names)} in all, list(r.derivatives))"
                                       if len(names) > 6 else "")
        shown = next(((s, n) for s, n in self._shown_names().items() if s != n), None)
        return said if shown is None else \
            f"{said}; or as the display spells them, {shown[0]} for {shown[1]}"

    def _viewed(self):
        if self.view is None:
            raise RuntimeError("This result was made without a view; use vjp_magic.differentiate.")
        return self.view

    # -- displays: the view spells them (markdown, LaTeX, plain) ---------------------------
    # (a display and a read run as entry points: quiet.guarded_reads)
    def _repr_mimebundle_(self, include=None, exclude=None):
        if self.view is None:
            return {"text/plain": repr(self)}
        return self.view.bundle(self)

    def __repr__(self) -> str:
        if self.view is not None:
            return self.view.plain(self)
        inputs = ", ".join(f"{n} {tuple(i.shape)}" for n, i in self.inputs.items())
        shape = tuple(self.output.shape)
        return f"<{type(self).__name__}: {self.output_name} {shape} of {inputs}>"


@guarded_reads
@dataclass(repr=False)
class VJPResult(DerivativeResult):
    """What ``%%vjp``, ``%jacobian`` and :func:`vjp_magic.differentiate` return: first
    derivatives.

    ``derivatives[name]`` has shape ``(non-point output axes) + input.shape``;
    ``gradients[name]`` lists the ``gradient`` arguments used (row-major), each shaped like
    the output; ``tangents[name]`` the forward-mode tangents where columns were computed;
    ``point_axes[name]`` the (output_axis, input_axis) pairs recognised as points;
    ``jacobian(name)`` the full Jacobian, shape ``output.shape + input.shape``;
    ``seed`` the seed every random probe of the analysis was drawn from (pass it back as
    ``differentiate(..., seed=r.seed)`` to reproduce the run); ``check`` (``--check``) and
    ``gradcheck`` (``--gradcheck``) with their flags.
    """

    check: object | None = None  # a student's answer graded (%%vjp --check; teach.grading.Verdict)
    gradcheck: object | None = None  # the replayed cell against finite differences (--gradcheck)

    @property
    def code(self) -> str:
        """Plain PyTorch source that reproduces the derivatives as ``d_<name>``."""
        return self._viewed().code(self)

    @property
    def gradients(self) -> dict[str, GradientList]:
        return ByName({
            name: GradientList(self.output, r.pairing.out_axes) if r.sparse is None
            else ColouredGradients(self.output, r.sparse.output_colours,
                                   r.sparse.count if r.sparse.cover is None else None)
            for name, r in self.inputs.items()
        }, self)

    @property
    def tangents(self) -> dict[str, Sequence[torch.Tensor]]:
        """For each input, the tangents u of the forward-mode passes (J·u) that computed its
        derivatives, shaped like the input, one per colour of its entries; empty where
        backward passes computed them (``r.gradients`` holds their v)."""
        return ByName({name: ColouredGradients(r, r.sparse.colours, r.sparse.count)
                       if r.sparse is not None and r.sparse.mode == "columns" else ()
                       for name, r in self.inputs.items()}, self)

    def picture(self, name: str | None = None):
        """A picture (PNG) of the nonzero pattern of the Jacobian with respect to ``name``."""
        return self._viewed().picture(self, self.input_name(name))

    @no_subclass_code()  # x's shape read as torch's: no subclass's __torch_function__
    def jacobian(self, name: str | None = None, layout: torch.layout = torch.strided
                 ) -> torch.Tensor:
        """The full Jacobian (assembled, no new backward): shape ``output.shape +
        input.shape`` (``layout=torch.strided``, within the memory budget), or 2-D sparse CSR
        (``layout=torch.sparse_csr``: output.numel() × input.numel(), row-major, only the
        nonzeros, at any size)."""
        name = self.input_name(name)
        item = self.inputs[name]
        if layout == torch.sparse_csr:
            if item.sparse is not None:
                return item.sparse.matrix
            return block_csr(item.derivatives, self.output.shape, item.pairing)
        if layout != torch.strided:
            raise VJPUsageError(f"r.jacobian(name, layout=...) takes torch.strided (dense) or "
                                f"torch.sparse_csr, not {layout}.")
        size = self.output.numel() * item.numel()
        budget = self.memory_budget or memory.resolve_budget(None, self.output.device)
        sparse = item.sparse is not None
        memory.refuse_if_over(
            size * item.derivatives.element_size(), budget, f"The full Jacobian of "
            f"{self.output_name} with respect to {name} ({size:,} entries)",
            advice=f"Use r.jacobian({name!r}, layout=torch.sparse_csr) (its "
            f"{item.sparse.nnz:,} nonzeros)" if sparse else "Use r.derivatives (the point "
            "structure keeps only what is non-zero) or r.jacobian_block(name, rows, cols) "
            "for a part of it",
        )
        shape = tuple(self.output.shape) + tuple(item.shape)
        if sparse:
            return item.sparse.matrix.to_dense().reshape(shape)
        rows = torch.arange(self.output.numel(), device=item.derivatives.device)
        cols = torch.arange(item.numel(), device=item.derivatives.device)
        return self.jacobian_block(name, rows, cols).reshape(shape)

    @no_subclass_code()  # x's shape read as torch's: no subclass's __torch_function__
    def jacobian_block(self, name: str, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """Entries J[rows, cols] of the flattened (m × n) Jacobian, without building all of it."""
        name = self.input_key(name)
        item = self.inputs[name]
        rows = _flat_indices(rows, self.output.numel(), "rows", self.output_name)
        cols = _flat_indices(cols, item.numel(), "cols", name)
        if item.sparse is not None:
            return csr_block(item.sparse.matrix, rows, cols)
        out_shape, in_shape = tuple(self.output.shape), tuple(item.shape)
        out_idx = unravelled(rows, out_shape)
        in_idx = unravelled(cols, in_shape)
        point_out = set(item.pairing.out_axes)
        comp_idx = [out_idx[a][:, None] for a in range(len(out_shape)) if a not in point_out]
        gather = tuple(comp_idx) + tuple(i[None, :] for i in in_idx)
        values = item.derivatives[gather] if gather else item.derivatives.reshape(1, 1)
        values = values.expand(len(rows), len(cols)).clone()
        same_point = torch.ones(values.shape, dtype=torch.bool, device=values.device)
        for pair in item.pairing:
            same_point &= out_idx[pair.out][:, None] == in_idx[pair.in_][None, :]
        # exactly 0 between different points (never -0, nor 0 × inf = NaN)
        return torch.where(same_point, values, torch.zeros((), dtype=values.dtype,
                                                           device=values.device))

    @no_subclass_code()  # x's shape read as torch's: no subclass's __torch_function__
    def dependency(self, name: str | None = None, out_axis: int = 0,
                   in_axis: int = 0) -> Dependency:
        """Which indices of the output along ``out_axis`` depend on which of input ``name``
        along ``in_axis`` (exact, read off the derivatives; no backward): ``.kind``,
        ``.witness`` (``.describe()``: ``y[1] ← x[0]``), ``.offsets``, ``.pattern``."""
        return from_result(self, self.input_name(name), out_axis, in_axis)


def _flat_indices(index, count: int, what: str, of: str) -> torch.Tensor:
    """``index`` (a tensor, list or range of flat row-major indices into ``of``'s ``count``
    entries) as a 1-D int64 tensor; a usage error where it is not one or leaves the range."""
    try:  # (a list on the CPU, whatever default device the user set: meta has no values)
        flat = index.reshape(-1) if isinstance(index, torch.Tensor) else \
            torch.as_tensor(index, device="cpu").reshape(-1)
    except (TypeError, ValueError, RuntimeError):
        flat = None
    if flat is None or flat.is_floating_point() or flat.is_complex() or flat.dtype == torch.bool:
        raise VJPUsageError(f"{what} are flat (row-major) indices into {of}'s {count:,} entries, "
                            f"a tensor or list of ints: torch.arange({min(count, 3)}).")
    low, high = (int(flat.min()), int(flat.max())) if flat.numel() else (0, 0)
    if flat.numel() and (low < 0 or high >= count):
        raise VJPUsageError(f"{what} are flat (row-major) indices into {of}'s {count:,} "
                            f"entries, 0 to {count - 1:,}: {low if low < 0 else high:,} is not.")
    return flat.long()
