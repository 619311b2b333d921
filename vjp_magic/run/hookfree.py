"""The graph the analysis differentiates: a copy of the cell's, rebuilt from its record, with
none of the user's hooks on it.

The analysis makes many backward passes of its own. On the cell's own graph each would run
the user's tensor hooks, module backward hooks, ``retain_grad`` and checkpointed blocks, and
add to the ``.grad`` of the leaves. :func:`analysed_graph` instead replays the cell's
recorded torch calls (:mod:`.replay`, at the recorded point: what autograd did not track is
a constant, random draws are the cell's own) on fresh leaves standing for the inputs. The
replay runs torch's operations only, never the user's Python: no hook, no module, no custom
``autograd.Function`` forward (a cell with one is differentiated on its own graph, and the
display says so). It is used only if it gives the cell's output values.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from ..core.errors import VJPUsageError
from ..core.marked import code, marked
from ..core.torch_api import multi_grad_hook_message
from ..core.result import with_tensor
from ..core.tagging import depends_on, walk_nodes
from .record import outs_of
from ..core.validation import parameter_expression
from .replay import InputChanged, NotReplayable, aliases, build, close, distinct, one_tensor_names
from .refusals import NotReached


@dataclass(eq=False)
class AnalysedGraph:
    """An output and inputs to differentiate, standing for the user's ``output``/``inputs``.

    ``replayed``: a hook-free copy rebuilt from the record; else the user's own graph, and
    ``reason`` says why (None where nothing was recorded to rebuild from)."""

    output: object
    inputs: dict
    replayed: bool = False
    reason: str | None = None
    hooks: list = field(default_factory=list)  # gradient hooks on the way, named (notes)
    inputs_changed: bool = False  # an input was changed in place after the cell used it
    interpreter: object = None  # what ran the replay where a caller asked for its own

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
            found.append(f"Computed on the user's own graph of {output_name} ({self.reason}): "
                         "any hooks on it ran during the analysis.")
        if self.hooks:
            which = ", ".join(self.hooks)
            shown = "autograd's, without the hooks" if self.replayed else \
                "computed through them (on the user's own graph): a hook that changes a " \
                "gradient changes them too"
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
        replay = build(record, inputs, output, verify=False, at_point=True, user_code=False)
        runner = interpreter(replay) if interpreter is not None else None
        with torch.enable_grad():
            value = replay.run(fresh, interpreter=runner)
    except NotReplayable as error:
        reason = str(error)
        if isinstance(error, NotReached) and not _reaches(output, inputs):
            return AnalysedGraph(output, inputs, hooks=hooks)  # no backward runs a node of it
        if isinstance(error, NotReached):  # the operations read give no other cause
            reason = "built outside what vjp_magic recorded: in a plain cell, or an earlier one"
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
