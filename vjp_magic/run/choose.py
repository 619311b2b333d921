"""Choosing the output and the inputs: named by the user, or found.

A :class:`Subject` is where a request's output and inputs come from; three answer the
pipeline's first two stages the same way:

- :class:`FromCell` (``%%vjp``): the output is ``--of``'s expression, else the cell's final
  expression or last assigned tensor with history; the inputs are ``--wrt``'s, else the
  named leaves the output's graph reaches.
- :class:`FromExpression` (``%jacobian``): the output is an expression already evaluated
  in the namespace; the inputs are named, or found the same way.
- :class:`Given` (:func:`vjp_magic.differentiate`): both given as tensors.

Names and expressions are evaluated in the user's namespace (``scope.user_ns`` and
``scope.user_global_ns``: the IPython shell, or anything with those two); a name that does
not evaluate is a :class:`~vjp_magic.core.errors.VJPUsageError` that says what to write.
"""
from __future__ import annotations

import ast
import difflib
import functools
import re
import types
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from ..core.validation import (add_named, module_parameters, named_inputs, parameter_expression,
                                refuse_sequence, refuse_unanalysable, remember_spellings)
from ..core.errors import VJPUsageError, operand
from ..core.marked import marked
from ..core.modes import users_modes
from ..core.quiet import no_subclass_code
from ..core.reentrant import refuse_recomputing
from ..core.tagging import (NO_GRAD, choose_output, depends_on, find_inputs, graph_leaves,
                            is_visible_name, no_grad_message, ordered_names, walk_graph)
from .execute import CellRun, detached_advice, evaluate
from .grad_advice import copied_hint, late_grad_hint, own_requires_grad_advice, rebound_hint
from .compiled import expression_parts, recorded
from .record import KeptRecord, OpRecord, recording


@runtime_checkable
class Subject(Protocol):
    """What the pipeline differentiates: the output and inputs, and what the features read.

    ``record``: the torch calls recorded while it ran (None: none; replayed for a hook-free
    graph, ``--symbolic``, ``--gradcheck``); ``namespace``: the user's names (None from plain
    Python); ``scope``: where ``--check``'s answer is looked up; ``log``: the cell's own
    ``backward`` calls (None where no cell ran); ``output_source``: the output's expression
    (``%jacobian``, ``%hessian``; None: the whole cell or given tensors).
    """

    @property
    def record(self) -> OpRecord | None: ...

    @property
    def namespace(self) -> dict | None: ...

    @property
    def scope(self) -> object: ...

    @property
    def log(self) -> object: ...

    @property
    def output_source(self) -> str | None: ...

    @property
    def replay(self) -> str | None:
        """Advice: how, from where the user is, the output's operations are recorded and a
        replay differentiated (None: they are already, in a cell or a function given)."""

    def output(self, of: str | None) -> tuple[str, object]:
        """The output's name and value: ``of`` (``--of``) where named, else found."""

    def inputs(self, wrt: Sequence[str], output, output_name: str) -> dict:
        """The inputs, name → tensor: ``wrt`` where named, else found through the graph."""


@dataclass(eq=False)
class FromCell:
    """``%%vjp``: the output and inputs of a cell that ran."""

    run: CellRun
    scope: object
    chosen: object = None  # the output, once chosen (a final value that is not it is shown)
    exclude: tuple = ()  # names never taken for the output (the answer of --check NAME)
    of_record: OpRecord | None = None  # the cell's calls, then --of's expression's

    log = property(lambda self: self.run.log)
    record = property(lambda self: self.of_record or self.run.record)
    namespace = property(lambda self: self.scope.user_ns)
    output_source = None  # the replay follows the whole cell
    replay = None  # advice to have a replay made: the cell's operations are recorded already

    def output(self, of: str | None) -> tuple[str, object]:
        if of is not None:
            name, self.chosen = of, self._evaluated(of)
            return name, dense(name, self.chosen, "%%vjp --of {}")
        run = self.run
        excluded = _names_read(self.exclude)  # --check ans.T: ans is the answer, not an output
        assigned = [n for n in run.assigned if n not in excluded]
        final = None if run.final_source in self.exclude else run.final_value
        try:
            name, self.chosen = choose_output(run.found, assigned, final,
                                              run.final_source, used=run.reads)
        except VJPUsageError as error:
            raise VJPUsageError(number_output_hint(run.found, run.assigned)
                                or late_grad_hint(run.source, run.namespace)
                                or copied_hint(run.source, run.namespace)
                                or _detached_hint(run) or _no_grad_hint(run, str(error))
                                or str(error)) from None
        return name, dense(name, self.chosen, "%%vjp --of {}")

    def inputs(self, wrt, output, output_name: str) -> dict:
        if wrt:
            return dense_inputs(named(self.scope, wrt, output, output_name, "--wrt"))
        try:
            return dense_inputs(found_inputs(self.scope, output, output_name,
                                             self.run.assigned))
        except VJPUsageError:  # y = x**2, then x bound again: the leaf has no name now
            hint = rebound_hint(self.run.source, output_name)
            if hint is None:
                raise
            raise VJPUsageError(hint) from None

    def _evaluated(self, of: str):
        """``--of``'s expression, evaluated after the cell; its torch calls (``y[0]``,
        ``y.sum()``) recorded after the cell's (``record``; the cell's own record, kept for a
        later ``%jacobian``, stays the cell's), so the hook-free copy reaches its value."""
        cell = self.run.record
        if cell is None or cell.failed is not None:
            return lookup(self.scope, of, "--of")
        with recording() as record, users_modes():
            value = lookup(self.scope, of, "--of")
        if record.calls and record.failed is None:
            self.of_record = OpRecord(cell.calls + record.calls,
                                      ran_eagerly=cell.ran_eagerly or record.ran_eagerly)
        return value


@dataclass(eq=False)
class FromExpression:
    """``%jacobian``: an expression evaluated in the namespace (its torch calls recorded
    when ``record`` is not None)."""

    scope: object
    output_source: str
    value: object
    record: OpRecord | None = None
    log = None
    namespace = property(lambda self: self.scope.user_ns)
    replay = "Compute it in a %%vjp cell: its operations are recorded, and a replay of them " \
        "differentiated"  # how, from here, a replay is made (the refusals' advice)

    @classmethod
    def evaluate(cls, scope, source: str, record_ops: bool = False,
                 earlier: KeptRecord | None = None) -> FromExpression:
        """``source`` evaluated; with ``earlier`` (the last ``%%vjp`` cell's record, kept
        while its output lives) the record is that cell's calls, then the expression's: a
        graph the cell's own backward freed is rebuilt from them."""
        codes, trees = expression_parts(source)
        with recorded(scope.user_ns, record_ops, codes, trees, who="expression") as record, \
                users_modes():
            value = lookup(scope, source, "output")
        cell = earlier.record() if earlier is not None and record is not None else None
        if cell is not None and record.failed is None:
            record = OpRecord(cell.calls + record.calls,
                              ran_eagerly=cell.ran_eagerly or record.ran_eagerly)
        return cls(scope, source, value, record)

    def output(self, of: str | None) -> tuple[str, object]:
        output = dense(self.output_source, self.value, "%jacobian {0} wrt {1}")
        if self.record is None:  # (its own graph, each pass)
            refuse_recomputing(output, self.output_source, self.replay)
        return self.output_source, output

    def inputs(self, wrt, output, output_name: str) -> dict:
        if wrt:
            return dense_inputs(named(self.scope, wrt, output, output_name, "wrt"))
        return dense_inputs(found_inputs(self.scope, output, output_name, [], "wrt"))

    def release(self) -> None:
        if self.record is not None:
            self.record.release()


@dataclass(eq=False)
class Given:
    """:func:`vjp_magic.differentiate` (or ``entry``, the function called, e.g.
    ``"hessian"``, which the advice names): the tensors themselves."""

    tensor: object
    given_inputs: object
    names: object = None
    output_name: str = "y"
    entry: str = "differentiate"
    log = record = output_source = namespace = scope = None

    @property
    def replay(self) -> str:
        """How, from here, the output's operations are recorded (the refusals' advice)."""
        return (f"Pass vjp_magic.{self.entry} a function computing it ({self.entry}(lambda: "
                "f(x), x)): it is called once, recorded, and a replay of its operations "
                "differentiated")

    def output(self, of: str | None) -> tuple[str, object]:
        output = dense(self.output_name, self.tensor, f"vjp_magic.{self.entry}({{}}, x)")
        # no record: its own graph, each pass
        refuse_recomputing(output, self.output_name, self.replay)
        return self.output_name, output

    def inputs(self, wrt, output, output_name: str) -> dict:
        return dense_inputs(named_inputs(self.given_inputs, self.names))


def _names_read(sources) -> set[str]:
    """The sources themselves and every name their expressions read."""
    found = set(sources)
    for source in sources:
        try:
            found.update(n.id for n in ast.walk(ast.parse(source, mode="eval"))
                         if isinstance(n, ast.Name))
        except SyntaxError:
            pass
    return found


def lookup(scope, source: str, role: str):
    """The value of a name or expression in the user's namespace."""
    ns = scope.user_ns
    if source.isidentifier():
        if source not in ns:
            hidden = getattr(scope, "user_ns_hidden", {})  # IPython's own: open, exit, In
            close = _near(source, [n for n in ns if is_visible_name(n) and n not in hidden])
            hint = f" Did you mean {close}?" if close else ""
            raise VJPUsageError(f"No variable named {source!r} ({role}).{hint}")
        return ns[source]
    try:
        return eval(source, scope.user_global_ns, ns)
    except SyntaxError as error:
        bracketed = parameter_expression(source)  # net.0.weight, as named_parameters() has it
        hint = f" Index with brackets: {bracketed}" if bracketed != source else ""
        raise VJPUsageError(f"Could not read {source!r} ({role}): {error.msg}.{hint}") from None
    except NameError as error:
        raise VJPUsageError(f"{error} ({role}).{_meant(scope, source)}") from None
    except Exception as error:  # noqa: BLE001 - the user's expression failed: say so, no traceback
        hint = _meant(scope, source) if isinstance(error, AttributeError) else ""
        raise VJPUsageError(
            f"Could not evaluate {source!r} ({role}): {type(error).__name__}: {error}."
            f"{hint}"
        ) from None


def _near(word: str, candidates) -> str | None:
    """The candidate closest to a mistyped ``word`` (the same but for case first), if any."""
    candidates = list(candidates)
    same = [c for c in candidates if c.lower() == word.lower()]
    close = same or difflib.get_close_matches(word, candidates, n=1, cutoff=0.7)
    return close[0] if close else None


def _meant(scope, source: str) -> str:
    """`` Did you mean model.layers?`` for a mistyped name or attribute of ``source`` (a
    chain of names, attributes and subscripts): the first step that is not there replaced
    by the nearest one there. Read from the modules' and objects' own dicts: no property
    nor other code of the user's runs again."""
    try:
        node = ast.parse(source, mode="eval").body
    except SyntaxError:
        return ""
    chain = []
    while isinstance(node, (ast.Attribute, ast.Subscript)):
        chain.append(node)
        node = node.value
    if not isinstance(node, ast.Name):
        return ""
    ns = scope.user_ns
    if node.id not in ns:
        fixed = _near(node.id, [n for n in ns if is_visible_name(n)])
        return _replaced(source, node, node.id, fixed)
    value = ns[node.id]
    for step in reversed(chain):
        if isinstance(step, ast.Subscript):  # a container module's own entry, else no hint
            key = step.slice.value if isinstance(step.slice, ast.Constant) else None
            keyed = isinstance(value, (torch.nn.ModuleList, torch.nn.Sequential,
                                       torch.nn.ModuleDict)) and isinstance(key, (int, str))
            value = value._modules.get(str(key)) if keyed else None
            if value is None:
                return ""
            continue
        names = _attributes(value)
        if step.attr not in names:
            return _replaced(source, step, step.attr, _near(step.attr, names))
        value = names[step.attr]
    return ""


def _attributes(value) -> dict:
    """What a dot reaches on ``value`` without running code: a module's parameters, buffers
    and submodules, then any object's own attributes."""
    found = dict(getattr(value, "__dict__", None) or {})
    if isinstance(value, torch.nn.Module):
        for store in (value._parameters, value._buffers, value._modules):
            found.update(store)
    return {k: v for k, v in found.items() if isinstance(k, str) and not k.startswith("_")}


def _replaced(source: str, node: ast.AST, wrong: str, right: str | None) -> str:
    """`` Did you mean <source with wrong, ending node, replaced by right>?``, or ``""``."""
    if right is None or "\n" in source:
        return ""
    written = source.encode()  # ast's offsets count UTF-8 bytes
    end, start = node.end_col_offset, node.end_col_offset - len(wrong.encode())
    return f" Did you mean {written[:start].decode()}{right}{written[end:].decode()}?"


@no_subclass_code()  # a subclass's __torch_function__ is the user's code
def dense(name: str, output, how: str):
    """The output, unless it is a sparse tensor: its derivatives are computed, but nothing
    past them reads a sparse layout, so the student is told to densify it (``how``: where
    the dense output goes, e.g. ``%%vjp --of {}``, ``{1}`` the inputs where it names them);
    or a meta tensor (no values); or a tuple, list or dict of tensors (one of them named);
    or a tensor subclass with a ``__torch_dispatch__`` (the user's code, run by each pass)."""
    refuse_sequence(name, output, how)
    refuse_unanalysable(name, output)
    if not isinstance(output, torch.Tensor) or output.layout == torch.strided:
        return output
    densified = f"{operand(name)}.to_dense()"
    raise VJPUsageError(
        f"{name} is a sparse tensor ({str(output.layout).replace('torch.', '')}): vjp_magic "
        f"shows the derivatives of dense outputs. Differentiate {densified} instead: "
        f"{how.format(densified, 'x')}.")


@no_subclass_code()  # a subclass's __torch_function__ is the user's code
def dense_inputs(inputs: dict) -> dict:
    """The inputs, unless one is a sparse tensor (the analysis reshapes every input), a
    meta tensor or a tensor subclass with a ``__torch_dispatch__``."""
    for name, value in inputs.items():
        refuse_unanalysable(f"Input {name}", value)
        if isinstance(value, torch.Tensor) and value.layout != torch.strided:
            layout = str(value.layout).replace("torch.", "")
            raise VJPUsageError(
                f"Input {name} is a sparse tensor ({layout}): vjp_magic differentiates with "
                f"respect to dense tensors. Make {name} dense with requires_grad=True and "
                f"call {name}.to_sparse() inside the computation.")
    return inputs


def named(scope, names, output, output_name: str, role: str) -> dict:
    """The inputs the user named (``--wrt x w``, ``%jacobian y wrt x``); a module
    (``--wrt mlp``) or its ``mlp.parameters()`` stands for all its parameters, named
    ``mlp.0.weight`` as ``named_parameters()`` spells them."""
    inputs, frozen, owned = ChosenInputs(), [], set()
    for name in names:
        value = lookup(scope, name, role)
        expanded = _expand(scope, name, value, frozen)
        if isinstance(value, torch.nn.Module) and name.isidentifier() and is_visible_name(name):
            owned.update(id(t) for t in expanded.values())  # held by the namespace's module
        add_named(inputs, expanded)
    held = functools.cache(lambda: _namespace_parameter_names(scope))  # read once, if at all
    for name, value in inputs.items():
        if id(value) in owned:  # (in held() by construction: never made off the graph)
            continue
        if _made_off_graph(scope, name, value, output, held):
            raise VJPUsageError(_new_tensor_message(scope, name, output, output_name, role))
    inputs.notes = _frozen_note(frozen)
    return inputs


def _frozen_note(frozen: list[str]) -> tuple:
    """The sentence naming the parameters a module given to ``--wrt`` holds frozen
    (``requires_grad=False``), left out: frozen is not lost."""
    if not frozen:
        return ()
    shown = ", ".join(f"`{n}`" for n in frozen[:3])
    more = f" and {len(frozen) - 3:,} more" if len(frozen) > 3 else ""
    how = f"`{frozen[0]}.requires_grad_()`" if len(frozen) == 1 else \
        "`.requires_grad_()` on those wanted"
    return (marked(f"Left out, frozen (`requires_grad=False`): {shown}{more}; call {how} "
                   f"before computing the output to include "
                   f"{'it' if len(frozen) == 1 else 'them'}."),)


def _expand(scope, source: str, value, frozen: list | None = None) -> dict:
    """One named input, or the parameters a module or a parameter iterator stands for;
    ``frozen`` gets the names (as the cell writes them) of a module's parameters left out,
    which do not require grad."""
    if isinstance(value, torch.nn.Module):
        found = module_parameters(value, source)
        if frozen is not None:
            frozen += [parameter_expression(f"{source}.{n}")
                       for n, p in value.named_parameters() if not p.requires_grad]
        return found
    if not isinstance(value, (types.GeneratorType, list, tuple)):
        return {source: value}
    items = list(value)
    pairs = [i for i in items if isinstance(i, tuple) and len(i) == 2 and isinstance(i[0], str)]
    pairs = pairs if len(pairs) == len(items) else []  # named_parameters()
    tensors = [pair[1] for pair in pairs] if pairs else items
    if not tensors or not all(isinstance(t, torch.Tensor) for t in tensors):
        return {source: value if not isinstance(value, types.GeneratorType) else items}
    base = re.fullmatch(r"\s*([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)\s*\.\s*(?:named_)?"
                        r"parameters\s*\(\s*\)\s*", source)
    owner = lookup(scope, base.group(1), "--wrt") if base else None
    if isinstance(owner, torch.nn.Module):
        remember_spellings(owner, base.group(1))
        spelled = {id(p): f"{base.group(1)}.{n}" for n, p in owner.named_parameters()}
    elif pairs:
        spelled = {id(p): n for n, p in pairs}
    else:
        spelled = _namespace_parameter_names(scope)
    found = {spelled.get(id(t), f"{source}[{i}]"): t for i, t in enumerate(tensors)
             if t.requires_grad}
    if not found:
        raise VJPUsageError(f"{source} holds no tensors that require grad.")
    return found


def _namespace_parameter_names(scope) -> dict:
    """id(tensor) -> its name in the user's namespace: ``module.0.weight`` for the parameters
    of the modules there, else the tensor's own name."""
    spelled: dict = {}
    visible = [(n, v) for n, v in scope.user_ns.items() if is_visible_name(n)]
    for name, value in visible:
        if isinstance(value, torch.nn.Module):
            remember_spellings(value, name)
            for pname, parameter in value.named_parameters():
                spelled.setdefault(id(parameter), f"{name}.{pname}")
    for name, value in visible:
        if isinstance(value, torch.Tensor):
            spelled.setdefault(id(value), name)
    return spelled


class ChosenInputs(dict):
    """Inputs found, not named (name → tensor), with the sentences that say how they were
    chosen (``notes``: shown beneath the derivatives)."""

    notes: tuple = ()


def found_inputs(scope, output, output_name: str, assigned, flag: str = "--wrt") -> dict:
    """The named leaves with ``requires_grad=True`` the output's graph reaches. Where none is
    named, the parameters of the namespace's modules it reaches, as ``--wrt MODULE`` names
    them (a model called on data that needs no grad); where some are, a note names the
    module parameters left out. ``flag``: how the line names inputs (``--wrt``, ``wrt``)."""
    if not (isinstance(output, torch.Tensor) and output.requires_grad):
        return {}
    leaves = graph_leaves(output)
    modules = reached_modules(scope.user_ns, leaves, assigned)
    try:
        found = ChosenInputs(find_inputs(output, scope.user_ns, assigned, output_name))
    except VJPUsageError:
        if not leaves:
            raise
        if not modules:
            raise VJPUsageError(_unnamed_message(output_name, flag, _leaf_copies(
                scope.user_ns, output, assigned))) from None
        found, frozen = ChosenInputs(), []
        for name, module in modules.items():
            found.update(_expand(scope, name, module, frozen))
        names, first = " ".join(modules), parameter_expression(next(iter(found)))
        found.notes = (marked(
            f"No named tensor with `requires_grad=True` reaches {output_name}, so the inputs "
            f"are the parameters of {_listed(list(modules))} (as `{flag} {names}`); name fewer "
            f"with `{flag}`, e.g. `{flag} {first}`."),) + _frozen_note(frozen)
        return found
    found.notes = _left_out(found, modules, leaves, output_name, flag)
    taken = {id(t) for t in found.values()} | {
        id(p) for module in modules.values() for p in module.parameters()}
    if any(i not in taken for i in leaves):  # a leaf with no name: a named copy of it?
        copies = _leaf_copies(scope.user_ns, output, assigned, taken)
        found.notes += _copies_left_out(found, copies, output_name, flag)
    return found


def reached_modules(namespace, leaves: dict, assigned=()) -> dict:
    """name → module, for the namespace's modules whose parameters ``leaves`` (id → leaf
    tensor) holds: the fewest names that cover them, a module holding more first (``mlp``
    before its layer ``mlp[0]`` bound to a name), the cell's own names before the rest."""
    order = {name: k for k, name in enumerate(ordered_names(namespace, assigned))}
    candidates = []
    for name in order:
        value = namespace[name]
        if isinstance(value, torch.nn.Module):
            reached = {id(p) for p in value.parameters() if id(p) in leaves}
            if reached:
                candidates.append((-len(reached), order[name], name, reached))
    chosen, covered = {}, set()
    for _, _, name, reached in sorted(candidates):
        if reached - covered:
            chosen[name] = namespace[name]
            covered |= reached
    return chosen


def _left_out(found: dict, modules: dict, leaves: dict, output_name: str, flag: str) -> tuple:
    """A note naming the module parameters the output reaches that ``found`` leaves out, with
    the flag that takes them in too."""
    taken = {id(t) for t in found.values()}
    left: list[str] = []
    for name, module in modules.items():
        named = {n: p for n, p in module_parameters(module, name).items() if id(p) in leaves}
        missing = [n for n, p in named.items() if id(p) not in taken]
        if missing:
            left += [name] if len(missing) == len(named) \
                else [parameter_expression(n) for n in missing]
    if not left:
        return ()
    words = _listed([f"{n}'s parameters" if n in modules else n for n in left])
    return (marked(f"{output_name} also depends on {words}, left out here: "
                   f"`{flag} {' '.join(list(found) + left)}` includes them."),)


def _copies_left_out(found: dict, copies, output_name: str, flag: str) -> tuple:
    """A note naming the tensors the output is computed from that are copies of a leaf with
    no name (``x = torch.tensor(..., requires_grad=True).double()``), left out of ``found``."""
    left = [name for name, _ in copies if name not in found]
    if not left:
        return ()
    return (marked(f"{output_name} also depends on {_listed(left)}, not a leaf (computed from a "
                   "tensor that requires grad and has no name, e.g. by `.double()` after "
                   f"`requires_grad=True`), left out here: `{flag} {' '.join([*found, *left])}` "
                   "includes it."),)


def _listed(names: list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def _unnamed_message(output_name: str, flag: str, copies: Sequence[tuple] = ()) -> str:
    """No name in the notebook holds the tensors that require grad the output reaches;
    ``copies``: the named tensors computed straight from such a tensor, (name, tensor),
    which the student took for the inputs (``x = torch.tensor(..., requires_grad=True)
    .double()``)."""
    if copies:
        names = " ".join(name for name, _ in copies)
        name, value = copies[0]
        kind = value.grad_fn.name()
        if kind == "ToCopyBackward0":  # .double(), .float(), .to(...), .cuda()
            made = [f"dtype={value.dtype}"] + ([f"device='{value.device}'"]
                                              if value.device.type != "cpu" else [])
            return (f"{name} is not a leaf: converting (.double(), .to(...), .cuda()) after "
                    "requires_grad=True makes a copy, and the leaf before it has no name. "
                    f"Differentiate with respect to the copy ({flag} {names}), or convert "
                    f"before requiring grad: {name} = torch.tensor(..., {', '.join(made)}, "
                    "requires_grad=True).")
        return (f"{name} is not a leaf: it is computed ({kind}) from a tensor that requires "
                f"grad and has no name. Differentiate with respect to {name} ({flag} {names}), "
                f"or bind that tensor to a name in the cell and compute {name} from it.")
    return (f"{output_name} depends on tensors that require grad, but none of them is bound to "
            "a name in the notebook, nor is a module holding them. Bind the module or the "
            f"tensor to a name in the cell, then name it with {flag} NAME.")


def _leaf_copies(namespace, output, assigned, named: set[int] = frozenset()) -> list[tuple]:
    """(name, tensor) for the named tensors on ``output``'s graph computed straight from a
    leaf that requires grad and is not in ``named`` (ids) (a conversion, a clone, any op),
    the cell's names first; never the output (nor a name bound to its node)."""
    on_graph = {id(node): node for node in walk_graph(output)} if output.grad_fn else {}
    copies = []
    for name in ordered_names(namespace, assigned):
        value = namespace[name]
        node = value.grad_fn if isinstance(value, torch.Tensor) and value is not output \
            else None  # (never the output itself)
        if node is not None and id(node) in on_graph and any(
                isinstance(getattr(n, "variable", None), torch.Tensor)
                and id(n.variable) not in named for n, _ in node.next_functions):
            copies.append((name, value))
    return copies


def number_output_hint(ns, assigned) -> str | None:
    """A clearer message when the cell's last assignment is a Python number (e.g. ``.item()``)."""
    for name in reversed(assigned):
        value = ns.get(name)
        if isinstance(value, (int, float, complex)) and not isinstance(value, bool):
            return (
                f"{name} is a Python {type(value).__name__} ({value!r}), not a tensor: .item(), "
                "float() and the math module leave autograd. Keep it a tensor (e.g. "
                f"{name} = (x**2).sum()) and vjp_magic shows its derivatives."
            )
        if isinstance(value, torch.Tensor):
            return None
    return None


def _detached_hint(run: CellRun) -> str | None:
    """No output with history, and the cell read an input through ``.data`` or
    ``.detach()``: that read, its line, and the line without it."""
    advice = detached_advice(run.source, run.namespace)
    if advice is None:
        return None
    names = [n for n in run.assigned if isinstance(run.namespace.get(n), torch.Tensor)
             and not run.namespace[n].requires_grad]
    lead = f"{names[-1]} has no autograd history: " if names else "No output has autograd " \
        "history: "
    return lead + advice


def _no_grad_hint(run: CellRun, message: str) -> str | None:
    """No tensor of the cell requires grad: the advice in its own names (its line that makes
    the input, amended), where the message is the generic one."""
    if not message.startswith(NO_GRAD):
        return None
    tensors = [n for n in run.assigned if isinstance(run.namespace.get(n), torch.Tensor)]
    advice = own_requires_grad_advice(run.source, run.namespace,
                                      tensors[-1] if tensors else None, run.reads)
    return no_grad_message(f"{advice[0].lower()}{advice[1:].rstrip('.')}.") if advice else None


def _made_off_graph(scope, source: str, value, output, held) -> bool:
    """An input expression (not a plain name) whose value is a new tensor that ``output``'s
    graph does not reach: differentiating with respect to it would give false zeros. A new
    tensor: one with a graph (``x.T``, ``x**2``), or a leaf no name nor module of the
    namespace holds (``x.detach()``, ``x.detach().requires_grad_()``, ``x.data``).
    ``held()``: the ids of the namespace's tensors (the caller reads them once for all the
    inputs it checks, as ``--wrt model``'s parameters)."""
    if source.isidentifier() or not isinstance(value, torch.Tensor) \
            or not (isinstance(output, torch.Tensor) and output.requires_grad):
        return False
    if value.grad_fn is None:
        if not value.requires_grad and _held(scope, source, value):
            return False  # model.scale, d['w']: held, read by the cell; it needs grad (said next)
        if id(value) in held():
            return False  # a tensor the notebook holds (mlp[0].weight): its zeros are true
    return not depends_on(output, value)


def _held(scope, source: str, value: torch.Tensor) -> bool:
    """Whether ``source`` (no call in it) reads ``value`` as it is stored: a module's buffer
    or parameter, an object's attribute, a dict's or list's entry (not a view made on the
    way, as ``x.T``)."""
    try:
        node = ast.parse(source, mode="eval").body
    except SyntaxError:
        return False
    if not isinstance(node, (ast.Attribute, ast.Subscript)) or \
            any(isinstance(part, ast.Call) for part in ast.walk(node)):
        return False
    try:
        base = evaluate(scope, node.value)
    except Exception:  # noqa: BLE001 - not held as written
        return False
    if isinstance(node, ast.Attribute):
        if isinstance(base, torch.nn.Module):
            return any(store.get(node.attr) is value for store in (base._buffers,
                                                                   base._parameters))
        return getattr(base, "__dict__", {}).get(node.attr) is value
    items = base.values() if isinstance(base, (dict, torch.nn.ParameterDict)) else \
        base if isinstance(base, (list, tuple, torch.nn.ParameterList)) else ()
    return any(item is value for item in items)


def _new_tensor_message(scope, source: str, output, output_name: str,
                        role: str = "--wrt") -> str:
    """An input expression (``x[0]``, ``w.T``) made a new tensor off the output's graph."""
    base, outer, value = None, None, None
    node = ast.parse(source, mode="eval").body
    while base is None and isinstance(node, (ast.Subscript, ast.Attribute, ast.Call)):
        outer, node = node, node.func if isinstance(node, ast.Call) else node.value
        if any(isinstance(part, ast.Call) for part in ast.walk(node)):
            continue  # never call the user's functions again
        try:
            value = evaluate(scope, node)
        except Exception:  # noqa: BLE001
            continue
        if isinstance(value, torch.Tensor) and depends_on(output, value):
            base = ast.unparse(node)
    if base is None:
        advice = "Differentiate with respect to the named tensor it was made from"
    elif re.fullmatch(rf"{re.escape(base)}(\.(data|detach\(\)|detach_\(\)|clone\(\)|"
                      r"requires_grad_\(\)|requires_grad_\(True\)))+", source.replace(" ", "")):
        advice = (f"It holds {base}'s values without its graph: differentiate with respect "
                  f"to {base} itself ({role} {base})")
    else:
        index = _index_hint(outer, value) if isinstance(outer, ast.Subscript) else None
        advice = (f"Differentiate with respect to {base} ({role} {base}) and index the "
                  f"result, e.g. r.derivatives['{base}'][{index}]" if index else
                  f"Differentiate with respect to {base} ({role} {base}) and transform the "
                  f"result (r.derivatives['{base}'])")
    return (f"{source} makes a new tensor, and {output_name} was not computed from it, so "
            f"every derivative would be a false 0. {advice}; or compute {output_name} from "
            f"that tensor in the cell (t = {source}, then {output_name} from t, {role} t).")


def _index_hint(subscript: ast.Subscript, base: torch.Tensor) -> str | None:
    """``x[0]`` → ``..., 0`` (the input's own axes come last in ``r.derivatives``)."""
    items = subscript.slice.elts if isinstance(subscript.slice, ast.Tuple) else [subscript.slice]
    if any(isinstance(i, ast.Constant) and i.value in (Ellipsis, None) for i in items):
        return None
    rest = [":"] * max(base.dim() - len(items), 0)
    return ", ".join(["..."] + [ast.unparse(i) for i in items] + rest)


__all__ = ["FromCell", "FromExpression", "Given", "Subject", "found_inputs", "lookup", "named",
           "number_output_hint"]
