"""``.grad`` of ``retain_grad()`` tensors, kept as a plain run leaves it.

Autograd runs a tensor's retains-grad hook on every backward pass through its node,
``torch.autograd.grad`` included, so the analysis's passes would add their vectors into the
``.grad`` of a tensor the user marked with ``retain_grad()`` (and a vectorised pass leaves a
vmap BatchedTensor there, on which the user's next backward raises). PyTorch lists no such
tensors, so :func:`grads_kept` looks for them where they can be found cheaply: the output,
the entry point's arguments and the locals and ``__main__`` globals of the frames on the stack
outside vjp_magic (and the lists, tuples, dicts, sets and ``nn.Module`` attributes in them, a
few levels deep), the young generations of the
garbage collector (tensors made recently: only until the collector has aged every object made
before the import), and a weak registry of every tensor marked with
``retain_grad()`` since vjp_magic was imported (``Tensor.retain_grad`` is wrapped, with the
same behaviour, to note it: so one kept by an old object no scan reaches, a dict in another
module or a closure, is found too); each found on the output's graph has its
``.grad`` put back afterwards. Objects are picked by their type (each distinct type
classified once, and remembered), well under 0.1 ms a call. A full ``gc.get_objects()``
scan is not made: it costs milliseconds with a loaded torch (about 170,000 objects), every
call. A retain_grad
tensor reachable only from an old object elsewhere is missed, but never left holding a
BatchedTensor: after vectorised passes, a plain pass through the same nodes (the probe the
analysis makes anyway, else one pass of zeros: right after them where no probe follows,
:func:`flush_now`, or on leaving) runs its hook, which raises on one; then every live
retain_grad tensor is looked at.
"""
from __future__ import annotations

import contextlib
import functools
import gc
import itertools
import sys
import threading
import weakref

import torch

from .graph_walk import walk
from .tagging import graph_leaves

_REGISTERED: weakref.WeakValueDictionary = weakref.WeakValueDictionary()  # id -> tensor


def _register_retain_grad() -> None:
    """Wrap ``torch.Tensor.retain_grad`` (once) so that each tensor it marks is noted in
    :data:`_REGISTERED`, weakly: PyTorch keeps no list of them and autograd's nodes do not
    show their retains-grad hooks. The call itself is torch's, unchanged."""
    original = torch.Tensor.retain_grad
    if getattr(original, "_vjp_magic_registers", False):
        return

    @functools.wraps(original)
    def retain_grad(self):
        result = super(torch.Tensor, self).retain_grad()  # torch's own (traceable by dynamo)
        if self.retains_grad:
            _REGISTERED[id(self)] = self
        return result

    retain_grad._vjp_magic_registers = True
    torch.Tensor.retain_grad = retain_grad


_register_retain_grad()
MAX_VISITED = 1_000  # objects looked at from the frames (about 0.1 ms at most)
DEPTH = 3  # container levels below a frame's variables
_STATE = threading.local()


def _is_batched(t) -> bool:
    check = getattr(getattr(torch._C, "_functorch", None), "is_batchedtensor", None)
    return bool(check is not None and isinstance(t, torch.Tensor) and check(t))


def _from_frames(found: dict, frame, given=()) -> None:
    """Breadth first from the frames' variables (and the objects ``given``, alongside them),
    at most :data:`MAX_VISITED` objects looked at (each container once)."""
    level: list = list(given)
    globals_seen: set[int] = set()
    while frame is not None:
        g, local = frame.f_globals, frame.f_locals  # 3.13: a proxy, not a dict
        main = g.get("__name__") == "__main__"
        if local is not g or not main:  # (__main__'s own frame: its globals, added once)
            level.extend(local.values())
        if main and id(g) not in globals_seen:
            globals_seen.add(id(g))
            level.extend(g.values())
        frame = frame.f_back
    seen: set[int] = set()
    budget = MAX_VISITED
    for _ in range(DEPTH + 1):
        level = level[:budget]
        budget -= len(level)
        tensors, sequences, mappings, modules = _split(level)
        for t in tensors:
            if t.retains_grad:
                found[id(t)] = t
        deeper: list = []
        for obj in itertools.chain(sequences, mappings, modules):
            if id(obj) not in seen and len(deeper) < budget:
                seen.add(id(obj))
                items = obj if isinstance(obj, _SEQUENCES) else \
                    obj.values() if isinstance(obj, dict) else vars(obj).values()
                deeper.extend(itertools.islice(items, budget - len(deeper)))
        if not deeper or budget <= 0:
            return
        level = deeper


# The C base class: a type is classified against it, never through torch.Tensor's Python
# __instancecheck__ (slow, and it touches deprecated objects, which warn, in a full scan).
_TENSOR_BASE = getattr(torch._C, "TensorBase", None) or torch._C._TensorBase
_SEQUENCES = (list, tuple, set, frozenset)


def _split(objects: list) -> tuple:
    """(tensors, sequences, mappings, modules) among ``objects``, by type: each distinct type
    is classified once and remembered (:data:`_KINDS`); many objects are picked at C speed
    (no Python step per object), a few by one loop. Modules: ``nn.Module`` instances, whose
    attributes (``self.h = h``, as activation-inspection code keeps a retain_grad tensor)
    are looked into."""
    kinds = list(map(type, objects))
    if len(_KINDS) >= 4096:  # (types made on the fly: the table stays small)
        _KINDS.clear()
    for kind in set(kinds).difference(_KINDS):
        _KINDS[kind] = 1 if issubclass(kind, _TENSOR_BASE) else \
            2 if issubclass(kind, _SEQUENCES) else 3 if issubclass(kind, dict) else \
            4 if issubclass(kind, torch.nn.Module) else 0
    if len(objects) > 64:
        picked: tuple[set, ...] = (set(), set(), set(), set(), set())
        for kind in set(kinds):
            picked[_KINDS[kind]].add(kind)
        return tuple(list(itertools.compress(objects, map(types.__contains__, kinds)))
                     if types else [] for types in picked[1:])
    lists: tuple[list, ...] = ([], [], [], [], [])
    for obj, code in zip(objects, map(_KINDS.__getitem__, kinds)):
        lists[code].append(obj)
    return lists[1:]


_KINDS: dict = {}  # type → 1 tensor, 2 sequence, 3 mapping, 4 module, 0 anything else


def _tensors(objects: list) -> list:
    """The tensors among ``objects`` (as :func:`_split`, tensors alone)."""
    kinds = list(map(type, objects))
    tensor_types = {kind for kind in set(kinds) if issubclass(kind, _TENSOR_BASE)}
    return list(itertools.compress(objects, map(tensor_types.__contains__, kinds)))


def _older_collections() -> int:
    """How many collections of the older generations (1 and 2) the garbage collector made."""
    return sum(stats.get("collections", 0) for stats in gc.get_stats()[1:])


# Once the collector has collected generation 1 or 2 after vjp_magic's import, every object
# made before it is old (a collection of generation i moves its survivors and all younger
# ones to generation i + 1, CPython up to 3.13): a young tensor was made since, and if marked,
# marked through the wrapped ``retain_grad`` (:data:`_REGISTERED` has it).
_OLD_AT = _older_collections() if sys.version_info < (3, 14) else None


_AGED = [False]  # once every object made before the import is old, it stays so


def _young() -> list:
    """The tensors among the young generations of the garbage collector (none to look at
    where every object made before the import is old: see :data:`_OLD_AT`)."""
    if _AGED[0] or _OLD_AT is not None and _older_collections() > _OLD_AT:
        _AGED[0] = True
        return []
    return _tensors(gc.get_objects(0) + gc.get_objects(1))


def retained(output: torch.Tensor, frame=None, given=()) -> list[torch.Tensor]:
    """The retain_grad tensors found (see the module's note; ``given``: objects looked at
    alongside the frames' variables) whose node is on ``output``'s graph."""
    found: dict[int, torch.Tensor] = {}
    if isinstance(output, torch.Tensor) and output.retains_grad:
        found[id(output)] = output
    _from_frames(found, frame if frame is not None else sys._getframe(1), given)
    for t in (list(_REGISTERED.values()) if _REGISTERED else []) + _young():
        if t.retains_grad:
            found[id(t)] = t
    if not found or not isinstance(output, torch.Tensor) or output.grad_fn is None:
        return []
    nodes = walk(output.grad_fn).members
    return [t for t in found.values() if t.grad_fn is not None and t.grad_fn in nodes]




_ESCAPED = "escaped from inside a function being vmapped"  # a BatchedTensor met outside vmap


def _every_retaining() -> list:
    """All live retain_grad tensors: a full gc scan (a few ms), only after a missed one."""
    return [t for t in _tensors(gc.get_objects()) if t.retains_grad]


def _flush(output: torch.Tensor) -> None:
    """After vectorised passes: one plain pass of zeros through ``output``'s graph. A
    retain_grad tensor not found and left holding a BatchedTensor makes its hook raise;
    then every live one is looked at (full scan) and none keeps a BatchedTensor."""
    from .derivatives import _grad  # (the engine's pass itself, guarded: it imports this)

    leaves = list(graph_leaves(output).values())
    try:
        if leaves:
            _grad(output, leaves, torch.zeros_like(output))
    except RuntimeError:
        _unbatch(_every_retaining())


def _unbatch(tensors) -> None:
    for t in tensors:
        if _is_batched(t.grad):
            t.grad = None


@contextlib.contextmanager
def grads_kept(output: torch.Tensor, everything: bool = False, given=(),
               reruns: bool = False):
    """Every retain_grad tensor found on ``output``'s graph (``everything``: all live ones)
    has its ``.grad`` (the same tensor object, or None) back on leaving; nested uses scan
    once; after vectorised passes none is left holding a vmap BatchedTensor (by a pass of
    zeros; after a Ctrl-C, by looking at every live one instead: no pass runs). The frames
    looked at start at the caller's first one outside vjp_magic (the package's own hold
    what the caller gave, ``given``, and objects of its own). ``reruns``: the caller makes
    the call again where a pass meets a BatchedTensor left in a tensor not found
    (:func:`keeps_retained_grads`; then :func:`flush_now` may pass before leaving)."""
    if getattr(_STATE, "depth", 0):
        yield
        return
    found = _every_retaining() if everything else \
        retained(output, _outside(sys._getframe(2)), given)
    kept = [(t, t.grad) for t in found]
    _STATE.depth, _STATE.kept, _STATE.pending = 1, [t for t, _ in kept], []
    _STATE.reruns = reruns
    interrupted = False
    try:
        yield
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        pending, _STATE.depth, _STATE.kept, _STATE.pending = _STATE.pending, 0, [], []
        _STATE.reruns = False
        if pending and interrupted:  # after a Ctrl-C, no pass runs the user's backward again
            _unbatch(_every_retaining())
        elif pending and isinstance(output, torch.Tensor) and output.grad_fn is not None:
            _flush(output)
        for t, grad in kept:
            t.grad = grad


def cleared(batched: bool = True, output=None, inputs=()) -> None:
    """After a vectorised pass inside :func:`grads_kept`: the found tensors' ``.grad`` None
    again, so the next pass's hook neither adds to it nor meets a vmap BatchedTensor there.
    ``batched``: the pass completed (a failed one is followed by plain passes, which raise
    on a BatchedTensor left in a tensor not found: the call is then made again); it stays
    pending (a pass of zeros on leaving) until :func:`plain_pass` reports a plain pass from
    the same ``output`` to at least the same ``inputs``."""
    if batched and getattr(_STATE, "depth", 0):
        _STATE.pending.append((output, {id(t) for t in inputs}))
    for t in getattr(_STATE, "kept", ()):
        t.grad = None


def flush_now(output, inputs) -> None:
    """The pass of zeros :func:`grads_kept` would make on leaving for the vectorised passes
    from ``output`` to ``inputs`` (none if no such pass is pending), made now, where no plain
    pass is to follow them: right after them the graph's tensors are still in the CPU's
    caches (the same pass made on leaving, after the rest of the analysis, took about twice
    as long). A retain_grad tensor not found and left holding a BatchedTensor makes its hook
    raise, as any plain pass after vectorised ones does: the call is made again with every
    live one kept. Only under the guard of an outermost :func:`keeps_retained_grads` (the one
    that makes the call again); under any other, the pass is made on leaving, as before."""
    ids = {id(t) for t in inputs}
    if not getattr(_STATE, "reruns", False) or not any(
            o is output and s <= ids for o, s in getattr(_STATE, "pending", ())):
        return  # (under a guard that makes no call again: the pass on leaving, as ever)
    from .derivatives import _grad  # (the engine's pass itself, guarded: it imports this)

    _grad(output, list(inputs), torch.zeros_like(output))
    plain_pass(output, inputs)


def plain_pass(output, inputs) -> None:
    """A plain backward from ``output`` to ``inputs`` completed: it ran every retains-grad
    hook the vectorised passes from ``output`` to those inputs (or fewer) ran, and a hook
    meeting a BatchedTensor left in a tensor not found would have raised; so those passes
    need no pass of zeros on leaving :func:`grads_kept`."""
    pending = getattr(_STATE, "pending", None)
    if pending:
        ids = {id(t) for t in inputs}
        _STATE.pending = [(o, s) for o, s in pending if o is not output or not s <= ids]


def _outside(frame):
    """The first frame at or above ``frame`` whose module is not vjp_magic's."""
    while frame is not None and frame.f_globals.get("__name__", "").startswith(_PACKAGE):
        frame = frame.f_back
    return frame


_PACKAGE = __name__.split(".")[0] + "."  # "vjp_magic."


def keeps_retained_grads(function):
    """Decorator for an entry point whose first argument is the output: :func:`grads_kept`;
    where a retain_grad tensor not found broke a pass (its BatchedTensor met outside vmap),
    the call is made again with every live one kept."""
    @functools.wraps(function)
    def wrapper(output, *args, **kwargs):
        outer = not getattr(_STATE, "depth", 0)
        try:
            with grads_kept(output, given=(*args, *kwargs.values()), reruns=outer):
                return function(output, *args, **kwargs)
        except RuntimeError as error:
            if not outer or _ESCAPED not in str(error):
                raise
        _unbatch(_every_retaining())
        with grads_kept(output, everything=True):
            return function(output, *args, **kwargs)
    return wrapper


__all__ = ["cleared", "flush_now", "grads_kept", "keeps_retained_grads", "plain_pass", "retained"]
