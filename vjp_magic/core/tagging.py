"""Tagging: which tensors are the inputs and which is the output.

Names come from the namespace; dependence comes from the autograd graph.
"""
from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Mapping

import torch

from .errors import VJPUsageError, unreached
from .graph_walk import postorder, walk_nodes  # noqa: F401 - (the walk's owner; here for callers)

# IPython's own names (history, exit, get_ipython): never inputs or outputs. Other names
# starting with "_" are the user's and stay visible.
_HIDDEN_NAMES = {"In", "Out", "_", "__", "___", "_ih", "_oh", "_dh", "_i", "_ii", "_iii",
                 "exit", "quit", "get_ipython"}
_HIDDEN_PATTERN = re.compile(r"_i?\d+|__\w*__")  # _3, _i3 (history); Python's __name__ etc.


def walk_graph(output: torch.Tensor):
    """Every autograd node reachable from ``output``, each once (depth first)."""
    return walk_nodes([output.grad_fn])


def custom_backwards(output: torch.Tensor) -> tuple[str, ...]:
    """The names of the custom ``autograd.Function`` backward nodes in ``output``'s graph."""
    roots = [output.grad_fn] if output.grad_fn is not None else []
    return tuple(dict.fromkeys(node.name() for node in walk_nodes(roots) if isinstance(
        node, torch.autograd.function.BackwardCFunction)))


def graph_leaves(output: torch.Tensor) -> dict[int, torch.Tensor]:
    """Leaf tensors (``id`` → tensor) that ``output`` depends on through its autograd graph."""
    if output.grad_fn is None:
        return {id(output): output} if output.requires_grad else {}
    leaves: dict[int, torch.Tensor] = {}
    for node in walk_graph(output):
        variable = getattr(node, "variable", None)
        if isinstance(variable, torch.Tensor):
            leaves[id(variable)] = variable
    return leaves


def is_visible_name(name: str) -> bool:
    """False for IPython's own names (``_``, ``_3``, ``_i3``, ``In``, ``exit``, ...) and dunders."""
    return name not in _HIDDEN_NAMES and not _HIDDEN_PATTERN.fullmatch(name)


def depends_on(output: torch.Tensor, tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` (leaf or intermediate) lies on ``output``'s autograd graph."""
    if output is tensor:
        return True
    if tensor.grad_fn is None:
        return id(tensor) in graph_leaves(output)
    node = tensor.grad_fn  # held while the walk compares objects, so its identity is stable
    return any(reached is node for reached in walk_graph(output))


def ordered_names(namespace: Mapping[str, object], preferred: Iterable[str] = ()) -> list[str]:
    """Candidate names: the cell's own assignments first, then the rest of the namespace."""
    preferred = [n for n in preferred if n in namespace]
    rest = [n for n in namespace if n not in set(preferred) and is_visible_name(n)]
    return preferred + rest


def find_inputs(
    output: torch.Tensor,
    namespace: Mapping[str, object],
    preferred: Iterable[str] = (),
    output_name: str = "y",
) -> dict[str, torch.Tensor]:
    """Named floating-point leaves with ``requires_grad=True`` that ``output`` depends on."""
    leaves = graph_leaves(output)
    found: dict[str, torch.Tensor] = {}
    taken: set[int] = set()
    for name in ordered_names(namespace, preferred):
        value = namespace[name]
        if isinstance(value, torch.Tensor) and id(value) in leaves and id(value) not in taken:
            found[name] = value
            taken.add(id(value))
    if not found:
        if leaves:
            raise VJPUsageError(
                f"{output_name} depends on tensors that require grad, but none of them is bound "
                "to a name in the notebook (module parameters, say). Name the inputs with --wrt, "
                "e.g. --wrt x or --wrt layer.weight."
            )
        said = unreached(output_name, "any tensor with requires_grad=True")
        raise VJPUsageError(
            f"{said[0].upper()}{said[1:]}. Create the input with requires_grad=True, "
            "e.g. x = torch.linspace(-2, 2, 5, requires_grad=True)."
        )
    return found


def has_history(value: object) -> bool:
    """A tensor that autograd can differentiate (it has a graph or requires grad)."""
    return isinstance(value, torch.Tensor) and value.requires_grad


def choose_output(
    namespace: Mapping[str, object],
    assigned: list[str],
    final_value: object = None,
    final_source: str | None = None,
    used: Iterable[str] = (),
) -> tuple[str, torch.Tensor]:
    """The cell's output: its final expression if that has autograd history, else the last
    assigned name holding a tensor with history that is not itself a leaf input. ``used``:
    the names the cell reads, to name its inputs when there is no output."""
    if isinstance(final_value, (tuple, list)) and any(map(_with_history, final_value)):
        raise VJPUsageError(sequence_output_message(final_value, final_source))
    if has_history(final_value) and final_value.grad_fn is not None:
        name = final_source if final_source else "y"
        for candidate in reversed(assigned):
            if namespace.get(candidate) is final_value:
                name = candidate
                break
        return name, final_value
    for name in reversed(assigned):
        value = namespace.get(name)
        if has_history(value) and value.grad_fn is not None:
            return name, value
    raise VJPUsageError(no_output_message(namespace, assigned, used))


def _with_history(value: object) -> bool:
    return isinstance(value, torch.Tensor) and value.grad_fn is not None


def sequence_output_message(value, source: str | None) -> str:
    """The cell ends in a tuple or list of tensors (``y, z``): ask for one with --of."""
    index = next(i for i, v in enumerate(value) if _with_history(v))
    kind = type(value).__name__
    source = source or "the final expression"
    try:
        elements = ast.parse(source, mode="eval").body
    except SyntaxError:
        elements = None
    if isinstance(elements, (ast.Tuple, ast.List)) and len(elements.elts) == len(value):
        example = ast.unparse(elements.elts[index])
    else:
        example = f"({source})[{index}]"
    return (f"The cell ends in a {kind} of tensors ({source}): vjp_magic differentiates one "
            f"output. Name it with --of, e.g. %%vjp --of {example}, or torch.stack them into one "
            "tensor.")


def _grad_on_the_output(x: str, value: torch.Tensor, y: str) -> str:
    """y = (x**2).requires_grad_(): requires grad set on the output, not on the input."""
    shown = repr(value)
    made = f"torch.{shown[:-1]}, requires_grad=True)" if value.numel() <= 8 and \
        shown.startswith("tensor(") and "..." not in shown and "\n" not in shown \
        else "torch.tensor(..., requires_grad=True)"
    return (f"{y} requires grad but {x}, which the cell reads, does not: requires_grad_() (or "
            f"requires_grad=True) on {y} makes it a leaf of its own, with no history to "
            f"differentiate. Put it on the input instead: {x} = {made}, then compute {y} "
            f"from {x} without it.")


def no_output_message(namespace: Mapping[str, object], assigned: list[str],
                      used: Iterable[str] = ()) -> str:
    """Why no output was found, in the words that fit what the cell did assign."""
    for name in reversed(assigned):
        value = namespace.get(name)
        if isinstance(value, (tuple, list)) and any(map(_with_history, value)):
            index = next(i for i, v in enumerate(value) if _with_history(v))
            return (f"{name} is a {type(value).__name__} of tensors: name one of them as the "
                    f"output, e.g. %%vjp --of {name}[{index}]")
        if isinstance(value, dict) and any(map(_with_history, value.values())):
            key = next(k for k, v in value.items() if _with_history(v))
            return (f"{name} is a dict of tensors: name one of them as the output, e.g. "
                    f"%%vjp --of {name}[{key!r}]")
    tensors = [(n, namespace.get(n)) for n in assigned
               if isinstance(namespace.get(n), torch.Tensor)]
    leaves = [n for n, t in tensors if t.requires_grad]
    plain = [n for n, t in tensors if not t.requires_grad]
    used = [n for n in used if n in namespace]
    if tensors and not tensors[-1][1].is_floating_point() and not tensors[-1][1].is_complex():
        grad_names = leaves or [n for n in used if trainable(namespace[n])]
        return _integer_message(*tensors[-1], grad_names,
                                _integer_leaf(namespace, assigned + used, tensors[-1][0]))
    if leaves and plain and assigned.index(leaves[0]) > assigned.index(plain[-1]) \
            and plain[-1] in used:
        return _grad_on_the_output(plain[-1], namespace[plain[-1]], leaves[0])
    if leaves and plain:
        return (f"{plain[-1]} has no autograd history although {leaves[0]} requires grad: was it "
                "computed under torch.no_grad() or .detach()ed? Compute the output outside "
                "torch.no_grad() and without .detach().")
    if len(leaves) > 1:  # the last is a leaf of its own: a copy made a leaf, not computed
        y, x = leaves[-1], leaves[0]
        how = "nn.Parameter makes a new leaf of its values" if isinstance(
            namespace.get(y), torch.nn.Parameter) else "it was made, not computed"
        return (f"{y} requires grad but is a leaf of its own ({how}): it is not computed from "
                f"{x}, so it has no derivatives with respect to it. Compute {y} from {x} with "
                f"torch operations (e.g. {y} = {x} * 2, {y} = {x}.clone()), or name the output "
                "with --of.")
    if leaves:
        return ("The cell keeps no tensor computed from its inputs: assign the output to a name "
                "(y = f(x)) or end the cell with it, or name it with --of y.")
    modules = "" if any(trainable(namespace[n]) for n in used) else \
        _untrainable_modules(namespace, used)
    if modules:
        floats = [n for n in used if isinstance(namespace[n], torch.Tensor)
                  and namespace[n].is_floating_point()]
        example = f"{floats[0]}.requires_grad_()" if floats else "x = torch.linspace(-2, 2, 5, " \
            "requires_grad=True)"
        return (f"{modules} Nor does any tensor the cell uses require grad: to differentiate "
                f"with respect to one, create it with requires_grad=True (e.g. {example}).")
    if tensors:
        return no_grad_message("create the input with requires_grad=True, e.g. "
                               "x = torch.linspace(-2, 2, 5, requires_grad=True).")
    return ("Found no output: the cell assigns no tensor. Assign the output (y = f(x)) or name "
            "it with --of y.")


NO_GRAD = "None of the cell's tensors requires grad, so nothing has derivatives: "


def no_grad_message(advice: str) -> str:
    """No tensor of the cell requires grad: ``advice`` says how to make its input."""
    return (f"{NO_GRAD}{advice} (If it does, the output was computed under torch.no_grad() "
            "or .detach()ed.)")


def trainable(value: object) -> bool:
    """A tensor that requires grad, or a module with a parameter that does."""
    if isinstance(value, torch.nn.Module):
        return any(p.requires_grad for p in value.parameters())
    return isinstance(value, torch.Tensor) and value.requires_grad


def _untrainable_modules(namespace: Mapping[str, object], used: list[str]) -> str:
    """What the modules the cell reads lack: parameters, or parameters that require grad
    (and how to change that); '' where no module lacks them."""
    said = []
    for name in used:
        module = namespace[name]
        if not isinstance(module, torch.nn.Module) or trainable(module):
            continue
        if next(module.parameters(), None) is None:
            said.append(f"{name} ({type(module).__name__}) has no parameters: nothing in it "
                        "has derivatives.")
        else:
            said.append(f"{name}'s parameters have requires_grad=False (frozen): call "
                        f"{name}.requires_grad_() before computing the output to differentiate "
                        "with respect to them.")
    return " ".join(said)


def _integer_leaf(namespace: Mapping[str, object], names: list[str], output: str) -> str | None:
    """The cell's own integer or bool tensor that is made, not computed (x = torch.arange(5)):
    the input to create as floats."""
    for name in dict.fromkeys(names):
        value = namespace.get(name)
        if name != output and isinstance(value, torch.Tensor) and value.grad_fn is None \
                and not value.is_floating_point() and not value.is_complex():
            return name
    return None


def _integer_message(name: str, tensor: torch.Tensor, grad_names: list[str],
                     leaf: str | None = None) -> str:
    """The cell's last tensor is a bool or integer tensor: say why it has no derivatives,
    naming what the cell computes from (``grad_names``: what requires grad that it uses;
    ``leaf``: its own integer tensor, to create as floats)."""
    x = grad_names[0] if grad_names else leaf or "x"
    if tensor.dtype == torch.bool:
        why = (f"{name} is a bool tensor (torch.bool): comparisons such as {x} > 0 give "
               "True/False values, which leave autograd and have no derivatives.")
        fix = (f"Differentiate a floating tensor computed from {x} instead, e.g. "
               f"torch.where({x} > 0, {x}, 0.0) or {x} * ({x} > 0).")
    else:
        why = (f"{name} has dtype {tensor.dtype}: integer tensors have no derivatives "
               "(argmax, .int(), .long() and integer arithmetic leave autograd).")
        fix = f"Differentiate a floating tensor computed from {x} instead."
    if not grad_names and leaf:
        fix += (f" And create {leaf} as floats with requires_grad=True, e.g. "
                f"{leaf} = {leaf}.float().requires_grad_() after it is made.")
    elif not grad_names:
        fix += (" And create the input as floats with requires_grad=True, e.g. "
                "x = torch.linspace(-2, 2, 5, requires_grad=True).")
    return f"{why} {fix}"
