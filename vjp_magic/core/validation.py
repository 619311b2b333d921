"""Validation around the analysis: its arguments checked, empty tensors refused clearly,
NaN/inf derivatives flagged.

``differentiate`` calls :func:`checked_inputs`, :func:`check_output` and :func:`refuse_empty`
before any backward, and :func:`annotate` on its result (notes for non-finite derivatives),
:func:`unverifiable_notes` (a pairing no probe could verify) and :func:`nan_filled` (a full
Jacobian's NaN from 0·∞ taken from the other mode).
"""
from __future__ import annotations

import ast
import contextlib
import keyword
import math
import operator
import re
import weakref
from collections.abc import Iterable, Mapping
from contextvars import ContextVar

import torch

from .errors import AFTER_YOUR_CODE, VJPUsageError, operand, refuse_meta
from .memory import checked_budget
from .marked import code, marked
from .pairing import Evidence
from .quiet import no_subclass_code, user_subclass
from .torch_api import TorchError, torch_error


def named_inputs(inputs, names) -> dict[str, torch.Tensor]:
    """``inputs`` (a tensor, a sequence or iterator of tensors, a dict name → tensor, or an
    ``nn.Module``) as a dict name → tensor. A module stands for its parameters that require
    grad, named ``"<name>.0.weight"`` (the module's name as given, else ``"0.weight"``);
    module values in a dict or sequence are expanded the same way."""
    if names is not None and not isinstance(names, str):
        given = names
        names = list(names) if isinstance(names, Iterable) else None
        if names is None or not all(isinstance(n, str) for n in names):
            raise VJPUsageError(f"names is a str or a list of str (names='x', names=['x', "
                                f"'w']), not {given!r}.")
    if isinstance(inputs, (torch.Tensor, torch.nn.Module)) and isinstance(names, (list, tuple)) \
            and len(names) != 1:
        raise VJPUsageError(f"One input, {len(names)} names ({list(names)!r}): give one name, "
                            "names='x', or pass as many inputs as names.")
    if isinstance(inputs, Mapping) and names is not None:
        raise VJPUsageError("The dict of inputs names them (its keys): leave out names=.")
    if isinstance(inputs, torch.Tensor):
        name = names if isinstance(names, str) else (names[0] if names else "x")
        return {name: inputs}
    if isinstance(inputs, torch.nn.Module):
        prefix = names if isinstance(names, str) else (names[0] if names else None)
        return module_parameters(inputs, prefix)
    if isinstance(inputs, Mapping):
        return _expanded(dict(inputs))
    if isinstance(inputs, Iterable) and not isinstance(inputs, (str, bytes)) \
            and not hasattr(inputs, "__array__"):
        inputs = list(inputs)
        if names is None:
            names = ["x"] if len(inputs) == 1 else [f"x{i + 1}" for i in range(len(inputs))]
        if isinstance(names, str) or len(names) != len(inputs):
            raise VJPUsageError("Give one name per input: names=['x', 'w'] for inputs=[x, w].")
        for index, name in enumerate(names):
            if name in names[:index]:
                raise VJPUsageError(_same_name(name, f" (names=['{name}', '{name}2'])"))
        return _expanded(dict(zip(names, inputs)))
    raise VJPUsageError(
        f"inputs must be a tensor, a list of tensors, a dict name → tensor or an nn.Module, "
        f"not {'None' if inputs is None else type(inputs).__name__}."
    )


def parameter_expression(name: str) -> str:
    """A module's parameter as :func:`module_parameters` (``named_parameters()``) names it,
    ``mlp.0.weight``, as the Python expression that reaches it, ``mlp[0].weight``: a
    ModuleList / Sequential index ``[0]``, a ModuleDict / ParameterDict key that is no
    attribute name (``'layer-1'``, ``'class'``, a digit key ``'7'``) ``['layer-1']``, as
    the module it was read from spells it (:func:`module_parameters` notes each); any
    other name unchanged. Inside :func:`spelled_for` (a result shown), each of its inputs is
    spelled as the module it was read from spelled it, whatever module took its name since."""
    shown = _SHOWN.get()
    if shown and name in shown:
        return shown[name]
    if name in _SPELLED:
        return _SPELLED[name]
    if not _PARAMETER_NAME.fullmatch(name):
        return name
    return _MODULE_INDEX.sub(r"[\1]", name)


def sentence_name(name: str) -> str:
    """``name`` inside a marked sentence (:mod:`.marked`): as the display spells it
    (:func:`parameter_expression`), an expression (``m[0].weight``) marked as code."""
    spelled = parameter_expression(name)
    return spelled if spelled.isidentifier() else code(spelled)


def _spell(module: torch.nn.Module, prefix: str, name: str) -> str:
    """``prefix`` + the path ``name`` (``blocks.7.weight``) through ``module``, each step as
    the parent module is read: an index, a key or an attribute."""
    spelled, parent = prefix, module
    for part in name.split("."):
        keyed = isinstance(parent, (torch.nn.ModuleDict, torch.nn.ParameterDict))
        if keyed:
            spelled += f"[{part!r}]" if not part.isidentifier() or keyword.iskeyword(part) \
                else f".{part}"
        elif part.isdigit() and hasattr(parent, "__getitem__"):
            spelled += f"[{part}]"
        elif part.isidentifier() and not keyword.iskeyword(part):
            spelled += f".{part}"
        else:  # a plain module's attribute that no dot reaches
            spelled = f"getattr({spelled}, {part!r})"
        parent = getattr(parent, part, None)
    return spelled


_PARAMETER_NAME = re.compile(r"[^\W\d]\w*(\.\w+)+")  # mlp.0.weight (dots and words only)
_MODULE_INDEX = re.compile(r"\.(\d+)(?=\.|$)")
# name -> expression, as the last module so named spells it: a name the user types now
_SPELLED: dict[str, str] = {}
_SPELLED_MAX = 20_000
# id(parameter) -> (a weak reference to it, {name: expression} as the module it was named
# from spelled it): what a result holding that parameter shows, later too, after another
# module took the name (an entry leaves with its parameter)
_OWN: dict[int, tuple] = {}


class _Ref(weakref.ref):
    """A weak reference to a parameter that removes its :data:`_OWN` entry when it dies."""

    __slots__ = ("key",)


def _dropped(ref: _Ref) -> None:
    entry = _OWN.get(ref.key)
    if entry is not None and entry[0] is ref:
        del _OWN[ref.key]


def _own(tensor) -> dict | None:
    """The spellings noted for ``tensor`` under each of its names (None: none)."""
    entry = _OWN.get(id(tensor))
    return entry[1] if entry is not None and entry[0]() is tensor else None
_SHOWN: ContextVar[Mapping[str, str] | None] = ContextVar("vjp_magic_spelled", default=None)


def remember_spellings(module: torch.nn.Module, prefix: str) -> None:
    """Note how each parameter of ``module``, named ``prefix.<key>``, is spelled in Python
    (for :func:`parameter_expression`): each place that names a module's parameters calls
    this, so the spelling of a name is the latest module's of that name, and the spelling of
    a parameter under that name its own module's (:func:`spelled_for`)."""
    if len(_SPELLED) > _SPELLED_MAX:
        _SPELLED.clear()
    for name, parameter in module.named_parameters():
        named, spelled = f"{prefix}.{name}", _spell(module, prefix, name)
        _SPELLED[named] = spelled
        own = _own(parameter)
        if own is not None:
            own[named] = spelled
            continue
        ref = _Ref(parameter, _dropped)
        ref.key = id(parameter)
        _OWN[ref.key] = (ref, {named: spelled})


def spellings(inputs: Mapping[str, object]) -> dict[str, str]:
    """name -> expression for each of ``inputs`` (name -> tensor) that is a module's
    parameter named so, as that module spelled it (:func:`remember_spellings`)."""
    found = {}
    for name, tensor in inputs.items():
        own = _own(tensor)
        if own is not None and name in own:
            found[name] = own[name]
    return found


@contextlib.contextmanager
def spelled_for(inputs: Mapping[str, object]):
    """Inside, :func:`parameter_expression` spells each of ``inputs`` (name -> tensor: a
    result's) as its own module did (:func:`spellings`): an old result shown after a module
    of another structure took its name still reads ``model.blocks['0'].weight``."""
    token = _SHOWN.set(spellings(inputs))
    try:
        yield
    finally:
        _SHOWN.reset(token)


def module_parameters(module: torch.nn.Module, prefix: str | None) -> dict[str, torch.Tensor]:
    """A module's parameters that require grad, named ``prefix.0.weight`` (or ``0.weight``)."""
    found = {f"{prefix}.{name}" if prefix else name: parameter
             for name, parameter in module.named_parameters() if parameter.requires_grad}
    if prefix:
        remember_spellings(module, prefix)
    if not found:
        what = prefix or type(module).__name__
        if next(module.parameters(), None) is None:
            raise VJPUsageError(f"{what} ({type(module).__name__}) has no parameters: nothing "
                                "in it has derivatives. Differentiate with respect to a tensor "
                                "it is applied to, created with requires_grad=True.")
        call = f"{prefix}.requires_grad_()" if prefix else \
            f".requires_grad_() on the {type(module).__name__} you gave"
        raise VJPUsageError(f"{what} has no parameters that require grad (frozen): call "
                            f"{call} before computing the output.")
    return found


def _expanded(named: dict) -> dict[str, torch.Tensor]:
    """Module values replaced by their parameters (named after the key)."""
    if not any(isinstance(v, torch.nn.Module) for v in named.values()):
        return named
    expanded: dict = {}
    for name, value in named.items():
        found = module_parameters(value, name) if isinstance(value, torch.nn.Module) \
            else {name: value}
        add_named(expanded, found)
    return expanded


def add_named(named: dict, more: dict) -> dict:
    """``named`` updated with ``more`` (name -> input); a name already given to another
    input is a usage error (one of them would silently be dropped)."""
    for name, value in more.items():
        if named.get(name, value) is not value:
            raise VJPUsageError(_same_name(name))
        named[name] = value
    return named


def _same_name(name: str, example: str = "") -> str:
    return (f"Two different inputs are named {name!r}: names must differ, or one of them "
            f"would be dropped. Give each input its own name{example}.")


def check_arguments(memory_budget=None, seed=None) -> None:
    """``memory_budget`` and ``seed`` checked before anything runs (a function handed to
    ``differentiate`` is called once: a mistake in them must not wait for it)."""
    checked_budget(memory_budget)
    checked_seed(seed)


def checked_seed(seed: object) -> int | None:
    """``seed`` as an int (None stays None: a fresh one is drawn); anything else, e.g. a
    string, is a usage error saying what to pass."""
    if seed is None:
        return None
    if not isinstance(seed, bool):
        try:
            return operator.index(seed)
        except TypeError:
            pass
    raise VJPUsageError(f"seed is an int, e.g. seed=0 (or None for a fresh one), not {seed!r}.")


def refuse_sequence(name: str, output: object, how: str = "{}") -> None:
    """A usage error where the output is a tuple, list or dict of tensors: one of them named
    in the syntax of the caller, ``how`` (``"%%vjp --of {}"``, ``"%jacobian {0} wrt {1}"``,
    ``"vjp_magic.differentiate({}, x)"``: ``{0}`` the output, ``{1}`` the inputs). Where
    ``name`` is written as a tuple whose other items are leaves that require grad (``y, x``:
    a comma where ``%jacobian`` wants a space or ``wrt``), those are the inputs."""
    items = dict(output) if isinstance(output, Mapping) else \
        dict(enumerate(output)) if isinstance(output, (tuple, list)) else {}
    tensors = [k for k, v in items.items() if isinstance(v, torch.Tensor)]
    if not tensors:
        return
    key = next((k for k in tensors if items[k].grad_fn is not None), tensors[0])
    kind = type(output).__name__
    python = how.startswith("vjp_magic.")
    written = _elements(name, len(items)) if not isinstance(output, Mapping) else None
    if written is not None:
        example = written[key]
        leaves = [source for k, source in enumerate(written) if k != key and source.isidentifier()
                  and _leaf_requiring_grad(items[k])]
    else:
        example, leaves = f"{'outputs' if python else operand(name)}[{key!r}]", []
    if leaves and "{1}" in how:  # %jacobian y, x: the output, then its inputs
        advice = how.format(example, " ".join(leaves))
        raise VJPUsageError(
            f"{name} is read as one output, a {kind} of tensors. The output comes first, "
            f"then the inputs after wrt: {advice}.")
    advice = how.format(example, "x").removeprefix("%%vjp ")
    if python:
        raise VJPUsageError(f"The output is a {kind} of {len(tensors)} tensors: pass one of them "
                            f"({advice}) or torch.stack them into one tensor.")
    raise VJPUsageError(f"{name} is a {kind} of tensors: name one of them as the output "
                        f"({advice}) or torch.stack them into one tensor.")


def _elements(source: str, count: int) -> list[str] | None:
    """The item sources of ``source`` written as a tuple or list of ``count`` items."""
    try:
        node = ast.parse(source.strip(), mode="eval").body
    except SyntaxError:
        return None
    if not isinstance(node, (ast.Tuple, ast.List)) or len(node.elts) != count \
            or any(isinstance(e, ast.Starred) for e in node.elts):
        return None
    return [ast.unparse(e) for e in node.elts]


def _leaf_requiring_grad(value) -> bool:
    return isinstance(value, torch.Tensor) and value.requires_grad and value.grad_fn is None


# what to do where a .grad is differentiated (a second derivative): backward filled it
# without a graph (the magic's --of x.grad, a cell's x.grad.sum().backward())
GRAD_WITHOUT_GRAPH = (
    "backward fills .grad without a graph unless it is told create_graph=True. For second "
    "derivatives pass create_graph=True to the first backward (or make the gradient with "
    "torch.autograd.grad(..., create_graph=True)), or use %hessian (vjp_magic.hessian).")


def a_or_an(word: str) -> str:
    """``word`` with its indefinite article: "an int", "an Image", "a list"."""
    return f"{'an' if word[:1].lower() in 'aeiou' else 'a'} {word}"


def a_kind_of(value: object) -> str:
    """``value``'s type as a message names it: "an int", "a list", "None"."""
    return "None" if value is None else a_or_an(type(value).__name__)


def refuse_unanalysable(name: str, value: object) -> None:
    """A usage error where ``value`` (an output or input, ``name``: how the message names it,
    "Input x") is a tensor no analysis can take: a meta tensor (a shape, no values) or a
    subclass with its own ``__torch_dispatch__`` (:func:`refuse_dispatching`). The one check
    every entry point makes of what it was given."""
    refuse_meta(name, value)
    refuse_nested(name, value)
    refuse_dispatching(name, value)


def refuse_nested(name: str, value: object) -> None:
    """A usage error where ``value`` is a nested tensor (``torch.nested``, either layout): its
    entries have no one shape for a Jacobian to be laid out along."""
    if isinstance(value, torch.Tensor) and value.is_nested:
        raise VJPUsageError(
            f"{name} is a nested tensor (torch.nested): its entries have shapes of their own, "
            "so there is no one Jacobian to lay out. Pad it into a plain tensor "
            "(.to_padded_tensor(0.0)) or take its entries (.unbind()), and compute from those "
            "with requires_grad=True.")


def refuse_dispatching(name: str, value: object) -> None:
    """A usage error where ``value`` is a tensor subclass with its own ``__torch_dispatch__``
    (``name``: how the message names it, "Input x"): that code runs below autograd, in every
    backward pass the analysis would make, and nothing turns it off."""
    if user_subclass(value) == "__torch_dispatch__":
        raise VJPUsageError(
            f"{name} is {a_kind_of(value)}, a tensor subclass with its own "
            "__torch_dispatch__: that code would run again in each of the analysis's backward "
            f"passes ({AFTER_YOUR_CODE}). Compute the output from "
            "plain torch.Tensor inputs (the values the subclass holds) to see its derivatives.")


@no_subclass_code()  # a subclass's __torch_function__ is the user's code
def check_output(output: object, name: str) -> torch.Tensor:
    """The output must be a real floating tensor that autograd can differentiate."""
    refuse_sequence(name, output)
    refuse_unanalysable(name, output)
    if output is None and name.endswith(".grad"):
        raise VJPUsageError(
            f"{name} is None (no backward has filled it), and a gradient is differentiated as "
            "a tensor with a graph: make it with torch.autograd.grad(..., create_graph=True), "
            "or take second derivatives with %hessian (vjp_magic.hessian).")
    if not isinstance(output, torch.Tensor):
        raise VJPUsageError(
            f"{name} is {a_kind_of(output)}, not a tensor: compute it with torch operations "
            f"on a tensor that has requires_grad=True."
        )
    if not output.is_floating_point():  # (complex is not floating point either)
        _refuse_unless_real_floating(
            output,
            f"{name} is complex ({output.dtype}): vjp_magic differentiates real tensors. "
            f"Differentiate its real and imaginary parts separately: {operand(name)}.real, "
            f"{operand(name)}.imag.",
            f"{name} has dtype {output.dtype}: integer and bool tensors have no derivatives "
            "(argmax, comparisons, .int() and .long() leave autograd). Differentiate a floating "
            "tensor computed from the inputs; an input made of integers is created as floats, "
            "e.g. torch.arange(3, dtype=torch.float32).")
    if not output.requires_grad:
        if re.fullmatch(r".*\.grad\s*", name):  # x.grad: filled by a backward, with no graph
            raise VJPUsageError(f"{name} has no autograd history: {GRAD_WITHOUT_GRAPH}")
        raise VJPUsageError(
            f"{name} has no autograd history: it was computed under torch.no_grad(), .detach()ed, "
            "or from tensors without requires_grad=True. Create the input with requires_grad=True "
            "and compute the output outside torch.no_grad()."
        )
    return output


def check_input(tensor: object, name: str) -> torch.Tensor:
    """An input must be a real floating tensor with requires_grad=True (read under
    :func:`checked_inputs`'s ``no_subclass_code``)."""
    if name.endswith(".grad") and (tensor is None or isinstance(tensor, torch.Tensor)
                                   and not tensor.requires_grad):
        base = name[:-len(".grad")]
        what = "None (no backward has filled it)" if tensor is None else \
            "a backward's result, a constant to autograd"
        raise VJPUsageError(f"{name} is {what}; use --wrt {base} (%jacobian: wrt {base}): "
                            f"derivatives with respect to {base} are what a backward puts "
                            f"into {name}.")
    if not isinstance(tensor, torch.Tensor):
        raise VJPUsageError(f"Input {name} is {a_kind_of(tensor)}, not a tensor: derivatives are "
                            "taken with respect to a floating-point tensor with "
                            "requires_grad=True (e.g. torch.tensor(3., requires_grad=True)), "
                            "used by the output.")
    refuse_unanalysable(f"Input {name}", tensor)
    if not tensor.is_floating_point():  # (the messages built only when one is said)
        _refuse_unless_real_floating(
            tensor,
            f"Input {name} is complex ({tensor.dtype}): vjp_magic differentiates real tensors. "
            f"Use {operand(name)}.real and {operand(name)}.imag as separate real inputs.",
            f"Input {name} has dtype {tensor.dtype}: only floating tensors have derivatives. "
            "Create it as floats, e.g. torch.arange(3, dtype=torch.float32, requires_grad=True).")
    if not tensor.requires_grad:
        raise VJPUsageError(
            f"Input {name} does not require grad. Create it with requires_grad=True or call "
            f"{name}.requires_grad_() before computing the output."
        )
    return tensor


def _refuse_unless_real_floating(tensor: torch.Tensor, if_complex: str, if_not_float: str):
    """Only real floating tensors have derivatives here: the message says what to do."""
    if tensor.is_complex():
        raise VJPUsageError(if_complex)
    if not tensor.is_floating_point():
        raise VJPUsageError(if_not_float)


@no_subclass_code()  # a subclass's __torch_function__ is the user's code
def checked_inputs(inputs, names) -> dict[str, torch.Tensor]:
    """The named inputs, each checked with :func:`check_input`; at least one."""
    named = named_inputs(inputs, names)
    if not named:
        raise VJPUsageError("Give at least one input tensor to differentiate with respect to.")
    for name, tensor in named.items():
        check_input(tensor, name)
    return named


def refuse_empty(output: torch.Tensor, inputs: dict, output_name: str) -> None:
    """A tensor with no entries has no derivatives to show: say so instead of failing."""
    for name, tensor in [(output_name, output), *inputs.items()]:
        if tensor.numel() == 0:
            role = "The output" if tensor is output else "The input"
            raise VJPUsageError(
                f"{role} {name} is empty (shape {tuple(tensor.shape)}): it has no entries, so "
                "there are no derivatives to show. Give it at least one entry."
            )


def counted_entries(count: int, kind: str) -> str:
    """``1 NaN entry``, ``2 NaN entries``; empty for none."""
    if not count:
        return ""
    return f"{count:,} {kind} {'entry' if count == 1 else 'entries'}"


def nonfinite_notes(result) -> list[str]:
    """One sentence per input whose derivatives contain NaN or ±inf, the input's name marked
    (a display sets it as every sentence sets the cell's names)."""
    notes = []
    for name, item in result.inputs.items():
        d = item.derivatives
        finite = torch.isfinite(d)
        if bool(finite.all()):
            continue
        nan = int(torch.isnan(d).sum())
        inf = d.numel() - int(finite.sum()) - nan
        parts = [counted_entries(nan, "NaN"), counted_entries(inf, "infinite")]
        what = " and ".join(p for p in parts if p)
        notes.append(marked(
            f"The derivatives with respect to `{name}` have {what}: the function is not "
            "differentiable there, or the computation divided by zero or overflowed (e.g. "
            "sqrt or log at 0, log of a negative number)."
        ))
    return notes


def _spelled(name: str) -> str:
    """A name in a marked note: as it is (``x``, ``layer.weight``), an expression as code
    (```~y.bool() * y```)."""
    return name if all(p.isidentifier() for p in name.split(".")) else f"`{name}`"


def zero_notes(result) -> list[str]:
    """A warning for the inputs the output depends on whose derivatives are all exactly 0
    here: one sentence for all of those that share a cause (14 parameter tensors behind a
    dead relu read as one note, their names summarised as the display's headline does)."""
    causes: dict[tuple[str, ...], list[str]] = {}
    for name, item in result.inputs.items():
        d = item.derivatives
        if item.unused or d.numel() == 0 or bool(d.any()) or bool(d.isnan().any()):
            continue
        steps = tuple(_steps_on_every_path(result.output, item.tensor))
        causes.setdefault(steps, []).append(_spelled(name))
    y = _spelled(result.output_name)
    notes = []
    for steps, names in causes.items():
        x = _names_listed(names)
        one = names[0] if len(names) == 1 else "each"
        here = f"this {x}" if len(names) == 1 else "this point"
        if steps:
            notes.append(marked(
                f"Every derivative of {y} with respect to {x} is 0, at {here} and at every "
                f"other: each path from {one} to {y} passes through {' or '.join(steps)}, "
                "which is piecewise constant (its derivative is 0 wherever it exists), so a "
                f"loss through it gives {one if len(names) == 1 else 'them'} no gradient to "
                "learn from."))
            continue
        notes.append(marked(
            f"Every derivative of {y} with respect to {x} is 0 at {here}, although {y} "
            f"depends on {one} through the graph (an inactive relu or clamp, a product with "
            f"0, ...): at another {'value of ' + x if len(names) == 1 else 'point'} they may "
            "not be."))
    return notes


def _names_listed(names: list[str]) -> str:
    """``a``, ``a or b``, ``a, b or c``; more than three: ``a, b, … (11 more), z``."""
    if len(names) == 1:
        return names[0]
    if len(names) <= 3:
        return f"{', '.join(names[:-1])} or {names[-1]}"
    return f"{names[0]}, {names[1]}, … ({len(names) - 3:,} more) or {names[-1]}"


# Backward nodes of piecewise-constant ops: their derivative is 0 wherever it exists.
_STEP_NODES = {"RoundBackward0": "round", "RoundBackward1": "round", "SignBackward0": "sign",
               "SgnBackward0": "sgn", "FloorBackward0": "floor", "CeilBackward0": "ceil",
               "TruncBackward0": "trunc"}


def _steps_on_every_path(output, tensor) -> list[str]:
    """The piecewise-constant ops (round, sign, floor, ...) that every path of ``output``'s
    graph from ``tensor`` passes through; [] where one path reaches ``tensor`` without one
    (or the graph is gone)."""
    root = getattr(output, "grad_fn", None)
    if root is None:
        return []
    target = tensor.grad_fn
    stack, seen, steps = [root], set(), []
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        step = _STEP_NODES.get(type(node).__name__)
        if step is not None:
            steps.append(step)
            continue
        if node is target or getattr(node, "variable", None) is tensor:
            return []  # reached without a step
        stack.extend(n for n, _ in node.next_functions if n is not None)
    return list(dict.fromkeys(steps))


def unverified_notes(result) -> list[str]:
    """A sentence per custom ``autograd.Function`` whose backward the derivatives rely on."""
    names = list(dict.fromkeys(n for item in result.inputs.values() for n in item.unverified))
    if not names:
        return []
    which = ", ".join(f"`{n}`" for n in names)
    return [marked(
        f"The graph of {result.output_name} contains {which}, a custom `autograd.Function`: "
        "these derivatives are what its backward computes, unverified (`--gradcheck` replays "
        "the cell against finite differences); the structure through it is only observed at "
        "this input."
    )]


def unverifiable_notes(result, nonfinite: dict[str, int]) -> list[str]:
    """A sentence per input whose larger pairing a probe could not verify: vᵀJ or vᵀD was
    not finite at some entry (named), which tells a coupling from none at no probe value."""
    notes = []
    for name, flat in nonfinite.items():
        item = result.inputs[name]
        entry = ", ".join(str(int(i)) for i in torch.unravel_index(
            torch.tensor(flat), tuple(item.shape))) if item.dim() else ""
        shown = "under the structure the graph proves" if item.has_points \
            else "as the full Jacobian"
        notes.append(
            f"The point structure of {result.output_name} with respect to {name} could not be "
            f"verified: its derivatives are not finite at some entries (e.g. {name}[{entry}]), "
            "where a random probe cannot tell a dependence across points from none. The "
            f"derivatives are shown {shown}.")
    return notes


def nan_filled(derivatives: torch.Tensor, others, proved=None) -> torch.Tensor:
    """``derivatives`` (a full Jacobian, or derivatives at points) with NaN entries taken
    from the first of ``others`` (callables computing the same another way) that has a
    number there; one that raises (no double backward) or gives None is skipped.
    ``proved``: a callable giving the pattern the graph proves
    (:func:`.indexmaps.proved_pattern`, or None), read first: the non-finite entries outside
    it are 0 (:func:`outside_proved_zeroed`)."""
    filled = derivatives
    if proved is not None:
        filled = outside_proved_zeroed(filled, proved())
    for compute in others:
        if not bool(filled.isnan().any()):
            break
        try:
            other = compute()
        except (RuntimeError, NotImplementedError) as error:
            if torch_error(error) is TorchError.SECOND_PASS:
                raise
            continue
        if other is None:  # that way cannot compute it here
            continue
        other = other.reshape(derivatives.shape)
        filled = torch.where(filled.isnan() & ~other.isnan(), other, filled)
    return filled


def outside_proved_zeroed(jacobian: torch.Tensor, pattern) -> torch.Tensor:
    """``jacobian`` (any shape whose row-major flattening is the pattern's m × n) with its
    non-finite entries outside a PROVED ``pattern`` set to 0; unchanged where ``pattern`` is
    None or only observed.

    The index maps prove that y[i] reads no entry x[j] outside the pattern, so y[i] is
    constant in x[j] and d y[i] / d x[j] = 0. Autograd can still read NaN there: a zero seed
    (or tangent) met by an infinite local derivative (sqrt at 0) gives 0·∞ = NaN, which
    both modes carry along every path (y = x.roll(1) * sqrt(x) at x[7] = 0: NaN at
    J[0, 7]). Such a NaN is an artefact, not a derivative; inside the pattern NaN and ±∞
    stay what they are (both readings non-finite). An observed pattern proves nothing, so
    nothing is changed under it."""
    if pattern is None or getattr(pattern, "evidence", None) != Evidence.PROVED:
        return jacobian
    m, n = pattern.shape
    flat = jacobian.reshape(m, n)
    bad = ~torch.isfinite(flat)
    if not bool(bad.any()):
        return jacobian
    rows = torch.repeat_interleave(torch.arange(m), torch.diff(pattern.crow))
    bad[rows.to(bad.device), pattern.col.to(bad.device)] = False  # inside: left as they are
    return flat.masked_fill(bad, 0).reshape(jacobian.shape)


def _ordinary(derivatives: torch.Tensor) -> bool:
    """One pass: a finite, non-zero sum means every entry is finite and not all are 0."""
    if derivatives.numel() == 0:
        return True
    total = float(derivatives.sum())
    return math.isfinite(total) and total != 0.0


def annotate(result) -> None:
    """Fill what every result carries beyond the numbers: notes on non-finite and all-zero
    derivatives and on backward functions nobody verified (``r.code`` is made on first use)."""
    if not all(_ordinary(item.derivatives) for item in result.inputs.values()):
        result.notes.extend(nonfinite_notes(result) + zero_notes(result))
    result.notes.extend(unverified_notes(result))
