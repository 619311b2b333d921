"""Graphs whose backward would run the user's code again: refused before any pass.

A node of the graph is *reentrant* when its backward runs a forward again and calls autograd
itself: ``torch.utils.checkpoint(..., use_reentrant=True)`` (``CheckpointFunctionBackward``
re-runs the checkpointed block, its module hooks included, and calls
``torch.autograd.backward``), or a custom ``autograd.Function`` whose backward enters
``enable_grad``, calls a module, ``torch.autograd.grad`` / ``backward``, the engine or a
``torch.func`` transform. Every pass of the analysis through such a node would run the user's
Python again and fire their hooks. :func:`refuse_reentrant` raises the short usage error
before any pass: a checkpoint by its node type; a custom Function whose backward (or a plain
function it calls, a few levels down) names one of those entry points through its globals
(``torch.autograd.grad``, ``ag.grad``, ``grad`` imported by name), else by calling its
backward once on zero gradients under :func:`reentrant_guard`, which stops it before any of
those entry points starts (``ctx.fn(...)``, ``getattr``, a method, ``functools.partial``, a
module). An ordinary custom backward (``2 * x * g``) is left alone.
"""
from __future__ import annotations

import contextlib
import functools
import sys
import threading
import types
from typing import NamedTuple

import torch

from .backward_writes import check as check_writes
from .backward_writes import keep_for, users_code
from .errors import AFTER_YOUR_CODE, VJPUsageError, where_advice
from .graph_facts import raw_saved, unpack_hooked
from .origin import torchs
from .pass_guard import _ARMED, _CHECKPOINT_FILE, _Guard, _entry_points, pass_guard, reentrant_guard
from .quiet import user_subclass
from .reach import class_attribute, function_of, globals_read, instance_dict, reached
from .tagging import walk_nodes

_DEPTH = 3  # how far the plain functions a backward calls are read


def reentrant_nodes(output) -> tuple[str, ...]:
    """The names of the reentrant nodes on ``output``'s graph (none for a non-tensor or a
    tensor without history). A custom Function not judged by its code has its backward called
    once on zeros, stopped before it could re-enter autograd; no node hook fires."""
    return _judged(output).reentrant


class _Judged(NamedTuple):
    """What one walk of a graph found (nodes read only: no backward, no hook, no unpack)."""

    reentrant: tuple[str, ...] = ()  # the reentrant nodes' names
    custom: bool = False  # a user's custom Function is on it
    unpack_hooks: frozenset = frozenset()  # the user's unpack hooks' code objects
    checkpointed: bool = False  # one of them recomputes a non-reentrant checkpoint
    dispatching: object = None  # the first __torch_dispatch__ subclass a node holds


def _judged(output, probe: bool = True) -> _Judged:
    """One walk of ``output``'s graph (:func:`_walked`): its custom Functions, the unpack
    hooks its saved tensors carry and the dispatching subclasses its nodes hold; then its
    reentrant nodes (``probe``: a node's backward probed on zeros, only where nothing it saved
    is hooked and no dispatching subclass is on the graph: the probe would run that code)."""
    if not isinstance(output, torch.Tensor) or output.grad_fn is None:
        return _Judged()
    facts, functions, hooked = _walked(output.grad_fn)
    if facts.dispatching is not None:
        return facts
    found = (node.name() for node in functions
             if _is_reentrant(node, probe=probe and id(node) not in hooked))
    return facts._replace(reentrant=tuple(dict.fromkeys(found)))


def _walked(root) -> tuple[_Judged, list, set]:
    """(the facts of one walk of the graph below ``root``, its custom Functions' nodes, the
    ids of the nodes whose saved tensors the user's code unpacks); inside
    :func:`judged_once`, the walk made once for ``root`` serves every judgement of it."""
    walks = getattr(_ONCE, "walks", None)
    if walks is not None and root in walks:
        return walks[root]
    functions, hooks, hooked, dispatching = [], set(), set(), None
    for node in walk_nodes([root]):
        if isinstance(node, torch.autograd.function.BackwardCFunction):
            functions.append(node)
        for saved in raw_saved(node):
            code = _users_hook(saved)
            if code is not None:
                hooks.add(code)
                hooked.add(id(node))
            data = saved.data
            if dispatching is None and type(data) is not torch.Tensor \
                    and user_subclass(data) == "__torch_dispatch__":
                dispatching = data
        if dispatching is None and hasattr(node, "__dict__"):  # a custom Function's ctx:
            dispatching = _dispatching(reached(instance_dict(node).values(), depth=1))
    custom = any(not _pytorch_own(getattr(node, "_forward_cls", type)) for node in functions)
    checkpointed = any(c.co_filename.endswith(_CHECKPOINT_FILE) for c in hooks)
    walked = (_Judged((), custom, frozenset(hooks), checkpointed, dispatching), functions,
              hooked)
    if walks is not None:
        walks[root] = walked  # (the root kept by the key: no id reused while it lasts)
    return walked


_ONCE = threading.local()


@contextlib.contextmanager
def judged_once():
    """Within it, one walk of a graph serves all its judgements (:func:`refuse_recomputing`
    as the output is read, :func:`refuse_reentrant` after the inputs are): for the start of
    one entry point's call, before any pass (nothing the walk reads changes in between:
    the graph below a node, what its nodes saved and their hooks; a custom Function is
    still probed by each judgement that probes). Nested: the outer one's walks are kept."""
    if getattr(_ONCE, "walks", None) is not None:
        yield
        return
    _ONCE.walks = {}
    try:
        yield
    finally:
        _ONCE.walks = None


def unpacks_users_code(nodes) -> bool:
    """Whether any of ``nodes`` saved a tensor the user's code unpacks (a non-reentrant
    checkpoint's block, their ``saved_tensors_hooks``): every pass through it runs that code."""
    return any(_users_hook(saved) is not None for node in nodes for saved in raw_saved(node))


def _users_hook(saved) -> types.CodeType | None:
    """The code of the user's unpack hook that the ``SavedTensor`` ``saved`` carries
    (:func:`.graph_facts.unpack_hooked`); None where it carries none, or PyTorch's own. A
    hook this torch does not show (``unpack_hooked`` fails closed) counts as the user's
    (:data:`_HIDDEN_HOOK`): the node is not probed, and a pass through it is armed for it."""
    if not unpack_hooked(saved):
        return None
    hook = getattr(saved, "unpack_hook", None)
    if hook is None:
        return _HIDDEN_HOOK
    code = _hook_code(hook)
    return code if code is not None and _users_code(code) else None


def _hidden_hook():
    """Stands for an unpack hook this torch does not show (:func:`_users_hook`)."""


_HIDDEN_HOOK = _hidden_hook.__code__


def _hook_code(hook) -> types.CodeType | None:
    """The code an unpack hook runs when called: a function's, a method's, a
    ``functools.partial``'s function's, a callable object's ``__call__``; None for a builtin."""
    for _ in range(8):
        if isinstance(hook, functools.partial):
            hook = hook.func
        elif hasattr(hook, "__func__"):  # (a bound method)
            hook = hook.__func__
        else:
            break
    code = getattr(hook, "__code__", None)
    if code is None and not isinstance(hook, (types.BuiltinFunctionType, type)):
        code = getattr(type(hook).__call__, "__code__", None) if callable(hook) else None
    return code if isinstance(code, types.CodeType) else None


def _users_code(code: types.CodeType) -> bool:
    """Whether an unpack hook's code is the user's: written outside PyTorch, or
    ``torch.utils.checkpoint``'s (it runs the checkpointed block again); PyTorch's own others
    (``save_on_cpu``: a copy back to the device) are not."""
    return code.co_filename.endswith(_CHECKPOINT_FILE) or not torchs(code.co_filename)


def _dispatching(values):
    """The first of ``values`` that is a tensor subclass with its own ``__torch_dispatch__``."""
    return next((v for v in values if user_subclass(v) == "__torch_dispatch__"), None)


def refuse_reentrant(output, output_name: str = "the output",
                     replay: str | None = None) -> None:
    """A :class:`VJPUsageError` where ``output``'s graph holds a reentrant node or a
    ``__torch_dispatch__`` subclass (behind a custom Function, in a node's saved tensors or
    its ``ctx``), before any pass on it: no forward runs again, no hook fires, no state
    changes. Arms :func:`pass_guard` for the passes on this graph: a custom Function's
    backward, and the user's unpack hooks (a non-reentrant checkpoint's recomputation, their
    ``saved_tensors_hooks``), which a replayed copy of the graph does not have; ``replay``:
    how the user has a replay made from where they are, for the refusals' advice."""
    with judged_once():
        _keep_writes(output)  # before the probe: it calls the user's backwards
        judged = _judged(output)
    _ARMED.custom, _ARMED.hooks, _ARMED.output_name, _ARMED.replay = \
        judged.custom, judged.unpack_hooks, output_name, replay
    if judged.dispatching is not None:
        raise VJPUsageError(dispatching_message(judged.dispatching, output_name))
    if not judged.reentrant:
        return
    if any(name == "CheckpointFunctionBackward" for name in judged.reentrant):
        raise VJPUsageError(checkpoint_message(output_name))
    raise VJPUsageError(function_message(judged.reentrant[0].removesuffix("Backward"),
                                         output_name))


def _keep_writes(output) -> None:
    """What the user's custom backwards on ``output``'s graph can write, copied
    (:func:`.backward_writes.keep_for`): none where no user's custom Function is on it."""
    if isinstance(output, torch.Tensor) and output.grad_fn is not None:
        facts, functions, _ = _walked(output.grad_fn)
        if facts.custom:
            keep_for(output, [node for node in functions if not _pytorch_own(
                getattr(node, "_forward_cls", type))])


def refuse_recomputing(output, output_name: str, replay: str | None) -> None:
    """A :class:`VJPUsageError` where ``output``'s graph, which the analysis would
    differentiate itself (nothing recorded to replay), carries the user's unpack hooks: every
    pass would run them (a non-reentrant checkpoint's block again). ``replay``: how the user
    has it recorded and replayed instead (None: no way). A reentrant node or a dispatching
    subclass is left to :func:`refuse_reentrant`'s words (no node is probed here)."""
    judged = _judged(output, probe=False)
    if judged.unpack_hooks and not judged.reentrant and judged.dispatching is None:
        raise VJPUsageError(hooked_message(output_name, judged.checkpointed, judged.custom,
                                           replay))


# the replay advice of sparse_jacobian and dependency, which record nothing themselves
GIVEN_GRAPH = ("sparse_jacobian and dependency differentiate the graph they are given: for its "
               "derivatives, pass vjp_magic.differentiate a function computing it "
               "(differentiate(lambda: f(x), x)), which is called once, recorded, and a replay "
               "of its operations differentiated")


def refuse_on_its_graph(output, output_name: str = "the output") -> None:
    """:func:`refuse_reentrant`, then :func:`refuse_recomputing`, before any pass: for an entry
    point that differentiates the graph it is given (``sparse_jacobian``, ``dependency``)."""
    refuse_reentrant(output, output_name, GIVEN_GRAPH)
    refuse_recomputing(output, output_name, GIVEN_GRAPH)


def hooked_message(output_name: str, checkpointed: bool, custom: bool,
                   replay: str | None) -> str:
    """The usage error for a graph whose saved tensors the user's code unpacks; ``custom``
    and ``replay``: what to do, from where the user is (:func:`~.errors.where_advice`)."""
    how = "torch.utils.checkpoint" if checkpointed else \
        "torch.autograd.graph.saved_tensors_hooks"
    why = ("each backward pass through it runs the checkpointed function again" if
           checkpointed else "each backward pass through it runs their unpack hook")
    advice = where_advice(f"compute it without {how}", custom, replay)
    return (f"{output_name} was computed through {how}: {why}, your code, and "
            f"{AFTER_YOUR_CODE}. {advice}.")


def dispatching_message(value, output_name: str) -> str:
    """The usage error for a ``__torch_dispatch__`` subclass in the middle of the graph."""
    kind = type(value).__name__
    article = "an" if kind[:1].lower() in "aeiou" else "a"
    return (f"{output_name} was computed through {article} {kind}, a tensor "
            "subclass with its own __torch_dispatch__, held by its graph (saved for a custom "
            "autograd.Function's backward): that code would run again in each of the "
            f"analysis's backward passes ({AFTER_YOUR_CODE}). "
            "Compute the output from plain torch.Tensor values to see its derivatives.")


def checkpoint_message(output_name: str) -> str:
    """The usage error for a reentrant ``torch.utils.checkpoint`` on the way."""
    return (f"{output_name} was computed through torch.utils.checkpoint with "
            "use_reentrant=True, which torch.autograd.grad (what vjp_magic differentiates "
            "with) does not support: pass use_reentrant=False to checkpoint.")


def function_message(function: str, output_name: str = "the output") -> str:
    """The usage error for a custom Function whose backward re-enters autograd."""
    return (f"{output_name} was computed through {function}, a custom autograd.Function whose "
            "backward calls autograd itself on a graph it rebuilds (as torch.utils.checkpoint "
            "with use_reentrant=True does), so each of vjp_magic's passes would run that code "
            "again: compute its backward from saved tensors without autograd, or checkpoint "
            "with use_reentrant=False.")


def _is_reentrant(node, probe: bool = True) -> bool:
    if not isinstance(node, torch.autograd.function.BackwardCFunction):
        return False
    cls = getattr(node, "_forward_cls", None)
    if not isinstance(cls, type):
        return False
    module = sys.modules.get("torch.utils.checkpoint")  # (not imported: none on any graph)
    checkpoint = getattr(module, "CheckpointFunction", None)
    if checkpoint is not None and issubclass(cls, checkpoint):
        return True
    if _pytorch_own(cls):  # (a module's hooks)
        return False
    if any(_calls_autograd(class_attribute(cls, name), _DEPTH, set())
           for name in ("backward", "vjp")):
        return True
    return probe and _probe(node)


def _pytorch_own(cls: type) -> bool:
    """Whether a custom Function class is PyTorch's own, running none of the user's code (a
    ``torch.library`` op's or functorch's Function runs the user's: :func:`users_code`)."""
    return not users_code(cls)[1]


def _probe(node) -> bool:
    """Whether ``node``'s backward, called once on zero gradients without grad mode, is
    stopped by :func:`reentrant_guard` (any other error: left to the passes)."""
    metadata = getattr(node, "_input_metadata", None)  # (older PyTorch: the passes' guard)
    if metadata is None or any(m.is_nested_tensor for m in metadata):
        return False
    zeros = [torch.zeros(tuple(m.shape), dtype=m.dtype, device=m.device) for m in metadata]
    guard = _Guard()
    try:
        with torch.no_grad(), guard:
            node.apply(*zeros)
    except Exception:  # noqa: BLE001 - the user's backward, on zeros: the passes judge it
        pass
    check_writes()  # what it wrote in place: put back, and refused by name
    return guard.tripped is not None


def _calls_autograd(function, depth: int, seen: set) -> bool:
    """Whether ``function`` (unwrapped; PyTorch's own ``Function`` defaults excluded), or a
    plain function it reaches through its globals, names an autograd entry point: a chain
    ``a.b.c`` of its bytecode that starts at a global and resolves to one (however aliased)."""
    function = function_of(function)  # (read from functions' own dicts: no user's code)
    while type(function) is types.FunctionType and "__wrapped__" in function.__dict__:
        function = function_of(function.__dict__["__wrapped__"])  # @once_differentiable
    if type(function) is not types.FunctionType or id(function.__code__) in seen \
            or function.__module__ == "torch.autograd.function":
        return False
    code = function.__code__
    seen.add(id(code))
    targets = _entry_points()
    for found in globals_read(code, function.__globals__, items=False):
        if any(found is target for target in targets):
            return True
        if depth > 0 and type(found) is types.FunctionType \
                and not str(found.__module__ or "").startswith("torch") \
                and _calls_autograd(found, depth - 1, seen):
            return True
    return False


__all__ = ["checkpoint_message", "dispatching_message", "function_message", "hooked_message",
           "judged_once", "pass_guard", "reentrant_guard", "reentrant_nodes", "refuse_on_its_graph",
           "refuse_recomputing", "refuse_reentrant", "unpacks_users_code"]
