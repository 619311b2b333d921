"""Stage 2 — tagging: which tensors are the inputs and which is the output.

Names come from the namespace; dependence comes from the autograd graph.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch

from .errors import VJPUsageError

# IPython keeps history in these; they are never inputs or outputs.
_HIDDEN_NAMES = {"In", "Out", "_", "__", "___", "_ih", "_oh", "_dh", "_i", "_ii", "_iii"}


def walk_graph(output: torch.Tensor):
    """Every autograd node reachable from ``output``, each once (depth first)."""
    return walk_nodes([output.grad_fn])


def walk_nodes(roots):
    """Every autograd node reachable from the ``roots`` nodes, each once (depth first)."""
    seen: set[int] = set()
    stack = list(roots)
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        yield node
        stack.extend(next_node for next_node, _ in node.next_functions)


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


def graph_nodes(output: torch.Tensor) -> set[int]:
    """``id``s of every autograd node reachable from ``output``."""
    return {id(node) for node in walk_graph(output)}


def is_visible_name(name: str) -> bool:
    """False for IPython's history variables and private names."""
    if name in _HIDDEN_NAMES or name.startswith("_"):
        return False
    return True


def depends_on(output: torch.Tensor, tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` (leaf or intermediate) lies on ``output``'s autograd graph."""
    if output is tensor:
        return True
    if tensor.grad_fn is None:
        return id(tensor) in graph_leaves(output)
    return id(tensor.grad_fn) in graph_nodes(output)


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
                f"{output_name} depends on tensors that require grad, but none of them is bound to a "
                "name in the notebook (module parameters, say). Name the inputs with --wrt, "
                "e.g. --wrt x or --wrt layer.weight."
            )
        raise VJPUsageError(
            f"{output_name} does not depend on any tensor with requires_grad=True. Create the input "
            "with requires_grad=True, e.g. x = torch.linspace(-2, 2, 5, requires_grad=True)."
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
) -> tuple[str, torch.Tensor]:
    """The cell's output: its final expression if that has autograd history, else the last
    assigned name holding a tensor with history that is not itself a leaf input."""
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
    raise VJPUsageError(no_output_message(namespace, assigned))


def _with_history(value: object) -> bool:
    return isinstance(value, torch.Tensor) and value.grad_fn is not None


def no_output_message(namespace: Mapping[str, object], assigned: list[str]) -> str:
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
    integer = [n for n, t in tensors if not t.requires_grad and not t.is_floating_point()]
    if leaves and integer:
        dtype = namespace[integer[-1]].dtype
        return (f"{integer[-1]} has dtype {dtype}: integer and bool tensors have no derivatives "
                "(comparisons, argmax, .int() and .long() leave autograd). Differentiate a "
                "floating tensor computed from the input instead.")
    if leaves and plain:
        return (f"{plain[-1]} has no autograd history although {leaves[0]} requires grad: was it "
                "computed under torch.no_grad() or .detach()ed? Compute the output outside "
                "torch.no_grad() and without .detach().")
    if leaves:
        return ("The cell keeps no tensor computed from its inputs: assign the output to a name "
                "(y = f(x)) or end the cell with it, or name it with --of y.")
    if tensors:
        return ("None of the cell's tensors requires grad, so nothing has derivatives: create the "
                "input with requires_grad=True, e.g. x = torch.linspace(-2, 2, 5, "
                "requires_grad=True). (If it does, the output was computed under "
                "torch.no_grad() or .detach()ed.)")
    return ("Found no output: the cell assigns no tensor. Assign the output (y = f(x)) or name "
            "it with --of y.")
