"""The graph the analysis differentiates: a copy of the cell's, rebuilt from its record, with
none of the user's hooks on it.

The analysis makes many backward passes of its own. On the cell's own graph each would run
the user's tensor hooks, module backward hooks, ``retain_grad`` and checkpointed blocks, and
add to the ``.grad`` of the leaves. :func:`analysed_graph` instead replays the cell's
recorded torch calls (:mod:`.replay`, at the recorded point: what autograd did not track is
a constant, random draws are the cell's own) on fresh leaves standing for the inputs. The
replay runs torch's operations only, never the user's Python: no hook, no module, no custom
``autograd.Function`` forward (a cell with one is differentiated on its own graph, and the
display says so). It is used only if it gives the cell's output values. Where the per-sample
rules ask for the layer tensors and no backward of the cell's own graph can run the user's
code (:func:`runs_no_user_code`, nothing written in place: :func:`unwritten`), that graph is
differentiated as it is, and no replay runs.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from ..core.errors import VJPUsageError
from ..core.graph_facts import raw_names, unpack_hooked
from ..core.marked import code, marked
from ..core.torch_api import multi_grad_hook_message
from ..core.result import with_tensor
from ..core.tagging import depends_on, walk_nodes
from .record import FunctionApply, outs_of, reads_of, tensors_in, version
from .steps import function_name
from ..core.validation import parameter_expression
from .replay import InputChanged, NotReplayable, aliases, build, close, distinct, one_tensor_names
from .refusals import NotReached, namespace_label

# Where a caller's interpreter keeps what it needs from the replay (the per-sample rules) and
# the cell's own graph is proved to run none of the user's code in a backward, that graph is
# differentiated as it is, with no replay. False: always the replay (the tests compare both).
OWN_GRAPH_WHEN_FREE = True


@dataclass(eq=False)
class AnalysedGraph:
    """An output and inputs to differentiate, standing for the user's ``output``/``inputs``.

    ``replayed``: a hook-free copy rebuilt from the record; ``proved_free``: the user's own
    graph, proved hook-free; else the user's own graph, and ``reason`` says why (None where
    nothing was recorded to rebuild from, or it was proved free)."""

    output: object
    inputs: dict
    replayed: bool = False
    reason: str | None = None
    hooks: list = field(default_factory=list)  # gradient hooks on the way, named (notes)
    inputs_changed: bool = False  # an input was changed in place after the cell used it
    interpreter: object = None  # what ran the replay where a caller asked for its own
    # the user's own graph, proved to run none of the user's code in a backward
    # (:func:`runs_no_user_code`): differentiated as it is, with no replay
    proved_free: bool = False

    @property
    def hook_free(self) -> bool:
        """Whether a backward of this graph runs none of the user's code (no hook,
        ``retain_grad``, custom backward or unpack hook): a replayed copy, or the cell's own
        graph proved so."""
        return self.replayed or self.proved_free

    def restore(self, result, user_output, user_inputs: dict):
        """``result`` (of the analysis on this graph) holding the user's tensors again, with
        a note where it ran on the user's own graph or an input has a gradient hook, after
        the notes on how the inputs were chosen (``user_inputs.notes``, where they were
        found rather than named: :class:`~.choose.ChosenInputs`)."""
        items = {name: with_tensor(item, user_inputs.get(name, item.tensor))
                 for name, item in result.inputs.items()}
        chosen = [n for n in getattr(user_inputs, "notes", ()) if n not in result.notes]
        chosen += [n for n in one_tensor_note(user_inputs) if n not in result.notes]
        notes = chosen + list(result.notes) + self.notes(result.output_name)
        return replace(result, output=user_output, inputs=items, notes=notes)

    def notes(self, output_name: str) -> list[str]:
        found = []
        if self.reason is not None:
            found.append(f"Computed on the user's own graph of {output_name}, because "
                          f"{self.reason}.")
        if self.hooks:
            which = ", ".join(self.hooks)
            shown = "autograd's, without the hooks" if self.replayed else \
                "computed through them (on the user's own graph, where only a hook written " \
                "in C, a builtin, can have run: a Python hook stops the analysis unrun): a " \
                "hook that changes a gradient changes them too"
            found.append(f"Gradient hooks on the way ({which}): a backward passes those "
                         f"gradients through them, and a hook may change them; the "
                         f"derivatives shown are {shown}.")
        return found


def analysed_graph(record, inputs: dict, output, namespace=None,
                   interpreter=None) -> AnalysedGraph:
    """A hook-free copy of ``output``'s graph rebuilt from ``record`` on fresh leaves for
    ``inputs`` (name → tensor); the user's own graph where that cannot be done faithfully.
    ``namespace`` names the hooked tensors the notes mention. ``interpreter``: replay ->
    an :class:`~.steps.Interpreter` computing the same values that keeps what its caller
    needs from this one replay (the per-layer rules' layer outputs), or None (a plain one);
    it is the graph's ``interpreter``. A user's own graph that ``torch.autograd.grad`` cannot
    run through (:func:`refuse_grad_only_hooks`) is refused with a usage error."""
    graph = _analysed_graph(record, inputs, output, namespace, interpreter)
    if not graph.replayed:
        refuse_grad_only_hooks(output, inputs)
    return graph


def refuse_grad_only_hooks(output, inputs: dict) -> None:
    """A :class:`VJPUsageError` where a leaf of ``output``'s graph carries a hook that
    ``torch.autograd.grad`` (every pass of the analysis) cannot run: one that asks the engine
    which nodes it will execute (``torch.autograd.graph.register_multi_grad_hook``, mode
    "all"), which PyTorch refuses for a leaf in such a pass. Read before any pass: no hook
    fires, no state changes."""
    if not isinstance(output, torch.Tensor) or output.grad_fn is None:
        return
    names = {id(t): name for name, t in inputs.items() if isinstance(t, torch.Tensor)}
    hooked = []
    for node in walk_nodes([output.grad_fn]):
        leaf = getattr(node, "variable", None)
        hooks = getattr(leaf, "_backward_hooks", None) if isinstance(leaf, torch.Tensor) \
            else None
        if hooks and any(_asks_the_engine(hook) for hook in hooks.values()):
            hooked.append(leaf)
    if not hooked:
        return
    named = [names[id(t)] for t in hooked if id(t) in names]  # the inputs first, then others
    named += [f"a tensor of shape {tuple(t.shape)} it was computed from" for t in hooked
              if id(t) not in names]
    raise VJPUsageError(multi_grad_hook_message(" and ".join(named), len(named) > 1))


def _asks_the_engine(hook) -> bool:
    """Whether ``hook`` calls ``torch._C._will_engine_execute_node`` (by its code's names)."""
    code = getattr(hook, "__code__", None)
    return code is not None and "_will_engine_execute_node" in code.co_names


def _analysed_graph(record, inputs: dict, output, namespace, interpreter) -> AnalysedGraph:
    hooks = gradient_hooks(record, inputs, output, namespace or {})
    if record is None or not isinstance(output, torch.Tensor) or output.grad_fn is None:
        return AnalysedGraph(output, inputs, hooks=hooks)
    try:
        _refuse_nested(inputs)
        fresh = fresh_leaves(inputs)
        replay = build(record, inputs, output, verify=False, at_point=True, user_code=False,
                       label=namespace_label(namespace))
        runner = interpreter(replay) if interpreter is not None else None
        if runner is not None and OWN_GRAPH_WHEN_FREE and not hooks and unwritten(record) \
                and runs_no_user_code(record, output, inputs) \
                and runner.take_recorded(record):  # no copy needed: the cell's own graph
            return AnalysedGraph(output, inputs, proved_free=True, interpreter=runner)
        with torch.enable_grad():
            value = replay.run(fresh, interpreter=runner)
    except NotReplayable as error:
        reason = str(error)
        if isinstance(error, NotReached) and not _reaches(output, inputs):
            return AnalysedGraph(output, inputs, hooks=hooks)  # no backward runs a node of it
        if isinstance(error, NotReached):  # the operations read give no other cause
            reason = "it was built outside what vjp_magic recorded: in a plain cell, or an " \
                "earlier one"
        return AnalysedGraph(output, inputs, reason=reason, hooks=hooks,
                             inputs_changed=isinstance(error, InputChanged))
    except Exception as error:  # noqa: BLE001 - any failure: the cell's own graph
        reason = f"replaying failed: {type(error).__name__}: {error}"
        return AnalysedGraph(output, inputs, reason=reason, hooks=hooks)
    if not isinstance(value, torch.Tensor) or value.shape != output.shape \
            or value.dtype != output.dtype or not _same(value.detach(), output.detach()):
        return AnalysedGraph(output, inputs, hooks=hooks, reason="a replay of its operations "
                             "gave other values (state the record does not show)")
    return AnalysedGraph(value, fresh, replayed=True, hooks=hooks, interpreter=runner)


def runs_no_user_code(record, output: torch.Tensor, inputs: dict) -> bool:
    """Whether no backward of ``output``'s graph toward ``inputs`` can run the user's code,
    proved from what was observed, reading attributes only (no pass, no hook). Called where
    the record's calls were found to make the whole graph (:func:`.replay.build`: nothing
    from outside the record, no tensor subclass with code of its own, no custom Function's
    forward). Every way the engine runs Python in a backward is ruled out:

    - a custom ``autograd.Function``'s backward, a module's backward hook
      (``BackwardHookFunctionBackward``), a reentrant checkpoint: every node is one of
      PyTorch's own C++ nodes, none a Python one;
    - an unpack hook of ``saved_tensors_hooks`` (``save_on_cpu``, a non-reentrant
      checkpoint's recompute): no tensor a node saved has one;
    - a tensor hook on a leaf (``register_hook``, ``register_multi_grad_hook``): no leaf of
      the graph has one (the leaves' grad accumulators are never run: every pass names its
      inputs, whose gradients the engine captures instead, without their node's hooks);
    - a hook on a tensor the cell made, ``retain_grad``, a hook on a node
      (``grad_fn.register_hook`` / ``register_prehook``, a module's non-full backward hook):
      the cell's graph is its own (made by its recorded calls), a node is reached only
      through a ``grad_fn`` read, and none was recorded, nor any ``register_hook`` or
      ``retain_grad`` call, nor a callable handed to a recorded call (code of the user's
      that would run inside it, unrecorded); no tensor the record made retains its
      gradient or holds a hook; and, where the record counts them (``hooks_registered``),
      no hook of any kind was registered while the cell ran (one registered with the
      recorder bypassed, under ``torch._C.DisableTorchFunction``, is counted too)."""
    if record is None or getattr(record, "failed", None) is not None \
            or getattr(record, "hooks_registered", None):  # any hook, recorded or not
        return False
    for call in record.calls:
        if function_name(call.func) in _HOOKING or isinstance(call.func, FunctionApply) \
                or _hands_code(call.args) or call.kwargs and _hands_code(call.kwargs.values()):
            return False
        for tensor in call.made if call.made is not None else tensors_in(call.result):
            if tensor.retains_grad or tensor._backward_hooks:
                return False
    if any(isinstance(t, torch.Tensor) and t._backward_hooks for t in inputs.values()):
        return False
    try:
        for node in walk_nodes([output.grad_fn]):
            kind = type(node)
            if isinstance(node, torch._C._FunctionBase) or kind.__module__ != "builtins":
                return False  # a Python node: a custom Function's backward
            leaf = getattr(node, "variable", None) if kind.__name__ == "AccumulateGrad" \
                else None
            if leaf is not None and leaf._backward_hooks:
                return False
            if any(unpack_hooked(getattr(node, name)) for name in raw_names(kind)):
                return False
    except RuntimeError:  # a saved value already freed by a backward: not read
        return False
    return True


def unwritten(record) -> bool:
    """Whether no tensor the cell's calls read or made was written in place, by a recorded
    call or since (each read tensor at the version it had at every read): a value one of
    its nodes saved may be such a tensor, and the cell's own graph could then not be
    differentiated, where a replay (its constants as they were) can."""
    for call in record.calls:
        if call.targets:
            return False
        for tensor in reads_of(call):
            if call.seen.get(id(tensor), (None,))[0] != version(tensor):
                return False
    return True


# Recorded calls that reach a node or put a hook on a tensor (property reads by their name)
_HOOKING = frozenset({"grad_fn", "_grad_fn", "register_hook", "retain_grad", "_backward_hooks",
                      "register_post_accumulate_grad_hook", "_post_accumulate_grad_hooks"})
_PLAIN = frozenset({torch.Tensor, torch.nn.Parameter, int, float, bool, str, type(None),
                    torch.dtype, torch.device, torch.Size})  # never callable


def _hands_code(values, depth: int = 0) -> bool:
    """Whether a recorded call's arguments (``values``) hold something callable (a function,
    a module), in lists, tuples and dicts among them too."""
    for value in values:
        kind = type(value)
        if kind in _PLAIN:
            continue
        if kind in (list, tuple) or isinstance(value, (list, tuple, dict)):
            items = value.values() if isinstance(value, dict) else value
            if depth >= 4 or _hands_code(items, depth + 1):
                return True  # (nested past 4 levels: not read, so not ruled out)
        elif not isinstance(value, (torch.Tensor, type)) and callable(value):
            return True
    return False


def gradient_hooks(record, inputs: dict, output, namespace) -> list[str]:
    """The tensors between ``output`` and the inputs whose gradient a hook may change, as the
    notes name them: inputs with ``register_hook`` hooks, tensors the cell hooked
    (``h.register_hook``, named from ``namespace`` where a name holds them), modules with
    backward hooks. One off the way (``z``'s hook where ``y = z**2`` and the input is ``x``)
    never runs in a backward toward the inputs: not named."""
    found = [name for name, t in inputs.items()
             if isinstance(t, torch.Tensor) and t._backward_hooks]
    if record is None or not isinstance(output, torch.Tensor):
        return found
    names = None  # the namespace's tensors by id, read once a hook is found
    for call in record.calls:
        name = getattr(call.func, "__name__", "")
        tensor = call.args[0] if call.args else None
        if name == "register_hook" and isinstance(tensor, torch.Tensor) \
                and all(tensor is not t for t in inputs.values()) \
                and _on_the_way(output, tensor, inputs):
            if names is None:
                names = {id(v): k for k, v in namespace.items() if isinstance(v, torch.Tensor)}
            found.append(names.get(id(tensor), f"a tensor of shape {tuple(tensor.shape)}"))
        elif name == "BackwardHookFunction.apply" and "a module's backward hook" not in found \
                and any(_on_the_way(output, t, inputs) for t in outs_of(call)):
            found.append("a module's backward hook")
    return list(dict.fromkeys(found))


def _on_the_way(output: torch.Tensor, tensor: torch.Tensor, inputs: dict) -> bool:
    """Whether a backward from ``output`` toward the inputs passes through ``tensor``."""
    return isinstance(tensor, torch.Tensor) and depends_on(output, tensor) and _reaches(
        tensor, inputs)


def _reaches(output: torch.Tensor, inputs: dict) -> bool:
    """Whether ``output``'s graph reaches an input (or is one): where none, a backward toward
    the inputs runs none of its nodes (nor their hooks), and the notes say nothing of it."""
    return any(isinstance(t, torch.Tensor) and depends_on(output, t) for t in inputs.values())


def _same(value: torch.Tensor, output: torch.Tensor) -> bool:
    """The copy's output against the cell's: bit for bit as a rule (the same operations on
    the same values), else equal up to rounding (:func:`.replay.close`)."""
    return bool(torch.equal(value, output)) or close(value, output)


def _refuse_nested(inputs: dict) -> None:
    """Fresh leaves stand for the inputs independently: an input computed from another one
    (``--wrt h x`` with ``h = 2*x``) needs the cell's own graph, through which ``x`` reaches
    the output also by way of ``h``."""
    for name, tensor in inputs.items():
        if isinstance(tensor, torch.Tensor) and tensor.grad_fn is not None:
            for other, value in inputs.items():
                if other != name and value is not tensor and depends_on(tensor, value):
                    raise NotReplayable(f"{name} is computed from {other}, another input")


def fresh_leaves(inputs: dict) -> dict:
    """name -> a fresh leaf for each input, one per tensor: names that hold one tensor
    (``b = a``; a layer's parameters under ``enc`` and ``dec.0``) get one leaf, as autograd
    sees one tensor, so that each name gets all its derivatives."""
    made = {name: _fresh_leaf(t) for name, t in distinct(inputs).items()}
    return {name: made[first] for name, first in aliases(inputs).items()}


def one_tensor_note(inputs: dict) -> list:
    """A note naming the inputs that are one tensor under several names (``--wrt a b`` with
    ``b = a``), where some are: each name has all that tensor's derivatives."""
    groups = [list(dict.fromkeys(code(parameter_expression(n)) for n in names))
              for names in one_tensor_names(inputs)]  # net.0.weight is net[0].weight
    if not groups:
        return []
    said = [_one_tensor(names) for names in groups]
    if len(groups) == 1:
        which = said[0]
    elif len(groups) == 2:
        which = f"{said[0]}, as are {said[1].removesuffix(' are one tensor')}" \
            if all(len(names) > 1 for names in groups) else f"{said[0]}; {said[1]}"
    else:
        which = f"{len(groups)} tensors have two names or more ({said[0]}; {said[1]}; …)"
    return [marked(f"{which}: each name gets all of its derivatives.")]


def _one_tensor(spelled: list) -> str:
    """``a`` and ``b`` are one tensor; ``net[0].weight`` is named twice (``--wrt net
    net[0].weight``: two names, one spelling)."""
    if len(spelled) == 1:
        return f"{spelled[0]} is named twice"
    return f"{', '.join(spelled[:-1])} and {spelled[-1]} are one tensor"


def _fresh_leaf(tensor):
    """A new leaf with ``tensor``'s values (its memory shared, never written): no hooks, no
    ``.grad``, nothing of the user's."""
    if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
        raise NotReplayable("an input is not a floating-point tensor")
    return tensor.detach().requires_grad_(tensor.requires_grad)


__all__ = ["AnalysedGraph", "analysed_graph"]
