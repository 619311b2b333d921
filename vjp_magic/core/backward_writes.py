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
Function whose backward wrote what. What else such a backward changes (a call counted in a
list or a global, a name rebound, a numpy array written: :mod:`.user_effects`) is put back
after each pass without a refusal. :func:`writes_kept` bounds it to one analysis.
"""
from __future__ import annotations

import contextlib
import threading
import types

import torch

from . import own_generators, switches, user_effects
from .errors import VJPUsageError
from .origin import users_function
from .reach import (cell_contents, class_attribute, instance_dict, is_a, read_by, reached,
                    tensors_of)
from .tagging import graph_leaves


class _Kept(threading.local):
    # (tensor, version, copy, Function names) of each tensor a user's backward can reach,
    # while an analysis (:func:`writes_kept`) on a graph with a custom Function runs
    watch: list | None = None
    # what such a backward may change without changing a derivative, put back after each
    # pass without a refusal: (tensor, its .grad, that one's version and copy) of each
    # tensor it reaches, and (generator, state) of each of the user's generators it reaches
    grads: list | None = None
    generators: list | None = None
    # the Python state such a backward reaches (:func:`.user_effects.kept`): put back too
    effects: list | None = None
    # the switches such a backward can flip (:mod:`.switches`), put back after each pass
    switches: switches.Switches | None = None
    active = False


_KEPT = _Kept()


@contextlib.contextmanager
def writes_kept():
    """One analysis's scope: what :func:`keep_for` copied inside it is compared when it ends
    (put back and refused where a write was missed) and let go; nested ones keep their own."""
    outer = (_KEPT.watch, _KEPT.grads, _KEPT.generators, _KEPT.effects, _KEPT.switches,
             _KEPT.active)
    (_KEPT.watch, _KEPT.grads, _KEPT.generators, _KEPT.effects, _KEPT.switches,
     _KEPT.active) = \
        None, None, None, None, None, True
    try:
        yield
        check(final=True)
    finally:
        if _KEPT.watch:  # (nothing copied, as a rule: no torch.no_grad entered for nothing)
            put_back(_KEPT.watch)
        _put_back_unrefused()
        (_KEPT.watch, _KEPT.grads, _KEPT.generators, _KEPT.effects, _KEPT.switches,
         _KEPT.active) = outer


def keep_for(output, functions) -> None:
    """Copies what the backwards of ``functions`` (the ``BackwardCFunction`` nodes of
    ``output``'s graph, the user's) can write, the graph's leaves and ``output``, inside
    :func:`writes_kept` (else nothing)."""
    if not _KEPT.active:
        return
    check(final=True)  # (a graph judged before in this analysis: its copies compared in
    # full before they are let go)
    leaves = [*graph_leaves(output).values(), output]
    found: dict[int, list] = {}
    names, generators, holders = set(), {}, {}  # (a leaf: any of them may hold it, unseen
    held, backwards, contexts = [], [], []      # where PyTorch hides the saved)
    for node in functions:
        names.add(name := _function_name(node))
        tensors, reached_generators, node_held = _reachable(node)
        generators.update((id(g), g) for g in reached_generators)
        held += node_held
        holders.update((id(m), m) for m in node_held if is_a(m, switches.HOLDERS))
        backwards += users_code(class_attribute(type(node), "_forward_cls"))[1]
        contexts += [vars(node)] if hasattr(node, "__dict__") else []
        for tensor in tensors:
            entry = found.setdefault(id(tensor), [tensor, set()])
            entry[1].add(name)
    for leaf in leaves:
        found.setdefault(id(leaf), [leaf, names])
    with torch.no_grad():
        _KEPT.watch = [_copy(t, owners) for t, owners in found.values()]
        _KEPT.grads = [(t, t.grad, *((t.grad._version, t.grad.detach().clone())
                                     if t.grad is not None else (0, None)))
                       for t, _ in found.values() if t.is_leaf]
    _KEPT.generators = [(g, own_generators.state(g)) for g in generators.values()]
    _KEPT.effects = user_effects.kept(held, [getattr(b, "__func__", b) for b in backwards],
                                      contexts)
    _KEPT.switches = switches.taken([t for t, _ in found.values()], holders.values())


def check(final: bool = False) -> None:
    """After a pass or a probe: where a user's backward wrote a kept tensor in place, every
    one written put back and a :class:`VJPUsageError` naming the Function and the tensor.
    The values are compared bit for bit (a write through ``.data`` moves no version) at
    the analysis' end (``final``: before any result is shown), each pass by versions and
    memory alone (a comparison of every reachable parameter per pass would cost seconds)."""
    _put_back_unrefused(final)
    watch = _KEPT.watch
    if not watch:
        return
    changed = [entry for entry in watch if _written(*entry, bits=final)]
    if not changed:
        return
    put_back(changed)
    raise VJPUsageError(written_message(changed))


def _put_back_unrefused(bits: bool = True) -> None:
    """The ``.grad`` of each tensor a user's backward reaches (the same tensor, its values
    and version), the user's generators and the Python state it reaches
    (:mod:`.user_effects`), as they were when copied: a backward accumulating a parameter's
    gradient by hand, drawing noise or counting its calls changes no derivative, but a
    plain run of the cell calls no backward. Likewise the switches it flips
    (:mod:`.switches`: a hook registered, a thread count; ``bits``: the end of the
    analysis, the warnings filters too)."""
    if not _KEPT.grads and not _KEPT.generators and not _KEPT.effects \
            and _KEPT.switches is None:
        return  # (no user's backward on the graph: nothing copied, no no_grad entered)
    user_effects.put_back(_KEPT.effects)
    with torch.no_grad():
        for tensor, grad, version, copy in _KEPT.grads or ():
            if tensor.grad is not grad:
                tensor.grad = grad
            if grad is not None and (grad._version != version
                                     or bits and not _same_bits(grad, copy)):
                grad.copy_(copy)  # (written in place, or through .grad.data)
                _set_version(grad, version)
    for generator, state in _KEPT.generators or ():
        own_generators.set_state(generator, state)
    switches.put_back(_KEPT.switches, final=bits)


def _written(tensor, version, copy, owners, alias, bits: bool = True) -> bool:
    """Whether ``tensor`` was written since copied: its version moved, it was given new
    data (``t.data = ...``), or (``bits``) its values differ bit for bit (a write through
    ``t.data``, whose version counter is its own)."""
    return tensor._version != version or not _same_data(tensor, alias) \
        or bits and not _same_bits(tensor, copy)


def _same_data(tensor, alias) -> bool:
    """Whether ``tensor`` still holds the memory ``alias`` (its detached self) held (a
    tensor without plain memory, sparse, nested or meta: by its version alone)."""
    if not _plain(tensor):
        return True
    return tensor.data_ptr() == alias.data_ptr() and tensor.shape == alias.shape \
        and tensor.stride() == alias.stride() and tensor.dtype == alias.dtype


_BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
_NO_BITS = {getattr(torch, name) for name in ("qint8", "quint8", "qint32", "quint4x2",
                                              "quint2x4") if hasattr(torch, name)}


def _plain(tensor) -> bool:
    """A strided tensor with memory of its own to compare (not sparse, nested, meta,
    quantized)."""
    return tensor.layout == torch.strided and not tensor.is_nested \
        and tensor.device.type != "meta" and tensor.dtype not in _NO_BITS


def _same_bits(tensor, copy) -> bool:
    """Whether two tensors of one shape and dtype hold the same bits (NaN equal to itself);
    True where there are no plain bits to compare (:func:`_plain`: the version decides)."""
    if not _plain(tensor) or not _plain(copy):
        return True
    if tensor.shape != copy.shape or tensor.dtype != copy.dtype:
        return False
    now, then = tensor.detach(), copy
    if now.is_complex():
        now, then = torch.view_as_real(now), torch.view_as_real(then)
    if now.dtype == torch.bool or now.element_size() not in _BITS:
        return bool(torch.equal(now, then))
    integer = _BITS[now.element_size()]
    return bool(torch.equal(now.view(integer), then.view(integer)))


def put_back(entries) -> None:
    """Each entry's tensor (:func:`copied`) written since: its memory given back, its copied
    values, its version."""
    with torch.no_grad():
        for tensor, version, copy, owners, alias in entries:
            if not _written(tensor, version, copy, owners, alias):
                continue
            if not _same_data(tensor, alias):
                tensor.data = alias
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
                if is_a(value, torch.Tensor) and _same(value, tensor) \
                        and not key.startswith("_"):
                    return key
    return "a tensor it saved or holds"


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a is b or (a.data_ptr() == b.data_ptr() and a.shape == b.shape
                      and a.dtype == b.dtype and a.stride() == b.stride())


_SCOPES: dict[str, list] = {}  # a Function's name → its backward's globals (for the words)


def _function_name(node) -> str:
    """What the messages call ``node``'s Function (:func:`users_code`), its user's backward's
    globals kept for the words (:func:`_label`)."""
    name, functions = users_code(getattr(node, "_forward_cls", None))
    name = name or node.name().removesuffix("Backward")
    scopes = [s for f in functions if isinstance(s := getattr(f, "__globals__", None), dict)]
    if scopes:
        _SCOPES[name] = scopes
    return name


_REGISTERED = ("_backward_fn", "_setup_context_fn")  # what torch.library's register_autograd
_OP = getattr(torch._ops, "OpOverload", ())          # keeps (a CustomOpDef, an Info)


def users_code(cls) -> tuple[str | None, list]:
    """(the name to call a custom Function class ``cls`` by, the user's functions its backward
    runs): a class of the user's, its name and ``backward``; one PyTorch made around the
    user's code, read from its backward's closure (no code runs): a ``torch.library``
    op's registered backward and ``setup_context`` (named by the op's qualified name,
    ``ns::op``), functorch's generated Function's user class (its name and backward);
    (None, []) for PyTorch's own (a checkpoint, a module's backward hooks)."""
    if not is_a(cls, type):
        return None, []
    if not (getattr(cls, "__module__", None) or "").startswith("torch."):
        return cls.__name__, [class_attribute(cls, "backward")]
    name, found, todo = None, [], [(class_attribute(cls, "backward"), 0)]
    while todo:  # (torch's wrappers wrap torch's: supports_tensorlist's around the op's)
        function, depth = todo.pop()
        for value in map(cell_contents, getattr(function, "__closure__", None) or ()):
            if is_a(value, type) and value is not cls \
                    and issubclass(value, torch.autograd.Function):
                inner, functions = users_code(value)
                name, found = name or inner, found + functions
            elif is_a(value, _OP):
                name = name or dict.get(instance_dict(value), "_name")
            elif type(value) is types.FunctionType and depth < 3:
                todo += [(value, depth + 1)] if not users_function(value) else []
            else:
                held = instance_dict(value)
                found += [f for key in _REGISTERED if (f := dict.get(held, key)) is not None]
    return (name if found else None), found


def _reachable(node) -> tuple[list, list, list]:
    """The tensors ``node``'s backward can reach (what it saved, the tensors and modules its
    ``ctx`` holds and its code reads: :func:`.reach.reached`), the user's random generators,
    and everything it reaches (for :mod:`.user_effects`)."""
    from .graph_facts import raw_saved
    found = [saved.data for saved in raw_saved(node)
             if isinstance(getattr(saved, "data", None), torch.Tensor)]
    held = reached(instance_dict(node).values())
    for function in users_code(class_attribute(type(node), "_forward_cls"))[1]:
        held += read_by(function)
    return tensors_of([*found, *held]), [v for v in held if is_a(v, own_generators.KINDS)], \
        held


def copied(tensors) -> list:
    """Each tensor with its version, a copy and its memory now, for :func:`put_back`."""
    with torch.no_grad():
        return [_copy(t) for t in tensors]


def _copy(tensor, owners=()) -> tuple:
    """(tensor, its version, a copy, the Functions that reach it, its memory now): one
    entry of :func:`copied` and of the watch :func:`keep_for` makes (under ``no_grad``)."""
    return tensor, tensor._version, tensor.detach().clone(), frozenset(owners), tensor.detach()


__all__ = ["check", "copied", "keep_for", "put_back", "users_code", "writes_kept",
           "written_message"]
