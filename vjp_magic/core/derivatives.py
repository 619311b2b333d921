"""Derivatives: vector-Jacobian products, batched, chunked to a memory budget.

Every pass is autograd's engine with ``retain_graph=True`` and nothing accumulated (as
``torch.autograd.grad`` runs it), so ``x.grad`` is never touched and the graph stays usable
for the user's next cell.
"""
from __future__ import annotations

import itertools
import math
import sys
import time
import warnings
from collections.abc import Sequence

import torch
from torch.autograd.variable import Variable
from torch.overrides import has_torch_function

from .pass_guard import pass_guard
from .retained import cleared, plain_pass
from .torch_api import TorchError, guarded_grad, materialized_grad, strided, torch_error
from .vectorising import Payoff

# Intermediate buffers of a batched backward are a few times the size of its grad_outputs.
_WORKSPACE_FACTOR = 4


def one_hot_gradients(
    output_shape: torch.Size,
    point_out_axes: Sequence[int],
    start: int,
    stop: int,
    dtype: torch.dtype,
    device: torch.device,
) -> torch.Tensor:
    """Gradient arguments ``start:stop`` (row-major over the non-point output axes), stacked.

    Each is shaped like the output: 1 on the component it selects, for every point at once.
    """
    count = stop - start
    if not point_out_axes:  # (the common case, without the shapes' bookkeeping)
        total = math.prod(output_shape)
        if start == 0:  # one call: the identity's first rows
            return torch.eye(count, total, dtype=dtype, device=device).view(count, *output_shape)
        selector = torch.zeros(count, total, dtype=dtype, device=device)
        selector.diagonal(start).fill_(1)  # row i selects entry start + i
        return selector.view(count, *output_shape)
    component_axes = [a for a in range(len(output_shape)) if a not in point_out_axes]
    component_shape = [output_shape[a] for a in component_axes]
    selector = torch.zeros(count, math.prod(component_shape), dtype=dtype, device=device)
    selector.diagonal(start).fill_(1)  # row i selects component start + i
    view_shape = [count] + [
        output_shape[a] if a in component_axes else 1 for a in range(len(output_shape))
    ]
    return selector.view(view_shape).expand(count, *output_shape)


_MEMORY_ERRORS = ("out of memory", "can't allocate memory")  # CUDA's, the CPU allocator's


class Batching:
    """What the batched backward passes of one computation learned (:func:`vjp_batch`'s
    ``log``): the vectorised methods still worth trying (one that failed for a reason other
    than memory is not tried again on the next chunk: its error would be the same), and
    whether the last call's VJPs came from one of them (``vectorised``) or plain passes;
    ``vectorised_batches`` and ``checked_sizes``: how many vectorised batches
    :func:`.checked_batches.verified` has seen, and the batch sizes it has checked."""

    def __init__(self) -> None:
        self.methods = [_vmap_grad, _legacy_batched_grad]
        self.vectorised = False
        self.vectorised_batches = 0
        self.checked_sizes: set[int] = set()

    def new_set(self) -> None:
        """The next batches ask about other vectors (a group test's next round): its first
        vectorised batch is checked again, then the 2nd, 4th …"""
        self.vectorised_batches = 0
        self.checked_sizes.clear()


def vjp_batch(
    output: torch.Tensor,
    inputs: Sequence[torch.Tensor],
    grad_outputs: torch.Tensor,
    batched: bool = True,
    log: Batching | None = None,
) -> list[torch.Tensor]:
    """vᵀJ for each ``v`` in ``grad_outputs`` (leading batch axis), for every input.

    Tries one vectorised backward — ``torch.func.vmap`` over ``autograd.grad`` (fast batching
    rules), then the older ``is_grads_batched`` — and falls back to a loop for operations
    that cannot be batched. Inputs the output does not reach get zeros. ``log`` (a
    :class:`Batching` shared by the chunks of one computation) records what happened.
    """
    log = Batching() if log is None else log
    log.vectorised = False
    if batched and grad_outputs.shape[0] > 1:
        for method in list(log.methods):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    try:
                        grads = method(output, inputs, grad_outputs)
                    finally:  # no vmap BatchedTensor left in a retain_grad tensor's .grad
                        cleared("grads" in locals(), output, inputs)
                log.vectorised = True
                return grads
            except (RuntimeError, NotImplementedError, ValueError, TypeError) as error:
                if torch_error(error) is TorchError.SECOND_PASS:
                    raise
                if not any(text in str(error) for text in _MEMORY_ERRORS):
                    log.methods.remove(method)  # (out of memory: a smaller chunk may fit)
    return _looped_grad(output, inputs, grad_outputs)


class PaidBatches:
    """:func:`vjp_batch` for the batched passes of one computation outside
    :func:`component_vjps` (a pattern's probes, a sparse Hessian's products and checks),
    vectorised only while that pays (:meth:`.vectorising.Payoff.pays`): the first batch's first
    vector goes through a plain pass, timed (a vector computed like any other: no extra
    pass); each vectorised batch after it is timed against it, and once one is slower per
    vector, the rest are plain passes (``index_put`` under ``vmap`` has no batching rule:
    its fallback made a permutation's Hessian pattern 20× slower than plain passes)."""

    def __init__(self) -> None:
        self.payoff, self.log = Payoff(()), Batching()

    def __call__(self, output: torch.Tensor, inputs: Sequence[torch.Tensor],
                 grad_outputs: torch.Tensor) -> list[torch.Tensor]:
        if len(grad_outputs) < 2 or not self.log.methods:
            return vjp_batch(output, inputs, grad_outputs, batched=bool(self.log.methods))
        if self.payoff.plain is None:  # the first vector, plain and timed
            began = time.process_time()
            head = vjp_batch(output, inputs, grad_outputs[:1], batched=False)
            self.payoff.timed(1, time.process_time() - began, False)
            rest = self(output, inputs, grad_outputs[1:])
            return [torch.cat(pair) for pair in zip(head, rest)]
        began = time.process_time()
        grads = vjp_batch(output, inputs, grad_outputs, log=self.log)
        if self.log.vectorised and not self.payoff.pays(len(grad_outputs),
                                                        time.process_time() - began):
            self.log.methods.clear()  # plain passes were faster here: the rest are plain
        return grads


def _vmap_grad(output, inputs, grad_outputs) -> list[torch.Tensor]:
    """``torch.func.vmap`` over one ``autograd.grad``: through torch's own vmap primitives
    where this torch has them (what ``vmap`` does once it has flattened its arguments, without
    that Python work), else through ``torch.func.vmap`` itself."""
    def one(v):
        return _grad(output, inputs, v)

    if _VMAP is None:
        return list(torch.func.vmap(one)(grad_outputs))
    increment, decrement, add_batch_dim, remove_batch_dim, load = _VMAP
    if not _LOADED:  # vmap's batching rules written in Python, registered on first use
        load()
        if getattr(sys.modules.get(load.__module__), "DECOMPOSITIONS_LOADED", False):
            _LOADED.append(True)  # (torch's own flag: loaded for good, not asked again)
    batch = grad_outputs.shape[0]
    level = increment(batch, "error")  # torch.func.vmap's default randomness
    try:
        grads = one(add_batch_dim(grad_outputs, 0, level))
        return [remove_batch_dim(g, level, batch, 0) for g in grads]
    finally:
        decrement()


def _vmap_primitives() -> tuple | None:
    """``torch.func.vmap``'s primitives (nesting level, batch dimension in and out, the lazy
    decompositions), or None where this torch does not have them under these names."""
    try:
        from torch._C import _functorch
        from torch._functorch.vmap import lazy_load_decompositions

        return (_functorch._vmap_increment_nesting, _functorch._vmap_decrement_nesting,
                _functorch._add_batch_dim, _functorch._remove_batch_dim,
                lazy_load_decompositions)
    except (ImportError, AttributeError):
        return None


_VMAP = _vmap_primitives()
_LOADED: list = []  # non-empty once torch says the lazy decompositions are loaded


def _legacy_batched_grad(output, inputs, grad_outputs) -> list[torch.Tensor]:
    # not materialize_grads: with is_grads_batched its zeros would lack the batch axis
    grads = guarded_grad(
        [output], list(inputs), [grad_outputs], retain_graph=True, allow_unused=True,
        is_grads_batched=True,
    )
    return _fill_unused(grads, inputs, grad_outputs.shape[0])


def _looped_grad(output, inputs, grad_outputs) -> list[torch.Tensor]:
    rows = [plain_vjp(output, inputs, v) for v in grad_outputs]
    if not rows:
        return [t.new_zeros((0,) + tuple(t.shape)) for t in inputs]
    return [column[0].unsqueeze(0) if len(column) == 1 else torch.stack(column)
            for column in zip(*rows)]


def _fill_unused(grads, inputs, batch: int) -> list[torch.Tensor]:
    return [
        g if g is not None else tensor.new_zeros((batch,) + tuple(tensor.shape))
        for g, tensor in zip(grads, inputs)
    ]


def plain_vjp(output: torch.Tensor, inputs: Sequence[torch.Tensor],
              vector: torch.Tensor) -> list[torch.Tensor]:
    """vᵀJ for one ``vector``, from one plain backward (zeros for inputs not reached). A view
    (a row of a stacked batch) is handed over as a tensor of its own: a backward that reads
    its gradient with ``as_strided`` (``as_strided_scatter``'s) reads from the storage's
    start, whatever the view's offset, and would take another row's values."""
    if vector._base is not None:
        vector = vector.clone()
    grads = _grad(output, inputs, vector)
    plain_pass(output, inputs)  # (a vectorised pass before it needs no pass of zeros)
    return grads


def _grad(output: torch.Tensor, inputs: Sequence[torch.Tensor],
          vector: torch.Tensor) -> list[torch.Tensor]:
    """``materialized_grad([output], inputs, [vector], retain_graph=True)``: the engine's pass
    itself, without ``autograd.grad``'s Python checks of gradient arguments (``vector`` is the
    analysis's own, shaped and typed like the output), which cost about as much as a small
    graph's backward; tensors with a ``__torch_function__`` go through ``autograd.grad``."""
    if has_torch_function((output, *inputs)):
        return list(materialized_grad([output], list(inputs), [vector], retain_graph=True))
    engine = Variable._execution_engine  # the one autograd.grad would hand the pass to
    grads = pass_guard().run_backward(engine, ((output,), (vector,), True, False, tuple(inputs)),
                                      {"allow_unreachable": True, "accumulate_grad": False})
    return [torch.zeros_like(t) if g is None else g for g, t in zip(strided(grads), inputs)]


# Up to this many gradient arguments, plain backward passes one by one: about as fast as a
# batched one, and nothing a batching rule could get wrong.
LOOP_COMPONENTS = 4
# One batched backward is sized to take about this long, so an interrupt (Ctrl-C) is answered
# between two of them within about half a second.
CHUNK_SECONDS = 0.2
FIRST_CHUNK = 16


_pass_seconds: dict[tuple, float] = {}  # a graph's fingerprint → one plain backward's time


def pass_key(output: torch.Tensor, inputs: Sequence[torch.Tensor], workspace: int) -> tuple:
    """A graph's fingerprint for :func:`remembered_seconds`: the output's node, shape, dtype
    and device, the inputs' shapes, and the bytes of the graph's tensors."""
    return (type(output.grad_fn), output.shape, output.dtype, output.device,
            tuple(t.shape for t in inputs), workspace)


def remembered_seconds(key: tuple) -> float | None:
    """How long one plain backward took on the last analysed graph with this fingerprint
    (:func:`pass_key`), else None: a re-run cell's first batched chunk is sized by it
    without a plain pass made only to time it. (It sizes chunks only, never a result.)"""
    return _pass_seconds.get(key)


def remember_seconds(key: tuple, seconds: float | None) -> None:
    if seconds is not None:
        if len(_pass_seconds) >= 64:
            _pass_seconds.clear()
        _pass_seconds[key] = seconds


def chunk_size(output: torch.Tensor, inputs: Sequence[torch.Tensor], budget: int,
               workspace: int = 0) -> int:
    """How many gradient arguments one batched backward may take within ``budget`` bytes.

    Each one needs its own copy of every gradient flowing through the graph (``workspace``:
    the bytes of all the graph's tensors, activations included), of the output and of the
    results.
    """
    size = max(output.element_size(), 4)
    per_vector = max(workspace, output.numel() * _WORKSPACE_FACTOR * size) + \
        sum(t.numel() for t in inputs) * size
    return max(1, budget // max(per_vector, 1))


def gradient_batch(
    output: torch.Tensor, point_out_axes: Sequence[int], start: int, stop: int
) -> torch.Tensor:
    """One-hot gradient arguments ``start:stop``, stacked, made afresh for every pass: a
    backward may write into the gradient it is handed (``as_strided_scatter``'s does), so a
    batch kept for the next pass could come back altered (the Jacobian then wrong)."""
    return one_hot_gradients(output.shape, point_out_axes, start, stop, output.dtype,
                             output.device)


def component_vjps(
    output: torch.Tensor,
    inputs: Sequence[torch.Tensor],
    point_out_axes: Sequence[int],
    budget: int,
    batched: bool = True,
    max_chunk: int | None = None,
    workspace: int = 0,
    first: int | None = None,
    seconds: float | None = None,
    key: tuple | None = None,
) -> tuple[list[torch.Tensor], list[tuple[int, int]]]:
    """One VJP per non-point output component, for every input, in budget-sized batches:
    each backward serves all ``inputs`` at once.

    Returns ``(stacked, vectorised)``: ``stacked[i]`` has shape ``(K,) + inputs[i].shape``;
    ``vectorised`` lists the components ``(start, stop)`` a vectorised backward computed
    (the caller checks them against a plain one, and may compute them again with
    :func:`plain_components`); empty (false) when every one came from a plain backward.
    Batches grow to about :data:`CHUNK_SECONDS` each, from ``first`` vectors (default
    :data:`FIRST_CHUNK`). Where plain passes are heavy (``seconds``: one plain pass's time,
    if known), vectorising goes on only if it pays (:class:`.vectorising.Payoff`). ``key``:
    the graph's :func:`pass_key` with these ``inputs``, where the caller has it already.
    """
    count = math.prod(output.shape[a] for a in range(output.dim()) if a not in point_out_axes)
    batched = batched and count > LOOP_COMPONENTS
    limit = chunk_size(output, inputs, budget, workspace)
    if max_chunk is not None:
        limit = min(limit, max_chunk)
    log, vectorised = Batching(), []
    payoff = Payoff(key or pass_key(output, inputs, workspace), seconds)
    batched = batched and payoff.worth_trying()

    def part(start: int, stop: int, timed: bool = True) -> list[torch.Tensor]:
        began = time.process_time() if timed else 0.0
        grads = vjp_batch(output, inputs, gradient_batch(output, point_out_axes, start, stop),
                          batched=batched, log=log)
        if log.vectorised:
            vectorised.append((start, stop))
        if timed and not payoff.timed(stop - start, time.process_time() - began,
                                      log.vectorised):
            log.methods.clear()  # plain passes were faster here: the rest are plain
        return grads

    def run(start: int, stop: int) -> list[torch.Tensor]:
        cut = payoff.cut(start, stop, batched and bool(log.methods) and stop - start > 1)
        if cut == stop:
            return part(start, stop)
        return [torch.cat(pair) for pair in zip(part(start, cut), part(cut, stop))]

    first = payoff.first(first or FIRST_CHUNK) if batched else limit
    if batched and key is not None and first < min(count, limit):
        first, run = 1, _first_timed(run, key)  # chunks sized by no time or a remembered one
    if 0 < count <= min(limit, first):  # one chunk holds them all: no chunks to size
        # (nothing timed yet, so no trial to cut, and no later chunk a time could judge: the
        # CPU clock, a system call summing every thread's time, is not read)
        return part(0, count, timed=False), vectorised
    stacked = in_chunks(run, count, limit, first=first)
    return stacked, vectorised


def _first_timed(run, key: tuple):
    """``run`` whose first chunk, (0, 1), is one plain pass computing a component like any
    other, timed and remembered under ``key``: where chunks are sized by no time or a
    remembered one (a run that makes no probe, as on a graph trusted to batch right, times no
    plain pass of its own), the next run's are sized by a time of this run's (a load spike
    remembered once chunks one run only)."""
    def timed(start: int, stop: int) -> list[torch.Tensor]:
        began = time.perf_counter()
        grads = run(start, stop)
        if (start, stop) == (0, 1):
            remember_seconds(key, time.perf_counter() - began)
        return grads
    return timed


def plain_components(output: torch.Tensor, inputs: Sequence[torch.Tensor],
                     point_out_axes: Sequence[int], start: int, stop: int) -> list[torch.Tensor]:
    """Components ``start:stop`` of :func:`component_vjps`, from plain backward passes."""
    return vjp_batch(output, inputs, gradient_batch(output, point_out_axes, start, stop),
                     batched=False)


def in_chunks(run, count: int, limit: int, first: int = FIRST_CHUNK) -> list[torch.Tensor]:
    """``run(start, stop)`` (a list of stacked results) over ``0:count``, concatenated.

    Chunks hold at most ``limit`` vectors and grow or shrink to take about
    :data:`CHUNK_SECONDS` each, so an interrupt is answered between two of them.
    """
    parts: list[list[torch.Tensor]] = []
    start, step = 0, max(1, min(limit, first))
    while start < count:
        stop = min(count, start + step)
        began = time.perf_counter()
        results = run(start, stop)
        elapsed = time.perf_counter() - began
        parts = parts or [[] for _ in results]
        for part, result in zip(parts, results):
            part.append(result)
        step = max(1, min(limit, int((stop - start) * CHUNK_SECONDS / max(elapsed, 1e-6))))
        start = stop
    return [torch.cat(part) if len(part) > 1 else part[0] for part in parts]


def forward_jacobian(
    output: torch.Tensor, tensor: torch.Tensor, batched: bool = True
) -> torch.Tensor:
    """The full Jacobian column by column (forward mode), for outputs much larger than inputs.

    Only the graph is at hand, not the function, so JVPs come from the double-backward trick:
    g(v) = vᵀJ is linear in v, and the VJP of g with a basis vector u is J u. That costs one
    backward with ``create_graph`` plus n batched passes, instead of m reverse passes.
    Raises ``RuntimeError`` for graphs without double-backward support (callers fall back).
    """
    v = torch.zeros_like(output, requires_grad=True)
    (g,) = guarded_grad(
        [output], [tensor], [v], retain_graph=True, create_graph=True, allow_unused=True,
    )
    m, n = output.numel(), tensor.numel()
    # None: the output does not reach the input; no graph: vᵀJ does not depend on v
    if g is None or not g.requires_grad:
        return tensor.new_zeros(tuple(output.shape) + tuple(tensor.shape))
    basis = torch.eye(n, dtype=tensor.dtype, device=tensor.device).reshape(
        (n,) + tuple(tensor.shape))
    from .checked_batches import checked_batch  # (it builds on this module)

    log = Batching()  # vectorised double backward checked as every batch outside components
    (columns,) = in_chunks(  # (n,) + output.shape: J u_j
        lambda start, stop: checked_batch(g, [v], basis[start:stop], batched=batched, log=log),
        n, n)
    return columns.reshape(n, m).T.reshape(tuple(output.shape) + tuple(tensor.shape))


# Points whose own entries number more than this get no forward-mode passes (one per entry).
FORWARD_PER_POINT = 64


def forward_at_points(output: torch.Tensor, x: torch.Tensor, pairing,
                      graph: bool = False) -> torch.Tensor | None:
    """The derivatives at points (component shape + x.shape, as ``r.derivatives``) by forward
    mode: one J·u per entry q of a point, u = 1 at entry q of every point (so, the points
    being independent, (J·u)[c, p] is d y[c, p] / d x[p, q]), each by double backward on the
    graph (no function at hand). None where a point has over :data:`FORWARD_PER_POINT`
    entries or the graph has no double backward. Only for a PROVED pairing: a dependence
    across points would sum into J·u unseen.

    Reverse mode sends v = 0 into every other component's branch, where an infinite local
    derivative makes 0·∞ = NaN (stack([1/x, 5x]) at 0: f_2'(0) NaN); forward mode carries
    x's tangent, so the two read NaN together only where the derivative is. ``graph``: the
    result keeps a graph (forward mode of it again gives second derivatives at the points,
    with no 0·∞ of another component's branch either)."""
    paired = dict(zip(pairing.in_axes, pairing.out_axes))  # x's point axis → output's
    free = [b for b in range(x.dim()) if b not in paired]
    count = math.prod(x.shape[b] for b in free)
    if count > FORWARD_PER_POINT:
        return None
    comp_axes = [a for a in range(output.dim()) if a not in set(pairing.out_axes)]
    points = sorted(paired)
    order = comp_axes + [paired[b] for b in points]
    try:
        v = torch.zeros_like(output, requires_grad=True)
        (g,) = guarded_grad([output], [x], [v], retain_graph=True, create_graph=True,
                            allow_unused=True)
        if g is None or not g.requires_grad:
            return None
        columns = []
        for q in itertools.product(*(range(x.shape[b]) for b in free)):
            u = torch.zeros_like(x)
            u[tuple(q[free.index(b)] if b in free else slice(None)
                    for b in range(x.dim()))] = 1
            (ju,) = guarded_grad([g], [v], [u], retain_graph=True, create_graph=graph)
            columns.append((ju if graph else ju.detach()).permute(order))
    except (RuntimeError, NotImplementedError) as error:
        if torch_error(error) is TorchError.SECOND_PASS:
            raise
        return None
    nc = len(comp_axes)
    held = torch.stack(columns, -1).reshape(columns[0].shape + tuple(x.shape[b] for b in free))
    at = points + free  # the x axes of ``held``, in this order after the components
    return held.permute(list(range(nc)) + [nc + at.index(b) for b in range(x.dim())])
