"""Whether a cell can call ``torch.compile``'d code, found before it runs.

The recorder is a function mode on torch's stack: dynamo would trace and guard on it (every
``%%vjp`` cell recompiling), so under it compiled code can only run eagerly, which is not
what a plain cell runs (``torch.compiler.is_compiling()`` is False, ``fullgraph=True``
refuses nothing, nothing is compiled). A cell that can call compiled code therefore runs
unrecorded, exactly as a plain cell (:func:`compiled_callee` names what it reaches); where
one is reached all the same (found by no scan), :mod:`.record` runs it eagerly and says so
(:func:`eagerly_notes`).

The scan reads only: the names and ``name.attr`` chains the cell's code loads, resolved in
the user's namespace through modules and classes, and what those reach
(:func:`~vjp_magic.core.reach.reached`: containers, a user's objects, the globals
and closures of the user's functions; no user code runs); the submodules of every
``nn.Module`` among them (of a user's module also its attributes and its classes' functions:
``forward``); the getters of a user's object's properties (read, never called); and
``net.compile`` in the cell's syntax tree. Its cost: ~25-45 us thread CPU for the per-sample
MLP's function, ~0.25 ms for a cell reaching a 20-layer model and a dict of 100 tensors.
"""
from __future__ import annotations

import ast
import contextlib
import sys
import types

import torch

from ..core.reach import reached, users_type
from ..core.tagging import is_visible_name
from .record import OpRecord, recording

MODULES_MOST = 512  # nn.Modules opened at most (their submodules, attributes, methods)


def recorded(namespace: dict, record_ops: bool, codes=(), trees=(), values=(),
             who: str = "cell"):
    """The recording of what is about to run (:func:`~.record.recording`): code objects
    ``codes`` in ``namespace`` (a cell, an expression; ``trees``: their syntax trees) or
    callables ``values`` (a function given), where asked for; where they can call
    ``torch.compile``'d code, none: an empty record that says why (``who`` calls it; it then
    runs exactly as a plain run)."""
    if not record_ops:
        return contextlib.nullcontext()
    callee = compiled_callee(namespace, [c for c in codes if c is not None],
                             [t for t in trees if t is not None], values)
    if callee is None:
        return recording()
    record = OpRecord()
    record._give_up(unrecorded_why(callee, who))
    return contextlib.nullcontext(record)


def expression_parts(source: str) -> tuple[tuple, tuple]:
    """((its code,), (its syntax tree,)) of expression ``source``; empty where it is no Python
    expression (its own evaluation says so)."""
    try:
        tree = ast.parse(source.strip(), "<expression>", "eval")
        return (compile(tree, "<expression>", "eval"),), (tree,)
    except (SyntaxError, ValueError):
        return (), ()


def compiled_callee(namespace: dict, codes=(), trees=(), values=()) -> str | None:
    """How to name the ``torch.compile``'d callable (or ``torch.compile`` itself, or a
    module's ``.compile()`` in ``trees``) that the code objects ``codes`` can reach from
    ``namespace``, or callables ``values`` reach; None where they reach none. The code is
    read as a function of the user's that is never called (what it reads by name, and
    on: :func:`~vjp_magic.core.reach.reached`)."""
    compiles = next(filter(None, (_module_compiles(t, namespace) for t in trees)), None)
    if compiles is not None:
        return compiles
    todo = [*values, *(types.FunctionType(code, namespace) for code in codes)]
    seen: set = set()
    modules = MODULES_MOST
    while todo:
        more = []
        for value in reached(todo):
            if id(value) in seen:
                continue
            seen.add(id(value))
            if _compiles(value):
                return _label(value, namespace)
            if isinstance(value, torch.nn.Module) and modules > 0:
                modules -= 1
                more += _module_parts(value)
            elif type(value).__module__ != "builtins" and not isinstance(value, type) \
                    and users_type(type(value)):  # (an instance of the user's class)
                more += _getters(type(value))
        todo = more
    return None


def _module_compiles(tree: ast.AST, namespace: dict) -> str | None:
    """``net.compile`` (``net.sub.compile``) where ``tree`` reads it: a user's ``nn.Module``'s
    ``compile`` method, which compiles the module in place (its submodules read through
    ``_modules``, no attribute got)."""
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute) or node.attr != "compile":
            continue
        chain, part = [], node.value
        while isinstance(part, ast.Attribute):
            chain.insert(0, part.attr)
            part = part.value
        if not isinstance(part, ast.Name):
            continue
        value = namespace.get(part.id)
        for name in chain:
            value = vars(value).get("_modules", {}).get(name) \
                if isinstance(value, torch.nn.Module) else None
        if isinstance(value, torch.nn.Module):
            return ".".join([part.id, *chain, "compile"])
    return None


def _compiles(value) -> bool:
    """Whether ``value`` is compiled code (a compiled function or module, a module compiled in
    place) or ``torch.compile`` itself."""
    if value is torch.compile:
        return True
    frame = sys.modules.get("torch._dynamo.eval_frame")
    if frame is None:  # dynamo never imported: nothing was compiled
        return False
    if isinstance(value, frame.OptimizedModule):
        return True
    if isinstance(value, torch.nn.Module):
        return vars(value).get("_compiled_call_impl") is not None
    return isinstance(value, types.FunctionType) \
        and "_torchdynamo_orig_callable" in vars(value)


def _module_parts(module: torch.nn.Module) -> list:
    """A module's submodules; for a module of the user's class, also its other attributes (not
    parameters or buffers: those are tensors) and the functions its own classes define:
    ``forward`` and helpers (a library's module runs no code of the user's)."""
    held = list(vars(module).get("_modules", {}).values())
    if not users_type(type(module)):
        return held
    held += [v for k, v in vars(module).items()
             if k[:1] != "_" and not isinstance(v, torch.Tensor)]
    return held + [f for cls in type(module).__mro__ if users_type(cls)
                   for f in vars(cls).values()
                   if isinstance(f, (types.FunctionType, staticmethod, classmethod))]


def _getters(cls: type) -> list:
    """The getters of the properties a user's classes define (read, never called)."""
    return [p.fget for c in cls.__mro__ if users_type(c) for p in vars(c).values()
            if isinstance(p, property) and p.fget is not None]


def _label(value, namespace: dict) -> str:
    """How a message names compiled code: the user's name for it, else its function's or
    module's."""
    name = next((k for k, v in namespace.items() if v is value and is_visible_name(k)), None)
    if name is not None:
        return name
    if isinstance(value, torch.nn.Module):
        orig = vars(value).get("_orig_mod", value)
        return type(orig).__name__
    orig = vars(value).get("_torchdynamo_orig_callable", value) \
        if isinstance(value, types.FunctionType) else value
    return getattr(orig, "__qualname__", None) or type(orig).__name__


def unrecorded_why(name: str, who: str = "cell") -> str:
    """Why the record is empty (``OpRecord.failed``), in one clause: ``who`` (the cell, the
    expression, the function) calls compiled code ``name``."""
    return (f"the {who} calls torch.compile'd code ({name}), which runs unrecorded, as in a "
            "plain run")


def eagerly_notes(record) -> list[str]:
    """The note where compiled code was reached under the recorder all the same (its name in
    ``record.ran_eagerly``, :func:`~.record.compiled_caller`): it ran eagerly."""
    name = getattr(record, "ran_eagerly", None)
    return [] if name is None else [
        f"The torch.compile'd function {name} ran eagerly while vjp_magic recorded it, not "
        "compiled: the values and derivatives shown are those of its Python code, which a "
        "compiled run may not give."]


__all__ = ["compiled_callee", "eagerly_notes", "expression_parts", "recorded", "unrecorded_why"]
