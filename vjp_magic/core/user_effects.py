"""What the user's code that the analysis calls changes besides tensors' values: put back.

The promise: after a cell, every tensor, global and object is as a plain run leaves it. A
plain run calls no custom ``autograd.Function``'s backward and runs its forward once; the
analysis calls the backward in every pass and probe (:mod:`.backward_writes`), and
``--gradcheck`` replays the forward (:mod:`..run.forward_writes`). Such code may count its
calls in a list or a global, rebind a global, a dict entry, a nonlocal or an attribute, or
write a numpy array (a numpy alias of a tensor writes that tensor's memory).

:func:`kept`, before such a call, records what the code can reach (the objects
:func:`.backward_writes.reached` finds, and the functions named): the globals of the user's
functions and modules and the attributes of the user's classes (name -> object), closure
cells, the items of lists, dicts, sets, deques and bytearrays, the attributes of the user's
objects (their instance dict), numpy arrays (a copy). :func:`put_back`, after it, restores
each one changed, in place, so identities hold. Reading and comparing run none of the
user's code: objects are compared by identity (``is``), arrays by their bytes. What no
reach finds (a file written, a message sent) cannot be put back.
"""
from __future__ import annotations

import collections
import operator
import sys
import types

from .origin import LIBRARIES, users_function
from .reach import _CLASS_DICT, dict_type, instance_dict, is_a, users_type

_EMPTY = object()  # an empty closure cell's contents


def kept(values, functions=(), dicts=()) -> list:
    """What :func:`put_back` restores: for each of ``values`` and ``functions`` (and each
    plain dict in ``dicts``, a node's attributes), (its kind, the holder, what it held)."""
    entries, seen = [], set()
    for value in [*functions, *values]:
        if id(value) not in seen:
            seen.add(id(value))
            entries.extend(_held(value, seen))
    entries.extend(("dict", d, _items(d)) for d in dicts if id(d) not in seen)
    return entries


def put_back(entries) -> None:
    """Each holder :func:`kept` recorded, changed since: its items as they were."""
    for kind, holder, then in entries or ():
        if not _SAME[kind](holder, then):
            _RESTORE[kind](holder, then)


def _held(value, seen: set) -> list:
    """The entries of one reached object (a function also gives its globals, once); read as
    :mod:`.reach` reads, running none of the user's code."""
    if is_a(value, types.FunctionType):
        if not users_function(value):
            return []
        cells = [("cell", c, _contents(c)) for c in value.__closure__ or ()]
        return cells + _namespace(value.__globals__, seen)
    if is_a(value, types.ModuleType):
        name = str(vars(value).get("__name__", "") or "")
        return _namespace(vars(value), seen) if name.partition(".")[0] not in LIBRARIES \
            else []
    if is_a(value, type):
        return [("class", value, _pairs(_CLASS_DICT(value)))] if users_type(value) else []
    for base, kind, read in _CONTAINERS:
        if is_a(value, base):
            return [(kind, value, read(value))]
    numpy = sys.modules.get("numpy")
    if numpy is not None and is_a(value, numpy.ndarray):
        return [("array", value, value.copy())] if value.flags.writeable else []
    if users_type(type(value)) or is_a(value, types.SimpleNamespace):
        held = instance_dict(value)
        return _namespace(held, seen) if type(held) is dict and held else []
    return []


def _namespace(namespace: dict, seen: set) -> list:
    """A dict of names (a module's globals, an object's attributes), recorded once."""
    if id(namespace) in seen:
        return []
    seen.add(id(namespace))
    return [("dict", namespace, _items(namespace))]


def _contents(cell):
    """A closure cell's value (:data:`_EMPTY` while it is empty: put back as empty)."""
    try:
        return cell.cell_contents
    except ValueError:
        return _EMPTY


def _items(d: dict) -> tuple:
    """A dict's keys and values, and a copy of it (made with the hashes it keeps: no
    ``__hash__`` called)."""
    return (*_pairs(d, dict.keys, dict.values), dict.copy(d))


def _pairs(mapping, keys=None, values=None) -> tuple:
    """A mapping's keys and its values, in its order (a class's: its mappingproxy)."""
    return list((keys or type(mapping).keys)(mapping)), \
        list((values or type(mapping).values)(mapping))


_CONTAINERS = (
    (dict, "dict", _items),
    (list, "list", lambda s: list(list.__iter__(s))),
    (collections.deque, "deque", lambda s: list(collections.deque.__iter__(s))),
    (set, "set", lambda s: (list(set.__iter__(s)), set.copy(s))),
    (bytearray, "bytes", bytes),
)


def _same_items(now, then) -> bool:
    """Whether two lists hold the same objects (by identity: no ``__eq__`` runs)."""
    return len(now) == len(then) and all(map(operator.is_, now, then))


def _same_pairs(now: tuple, then) -> bool:
    """Whether two (keys, values) hold the same objects in the same order."""
    return _same_items(now[1], then[1]) and _same_items(now[0], then[0])


def _same_set(now, then) -> bool:
    return set.__len__(now) == len(then[0]) and \
        {id(v) for v in set.__iter__(now)} == {id(v) for v in then[0]}


def _same_array(now, then) -> bool:
    if now.shape != then.shape or now.dtype != then.dtype:
        return True  # (resized or retyped in place: left as it is)
    if now.dtype.hasobject:
        return _same_items(list(now.flat), list(then.flat))
    return now.tobytes() == then.tobytes()


def _put_back_dict(now: dict, then: tuple) -> None:
    """A dict's entries as they were, in the same dict: a namespace (its keys all strings)
    name by name, names added since deleted; another emptied and refilled from the copy
    (which hashes no key again: a user's key's ``__hash__`` is the user's code)."""
    keys, values, was = then
    kind = dict_type(now)  # (an OrderedDict - a module's hook table - through its own)
    if not all(type(k) is str for k in dict.keys(now)) or \
            not all(type(k) is str for k in dict.keys(was)):
        kind.clear(now)
        kind.update(now, was)
        return
    for key in [k for k in dict.keys(now) if k not in was]:
        kind.__delitem__(now, key)
    for key, value in zip(keys, values):
        if dict.get(now, key, _EMPTY) is not value:
            kind.__setitem__(now, key, value)


def _put_back_class(cls: type, then: list) -> None:
    """A class's attributes as they were (one added since deleted, but a private one: a
    cache PyTorch may keep on a Function's class)."""
    was = dict(zip(*then))
    for key in [k for k in vars(cls) if k not in was and not k.startswith("_")]:
        type.__delattr__(cls, key)
    for key, value in was.items():
        if vars(cls).get(key, _EMPTY) is not value:
            type.__setattr__(cls, key, value)


def _put_back_cell(cell, then) -> None:
    if then is _EMPTY:
        del cell.cell_contents
    else:
        cell.cell_contents = then


def _put_back_set(now: set, then: tuple) -> None:
    set.clear(now)
    set.update(now, then[1])  # (from the copy, with the hashes it keeps)


def _put_back_deque(now, then: list) -> None:
    collections.deque.clear(now)
    collections.deque.extend(now, then)


def _put_back_array(now, then) -> None:
    sys.modules["numpy"].copyto(now, then)


_SAME = {"dict": lambda d, then: _same_pairs(_pairs(d, dict.keys, dict.values), then),
         "class": lambda c, then: _same_pairs(_pairs(vars(c)), then),
         "cell": lambda c, then: _contents(c) is then,
         "list": lambda s, then: _same_items(list(list.__iter__(s)), then),
         "deque": lambda s, then: _same_items(list(collections.deque.__iter__(s)), then),
         "set": _same_set,
         "bytes": lambda b, then: bytes(b) == then,
         "array": _same_array}
_RESTORE = {"dict": _put_back_dict, "class": _put_back_class, "cell": _put_back_cell,
            "list": lambda s, then: list.__setitem__(s, slice(None), then),
            "deque": _put_back_deque, "set": _put_back_set,
            "bytes": lambda b, then: bytearray.__setitem__(b, slice(None), then),
            "array": _put_back_array}


__all__ = ["kept", "put_back"]
