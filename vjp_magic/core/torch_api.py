"""What the package takes from PyTorch by its words: error texts, and the real autograd.

PyTorch reports autograd mistakes as ``RuntimeError`` with a message and no error type, so
the package recognises them by text. Every text it matches is here (:class:`TorchError`) and
matched in one way (:func:`torch_error`); no other module writes PyTorch's words.

The real autograd entry points (``torch.autograd.grad`` and the engine that ``backward``
and ``grad`` hand their passes to) are captured once, at import: a cell may rebind
``torch.autograd.grad`` (or the guard wraps the engine while a cell runs), and the analysis
must still reach PyTorch's own functions.
"""
from __future__ import annotations

import re
from contextlib import contextmanager

import torch
from torch.autograd.variable import Variable

from .pass_guard import armed_advice, guarded
from .textenum import TextEnum

# -- the real functions, captured once ---------------------------------------------------------
autograd_grad = torch.autograd.grad
ENGINE = Variable._execution_engine  # what backward and autograd.grad hand their passes to


def guarded_grad(*args, **options) -> tuple:
    """:data:`autograd_grad` under :func:`.pass_guard.pass_guard`: the one way the analysis
    differentiates a graph that may be the user's (a custom backward that re-enters autograd
    on some gradients only, a hook of the user's: the usage error before it runs). The guard
    is armed around the engine's C call only (:func:`.pass_guard.guarded`)."""
    return strided(guarded(autograd_grad, *args, **options))


def strided(grads) -> tuple:
    """``grads`` with a sparse gradient of a dense tensor (``nn.Embedding(sparse=True)``'s,
    ``EmbeddingBag``'s, a custom backward's) made dense: what the analysis compares, stacks
    and shows is laid out as the input is."""
    if not any(g is not None and g.layout != torch.strided for g in grads):
        return tuple(grads)
    return tuple(g if g is None or g.layout == torch.strided else g.to_dense() for g in grads)


def materialized_grad(outputs, inputs, grad_outputs=None, **options) -> tuple:
    """``torch.autograd.grad`` with zeros, not None, for the inputs the outputs do not reach
    (``materialize_grads=True``). Without ``create_graph`` no gradient requires grad (older
    torch releases mark the zeros they fill in as requiring grad)."""
    grads = guarded_grad(outputs, inputs, grad_outputs, allow_unused=True,
                         materialize_grads=True, **options)
    if options.get("create_graph"):
        return grads
    return tuple(g.detach() if g.requires_grad and g.is_leaf else g for g in grads)


@contextmanager
def engine_wrapped(wrap):
    """While the block runs, autograd's passes go to ``wrap(engine)`` (the engine in place
    now); the engine is put back afterwards, whatever happens."""
    engine = Variable._execution_engine
    Variable._execution_engine = wrap(engine)
    try:
        yield
    finally:
        Variable._execution_engine = engine


# -- PyTorch's error texts ---------------------------------------------------------------------
class TorchError(TextEnum):
    """An autograd error PyTorch raises, by the part of its message that names it."""

    IMPLICIT_SCALAR = "grad can be implicitly created only for scalar outputs"
    SECOND_PASS = "backward through the graph a second time"
    GRADIENT_SHAPE = "Mismatch in shape"
    INPLACE = "modified by an inplace operation"
    # torch.utils.checkpoint(..., use_reentrant=True) refuses torch.autograd.grad
    REENTRANT_CHECKPOINT = "torch.utils.checkpoint is incompatible with .grad()"
    # a hook asking the engine which nodes run (register_multi_grad_hook) on a leaf
    GRAD_ONLY_HOOK = "_will_engine_execute_node but we are currently running autograd.grad()"
    # a custom Function's backward returned a gradient of another shape, layout or device
    INVALID_GRADIENT = "returned an invalid gradient"


def torch_error(error: BaseException | str) -> TorchError | None:
    """Which of PyTorch's autograd errors ``error`` (an exception or its text) is, else None."""
    if isinstance(error, BaseException) and not isinstance(error, RuntimeError):
        return None
    text = str(error)
    return next((kind for kind in TorchError if kind.value in text), None)


# backward/grad on a tensor with no graph (its inputs do not require grad, or .data cut it)
NO_GRAPH = "does not require grad and does not have a grad_fn"

# The full text of SECOND_PASS, raised by the guard as PyTorch would raise it.
FREED_MESSAGE = (
    "Trying to backward through the graph a second time (or directly access saved tensors "
    "after they have already been freed). Saved intermediate values of the graph are freed "
    "when you call .backward() or autograd.grad(). Specify retain_graph=True if you need to "
    "backward through the graph a second time or if you need to access saved tensors after "
    "calling backward."
)

_GRADIENT_POSITION = re.compile(r"grad_output\[(\d+)\]")
# An op without double backward ("the derivative for 'cdist' is not implemented"), and the
# node a backward marked @once_differentiable leaves in a create_graph pass.
NOT_TWICE_DIFFERENTIABLE = re.compile(r"derivative for '?(?:aten::)?([\w.]+)'? is not implemented")
ONCE_DIFFERENTIABLE_NODE = "torch::autograd::Error"


def once_differentiable_node(root):
    """The node a ``once_differentiable`` backward leaves in a create_graph pass's graph
    (``Error``; ``DelayedError`` too), reachable from ``root``, or None. Autograd skips it
    silently where it is cut off from what a pass differentiates, so it is looked for."""
    seen, stack = set(), [root]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if node.name() == ONCE_DIFFERENTIABLE_NODE or "Error" in type(node).__name__:
            return node
        stack.extend(next_node for next_node, _ in node.next_functions)
    return None


# What torch.compile's CompiledFunctionBackward (aot_autograd) raises in a double backward.
COMPILED_ONCE = "does not currently support double backward"

# A pass that needed a derivative of a backward PyTorch does not have: an op's ("the
# derivative for '_cdist_backward' is not implemented", "grid_sampler_3d double backward not
# implemented", "Double backward is unsupported"), a custom Function's marked
# once_differentiable ("trying to differentiate twice a function that was marked with
# @once_differentiable"), or a backward computed outside autograd (its gradient has no graph,
# or one the tensor differentiated by does not reach: "appears to not have been used"), or
# torch.compile'd code (COMPILED_ONCE).
_NO_DOUBLE_BACKWARD = re.compile(
    r"derivative for .* is not implemented|double backwards? (?:is )?(?:not |un)supported|"
    r"double backward not implemented|differentiate twice|appears to not have been used in "
    r"the graph|" + re.escape(COMPILED_ONCE) + "|" + re.escape(NO_GRAPH), re.I)


# what a pass needing a double backward raises where the graph has none (and other errors)
DOUBLE_BACKWARD_ERRORS = (RuntimeError, NotImplementedError)


def no_double_backward(error: BaseException) -> bool:
    """Whether ``error`` (one of :data:`DOUBLE_BACKWARD_ERRORS`) says a pass needed a
    derivative of a backward PyTorch does not have: a ``create_graph`` pass, or one through
    the graph it made (forward mode by double backward), meeting ``_cdist_backward``, a
    ``once_differentiable`` Function, a backward computed outside autograd. The paths that
    take a double backward as a shortcut (column passes, row checks, forward-mode NaN fills)
    then take the path that needs none; any other error (a freed graph, the user's mistake
    said by the entry point, out of memory, a bug of ours) is not that, and goes on up."""
    return isinstance(error, DOUBLE_BACKWARD_ERRORS) and \
        _NO_DOUBLE_BACKWARD.search(str(error)) is not None


def gradient_position(error: BaseException | str) -> int | None:
    """In a GRADIENT_SHAPE error ("grad_output[1] has a shape of ..."): which gradient."""
    match = _GRADIENT_POSITION.search(str(error))
    return int(match.group(1)) if match else None


def graph_usage_error(error: BaseException):
    """PyTorch's error when a live output's graph can no longer be differentiated (an input
    modified in place afterwards, a graph freed by a backward pass), as a
    :class:`.errors.VJPUsageError` saying what to do; None for any other error."""
    from .errors import VJPUsageError

    kind = torch_error(error)
    if kind is TorchError.INPLACE:
        return VJPUsageError("The output can no longer be differentiated: x (or a tensor it "
                             "was computed from) was modified in place afterwards. Compute "
                             "the output again after the update.")
    if kind is TorchError.SECOND_PASS:
        return VJPUsageError("The output's graph was freed by a backward pass without "
                             "retain_graph=True: compute the output again.")
    if kind is TorchError.GRAD_ONLY_HOOK:
        return VJPUsageError(multi_grad_hook_message())
    return None


def multi_grad_hook_message(which: str | None = None, several: bool = False) -> str:
    """The usage error for a leaf under ``torch.autograd.graph.register_multi_grad_hook``
    (``which``: the leaves, named; None: unnamed)."""
    carries = "carry" if several else "carries"
    advice = armed_advice("remove it first (handle.remove()) and register it again afterwards")
    return (f"{which or 'A leaf tensor the output was computed from'} {carries} a hook from "
            "torch.autograd.graph.register_multi_grad_hook, which torch.autograd.grad (what "
            f"vjp_magic differentiates with) cannot run through (PyTorch's limit). {advice}.")


__all__ = ["DOUBLE_BACKWARD_ERRORS", "ENGINE", "FREED_MESSAGE", "NOT_TWICE_DIFFERENTIABLE",
           "ONCE_DIFFERENTIABLE_NODE", "TorchError", "autograd_grad", "engine_wrapped",
           "gradient_position", "graph_usage_error", "guarded_grad", "materialized_grad",
           "multi_grad_hook_message", "no_double_backward", "once_differentiable_node",
           "strided", "torch_error"]
