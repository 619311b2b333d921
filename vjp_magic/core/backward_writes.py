"""What the user's custom backwards write in place while the analysis calls them: put back.

A plain run of a cell calls no backward; the analysis calls a custom ``autograd.Function``'s
backward in every pass (and once on zeros, to judge it: :mod:`.reentrant`). A backward that
writes a tensor in place (``x.add_(1)`` on its saved input, a global it reads, a tensor on its
``ctx``) would leave the user's tensors changed after the cell, and make every later pass read
the changed value (autograd's version check refuses it, blaming an update the cell never made).

Only a graph with a user's custom Function pays: :func:`keep_for` copies every tensor such a
backward can reach (what its nodes saved, their ``ctx``'s tensors and modules, the tensors
and modules its code reads by a global name or a closure, the graph's leaves) with its
version counter, when the analysis starts, after the user's code ran. :func:`check`, after
each pass and probe, compares the versions (cheap): a write is put back (values, then the
version counter, where this PyTorch can set it) and refused with a message naming the
Function whose backward wrote what. :func:`writes_kept` bounds it to one analysis.
"""
from __future__ import annotations

import contextlib
import threading
import types

import torch

from .errors import VJPUsageError
from .origin import users_function
from .tagging import graph_leaves


class _Kept(threading.local):
    # (tensor, version, copy, Function names) of each tensor a user's backward can reach,
    # while an analysis (:func:`writes_kept`) on a graph with a custom Function runs
    watch: list | None = None
    active = False


_KEPT = _Kept()


@contextlib.contextmanager
def writes_kept():
    """One analysis's scope: what :func:`keep_for` copied inside it is compared when it ends
    (put back and refused where a write was missed) and let go; nested ones keep their own."""
    outer = _KEPT.watch, _KEPT.active
    _KEPT.watch, _KEPT.active = None, True
    try:
        yield
        check()
    finally:
        if _KEPT.watch:  # (nothing copied, as a rule: no torch.no_grad entered for nothing)
            _restore(_KEPT.watch)
        _KEPT.watch, _KEPT.active = outer


def keep_for(output, functions) -> None:
    """Copies what the backwards of ``functions`` (the ``BackwardCFunction`` nodes of
    ``output``'s graph, the user's) can write, the graph's leaves and ``output``, inside
    :func:`writes_kept` (else nothing)."""
    if not _KEPT.active:
        return
    check()  # (a graph judged before in this analysis: its copies compared before let go)
    leaves = [*graph_leaves(output).values(), output]
    found: dict[int, list] = {}
    names = set()  # (a leaf: any of them may hold it, unseen where PyTorch hides the saved)
    for node in functions:
        names.add(name := _function_name(node))
        for tensor in _reachable(node):
            entry = found.setdefault(id(tensor), [tensor, set()])
            entry[1].add(name)
    for leaf in leaves:
        found.setdefault(id(leaf), [leaf, names])
    with torch.no_grad():
        _KEPT.watch = [(t, t._version, t.detach().clone(), frozenset(owners))
                       for t, owners in found.values()]


def check() -> None:
    """After a pass or a probe: where a user's backward wrote a kept tensor in place, every
    one written put back and a :class:`VJPUsageError` naming the Function and the tensor."""
    watch = _KEPT.watch
    if not watch:
        return
    changed = [entry for entry in watch if entry[0]._version != entry[1]]
    if not changed:
        return
    _restore(changed)
    raise VJPUsageError(written_message(changed))


def _restore(entries) -> None:
    """Each entry's tensor whose version moved: its copied values, then its version."""
    with torch.no_grad():
        for tensor, version, copy, _ in entries:
            if tensor._version != version:
                tensor.detach().copy_(copy)
                _set_version(tensor, version)


def _set_version(tensor, version: int) -> None:
    """``tensor``'s version counter set back (newer PyTorch takes sequences, 2.5 one tensor);
    left as it is where this PyTorch has no setter."""
    setter = getattr(torch._C._autograd, "_unsafe_set_version_counter", None)
    if setter is None:
        return
    try:
        setter((tensor,), (version,))
    except TypeError:
        setter(tensor, version)


def written_message(changed) -> str:
    """The usage error for tensors a user's backward wrote in place during the analysis."""
    owners = sorted({n for entry in changed for n in entry[3]})
    who = " or ".join(owners) or "a custom autograd.Function"
    labels = list(dict.fromkeys(_label(entry[0], entry[3]) for entry in changed))
    what, verb = ", ".join(labels), ("are" if len(labels) > 1 else "is")
    return (f"{who}'s backward writes {what} in place: a plain run of the cell calls no "
            "backward, vjp_magic calls it in each of its passes, so each call would change "
            f"{what} again and the next pass read changed values. {_upper(what)} {verb} put "
            f"back as your code left {'them' if len(labels) > 1 else 'it'}, and no derivative is "
            f"shown. Make {who}'s backward leave every tensor it reads unchanged (compute into "
            "a new tensor, or write into a copy: t = t.clone()), then run it again.")


def _upper(text: str) -> str:
    return text[:1].upper() + text[1:]


def _label(tensor, owners) -> str:
    """The name the user's namespace (the backward's globals) gives ``tensor``, or words."""
    for name in sorted(owners):
        for scope in _SCOPES.get(name, ()):
            for key, value in list(scope.items()):
                if isinstance(value, torch.Tensor) and _same(value, tensor) \
                        and not key.startswith("_"):
                    return key
    return "a tensor it saved or holds"


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a is b or (a.data_ptr() == b.data_ptr() and a.shape == b.shape
                      and a.dtype == b.dtype and a.stride() == b.stride())


_SCOPES: dict[str, list] = {}  # a Function's name → its backward's globals (for the words)


def _function_name(node) -> str:
    cls = getattr(node, "_forward_cls", None)
    name = getattr(cls, "__name__", None) or node.name().removesuffix("Backward")
    backward = getattr(cls, "backward", None)
    scope = getattr(getattr(backward, "__func__", backward), "__globals__", None)
    if isinstance(scope, dict):
        _SCOPES[name] = [scope]
    return name


def _reachable(node) -> list:
    """The tensors ``node``'s backward can reach: what it saved, its ``ctx``'s tensors and
    modules, the tensors and modules its code reads by a global name or a closure."""
    from .graph_facts import raw_saved
    from .reentrant import _held
    found = [saved.data for saved in raw_saved(node)
             if isinstance(getattr(saved, "data", None), torch.Tensor)]
    held = _held(vars(node).values()) if hasattr(node, "__dict__") else []
    held += read_by(getattr(getattr(node, "_forward_cls", None), "backward", None))
    for value in held:
        if isinstance(value, torch.Tensor):
            found.append(value)
        elif isinstance(value, torch.nn.Module):
            found.extend(value.parameters())
            found.extend(value.buffers())
    return [t for t in found if type(t) is torch.Tensor or isinstance(t, torch.nn.Parameter)]


READ_DEPTH, READ_MOST = 4, 64  # helper calls followed, and functions read, at most


def read_by(function) -> list:
    """The objects a Python ``function`` (or staticmethod) reads by a global name (followed
    by attributes of modules and classes) or a closure, and what the user's own Python
    functions among them read in turn (a helper called with a generator or tensor of its
    module's: up to :data:`READ_DEPTH` calls deep, :data:`READ_MOST` functions; library
    code is not followed); [] for anything else."""
    from .reentrant import _globals_read
    found, seen, todo = [], set(), [(function, 0)]
    while todo and len(seen) < READ_MOST:
        now, depth = todo.pop()
        now = getattr(now, "__func__", now)
        if not isinstance(now, types.FunctionType) or id(now) in seen:
            continue
        seen.add(id(now))
        closed = dict(zip(now.__code__.co_freevars, map(_contents, now.__closure__ or ())))
        read = _globals_read(now.__code__, {**now.__globals__,
                                            **{f"*{k}": v for k, v in closed.items()}})
        read += list(closed.values())
        found += read
        if depth < READ_DEPTH:
            todo += [(f, depth + 1) for f in read if users_function(f)]
    return found


def _contents(cell):
    """A closure cell's value (None while it is empty)."""
    try:
        return cell.cell_contents
    except ValueError:
        return None


__all__ = ["check", "keep_for", "read_by", "writes_kept", "written_message"]
