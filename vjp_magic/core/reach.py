"""What an object holds, and what code reads by name: one walk, which runs none of the user's
code.

Its callers ask one question three ways: what a custom Function's backward or forward can
write (:mod:`.backward_writes`, :mod:`vjp_magic.run.forward_writes`: everything reachable),
which tensor subclass a node's ``ctx`` holds (:mod:`.reentrant`: one level) and which tensors
a callable handed to a custom Function reads (:mod:`vjp_magic.run.cuts`). :func:`reached`
answers it breadth first, :func:`tensors_of` picks the tensors (a module's parameters and
buffers), :func:`read_by` and :func:`globals_read` what a function reads by a name.

Nothing of the user's runs while it reads: no property (a ``__dict__``, ``__class__`` or slot
one), descriptor, ``__getattr__``/``__getattribute__`` (an object's, a module's, a
metaclass's), ``__len__``/``__iter__``, ``__eq__``/``__hash__``. Types are read with
``type()`` (``isinstance`` asks a foreign object's ``__class__``); classes through their own
dicts and ``__mro__`` (``type``'s descriptors); an object of the user's through what it holds
in C (``gc.get_referents``: its instance dict, its slots); containers through their base
type's C methods; modules through their dicts (a lookup by a string key compares full hashes
first: no key's ``__eq__`` runs).
"""
from __future__ import annotations

import builtins
import collections
import dis
import functools
import gc
import itertools
import types

import torch

from .origin import LIBRARIES, users_function

READ_MOST = 64  # the user's functions read, at most
OPEN_MOST, ITEMS_MOST = 2048, 512  # containers and objects opened, items read of one
ITEMS_SCANNED = 1 << 16  # items of one container looked at (numbers and strings: passed)

_CLASS_DICT = type.__dict__["__dict__"].__get__  # a class's own dict (no metaclass runs)
_MRO = type.__dict__["__mro__"].__get__
_MODULE = type.__dict__["__module__"].__get__
_NAME = type.__dict__["__name__"].__get__
_MEMBER = {kind: kind.__dict__["__func__"].__get__ for kind in (staticmethod, classmethod)}
_PARTIAL = [functools.partial.__dict__[name].__get__ for name in ("func", "args", "keywords")]
_MISSING = object()


def is_a(value, kinds) -> bool:
    """``isinstance`` read off ``type(value)`` alone (never the object's ``__class__``)."""
    return issubclass(type(value), kinds)


def reached(values, depth: int | None = None, short: list | None = None) -> list:
    """``values`` and what code can reach from them, breadth first (``depth``: levels opened
    at most; None: up to the budget): the items of lists, tuples, sets and dicts; a user's
    object's attributes and its classes' methods; an ``nn.Module``'s children and its other
    attributes (a plain tensor, a dict, a generator it holds: :func:`tensors_of` takes its
    parameters and buffers); a bound method's object; a ``functools.partial``'s function
    and arguments; and, for the user's own Python functions, what they read by a global
    name or a closure and their default arguments (:data:`READ_MOST` functions; library
    code is not followed, nor tensors opened). Containers and objects are opened up to
    :data:`OPEN_MOST` in all, :data:`ITEMS_MOST` items of each: where a budget ends the
    search, what was too big is said in ``short`` (the search was cut short)."""
    found, seen, budget = [], set(), _Budget(short)
    todo = collections.deque((value, 0) for value in values)
    while todo:
        now, level = todo.popleft()
        if is_a(now, _ATOMS) or id(now) in seen:
            continue
        seen.add(id(now))
        found.append(now)
        if depth is None or level < depth:
            todo.extend((value, level + 1) for value in _opened(now, budget))
    return found


class _Budget:
    """What :func:`reached` may still open: containers and objects, and functions read;
    ``short``: where one ran out, what was too big (each said once)."""

    def __init__(self, short: list | None = None) -> None:
        self.objects, self.functions = OPEN_MOST, READ_MOST
        self.short = [] if short is None else short

    def take(self, kind: str) -> bool:
        left = getattr(self, kind)
        setattr(self, kind, left - 1)
        if left <= 0:
            self.cut(_TOO_MANY[kind])
        return left > 0

    def items(self, values, size: int, kind: type) -> list:
        """The first :data:`ITEMS_MOST` of a container's ``size`` ``values`` that are no
        number or string (which nothing writes), among its first :data:`ITEMS_SCANNED`."""
        held = list(itertools.islice(
            (v for v in itertools.islice(values, ITEMS_SCANNED) if not is_a(v, _ATOMS)),
            ITEMS_MOST + 1))
        if size > ITEMS_SCANNED or len(held) > ITEMS_MOST:
            self.cut(f"a {_NAME(kind)} of {size:,} items")
        return held[:ITEMS_MOST]

    def cut(self, what: str) -> None:
        if what not in self.short:
            self.short.append(what)


_TOO_MANY = {"objects": f"more than {OPEN_MOST:,} containers and objects",
             "functions": f"more than {READ_MOST} of your functions"}


_ATOMS = (int, float, complex, str, bytes, type(None))
_CLOSED = (torch.Tensor, type, types.ModuleType)
_ITERATE = ((dict, dict.values), (list, list.__iter__), (tuple, tuple.__iter__),
            (set, set.__iter__), (frozenset, frozenset.__iter__),
            (collections.deque, collections.deque.__iter__))


def _opened(value, budget: _Budget) -> list:
    """What ``value`` holds or reads (one step of :func:`reached`)."""
    kind = type(value)
    if issubclass(kind, _CLOSED):
        return []
    for base, items in _ITERATE:
        if issubclass(kind, base):
            size = base.__len__(value)  # (an empty one: nothing to open, nothing spent)
            return budget.items(items(value), size, base) \
                if size and budget.take("objects") else []
    if issubclass(kind, (staticmethod, classmethod, types.MethodType)):
        return [function_of(value), *((value.__self__,) if kind is types.MethodType else ())]
    if issubclass(kind, functools.partial):
        function, args, keywords = (get(value) for get in _PARTIAL)
        return [function, *args, *dict.values(keywords or {})]
    if kind is types.FunctionType:
        if not users_function(value) or not budget.take("functions"):
            return []
        return _read(value)
    if _users_type(kind) or kind is types.SimpleNamespace \
            or issubclass(kind, torch.nn.Module):
        return _attributes(value, budget) if budget.take("objects") else []
    return []


def function_of(value):
    """The function a staticmethod, classmethod or bound method wraps (read from its C
    member); ``value`` itself otherwise."""
    kind = type(value)
    if kind is types.MethodType:
        return value.__func__
    for wrapper, member in _MEMBER.items():
        if issubclass(kind, wrapper):
            return member(value)
    return value


def _read(function: types.FunctionType) -> list:
    """What ``function`` reads by a global name or a closure, and its default arguments."""
    closed = dict(zip(function.__code__.co_freevars, map(_contents, function.__closure__ or ())))
    read = globals_read(function.__code__, function.__globals__, closed)
    return [*read, *closed.values(), *(function.__defaults__ or ()),
            *dict.values(function.__kwdefaults__ or {})]


def _attributes(value, budget: _Budget) -> list:
    """A user's object's attributes, as C holds them (its instance dict's values, its slots:
    no ``__dict__`` or slot property runs), and the methods its classes (the user's)
    define; an ``nn.Module``'s children in place of its tables of parameters, buffers and
    children (its parameters and buffers are :func:`tensors_of`'s)."""
    held: list = []
    module = is_a(value, torch.nn.Module)
    for item in gc.get_referents(value):
        if type(item) is dict:  # its instance dict (a slot's dict: opened a step early)
            if module:
                children = dict.get(item, "_modules")
                held.extend(dict.values(children) if is_a(children, dict) else ())
                item = {k: v for k, v in dict.items(item) if k not in _MODULE_TABLES}
            held.extend(budget.items(dict.values(item), dict.__len__(item), dict))
        elif not is_a(item, type):
            held.append(item)
    return held + [method for cls in _MRO(type(value)) if _users_type(cls)
                   for method in _CLASS_DICT(cls).values()
                   if is_a(method, (types.FunctionType, staticmethod, classmethod))]


def _users_type(cls: type) -> bool:
    """Whether ``cls`` is a class of the user's, not a library's: by its module (a class
    made by ``exec`` in a bare namespace says ``builtins``, where no such builtin is)."""
    try:
        module = _MODULE(cls)
    except AttributeError:
        return False
    if type(module) is not str:
        return False
    if module == "builtins":
        return dict.get(vars(builtins), _NAME(cls)) is not cls
    return module.partition(".")[0] not in LIBRARIES


def _contents(cell):
    """A closure cell's value (None while it is empty)."""
    try:
        return cell.cell_contents
    except ValueError:
        return None


def read_by(function, short: list | None = None) -> list:
    """The objects a Python ``function`` (or staticmethod, or bound method) reads by a global
    name (followed by attributes of modules and classes) or a closure, and what they hold
    and read in turn (:func:`reached`, ``short`` its): [] for anything that is not a
    function."""
    function = function_of(function)
    return reached([function], short=short)[1:] if type(function) is types.FunctionType \
        else []


def class_attribute(cls: type, name: str, default=None):
    """What ``cls`` (or a base) defines as ``name`` in its own dict, as ``getattr`` gives a
    function (a staticmethod or classmethod unwrapped); no descriptor or metaclass runs;
    ``default`` where ``cls`` is no class."""
    for base in _MRO(cls) if is_a(cls, type) else ():
        value = _CLASS_DICT(base).get(name, _MISSING)  # (a class's dict is a plain dict)
        if value is not _MISSING:
            return function_of(value)
    return default


def instance_dict(value) -> dict:
    """``value``'s instance dict where its type's ``__dict__`` is Python's own slot (not a
    property of the user's); else {}."""
    for cls in _MRO(type(value)):
        entry = _CLASS_DICT(cls).get("__dict__", _MISSING)
        if entry is _MISSING:
            continue
        if type(entry) not in (types.GetSetDescriptorType, types.MemberDescriptorType):
            return {}
        try:
            held = entry.__get__(value)
        except (AttributeError, TypeError):
            return {}
        return held if is_a(held, dict) else {}
    return {}


def globals_read(code: types.CodeType, scope: dict, closed: dict | None = None,
                 items: bool = True) -> list:
    """The objects ``code`` (and the code defined in it) reaches by a global name of
    ``scope`` (or a closure's, ``closed``) and the steps after it, each the last object its
    chain resolves to now (:func:`_step`: ``torch.autograd.grad``, ``helper``, ``m[0]``,
    ``net.fc``; a chain that goes on into what is not followed, ``m[i]`` or ``t.add_``, ends
    at the object before: everything it holds counts). ``items`` False: no subscript is
    followed (``Cls.entry[0]`` ends at the list: :mod:`.reentrant` names only what the code
    spells)."""
    found = []
    for chain in _chains(code):
        if not items:
            chain = tuple(itertools.takewhile(lambda step: type(step) is str, chain))
        head = chain[0]
        current = dict.get(closed or {}, head[1:], _MISSING) if head.startswith("*") \
            else dict.get(scope, head, _MISSING)
        if current is _MISSING:
            continue
        for step in chain[1:]:
            after = _step(current, step)
            if after is _MISSING:
                break
            current = after
        found.append(current)
    return found


def _step(current, step):
    """``current.step`` (a name) or ``current[key]`` (``step`` a 1-tuple), read statically:
    a module's or a class's own dict, an ``nn.Module``'s parameters, buffers and children
    (as ``Module.__getattr__`` finds them), a Sequential's, ModuleList's or ModuleDict's
    child, a list's or tuple's item; else :data:`_MISSING`."""
    kind = type(current)
    if type(step) is tuple:
        return _item(current, step[0])
    if issubclass(kind, types.ModuleType):
        return dict.get(instance_dict(current), step, _MISSING)
    if issubclass(kind, type):
        return class_attribute(current, step, _MISSING)
    if not issubclass(kind, torch.nn.Module) \
            or class_attribute(kind, step, _MISSING) is not _MISSING:
        return _MISSING  # (a module's method or property: its code is not followed)
    held = instance_dict(current)
    for table in (held, *(dict.get(held, key) for key in _MODULE_TABLES)):
        value = dict.get(table, step, _MISSING) if is_a(table, dict) else _MISSING
        if value is not _MISSING:
            return value
    return _MISSING


_MODULE_TABLES = ("_parameters", "_buffers", "_modules")
_BY_PLACE = (torch.nn.Sequential.__getitem__, torch.nn.ModuleList.__getitem__)


def _item(container, key):
    """``container[key]`` for a constant ``key``, where no code of the user's would run."""
    kind = type(container)
    if issubclass(kind, torch.nn.Module):
        children = dict.get(instance_dict(container), "_modules")
        getitem = class_attribute(kind, "__getitem__")
        if not is_a(children, dict):
            return _MISSING
        if type(key) is int and any(getitem is own for own in _BY_PLACE):
            items = list(dict.values(children))
            return items[key] if -len(items) <= key < len(items) else _MISSING
        if type(key) is str and getitem is torch.nn.ModuleDict.__getitem__:
            return dict.get(children, key, _MISSING)
        return _MISSING
    for base in (list, tuple):
        if issubclass(kind, base) and type(key) is int:
            size = base.__len__(container)
            return base.__getitem__(container, key) if -size <= key < size else _MISSING
    return _MISSING


@functools.lru_cache(maxsize=1024)
def _chains(code: types.CodeType) -> tuple[tuple, ...]:
    """The chains ``global.attr[key].attr`` that ``code`` and the code in it load: names, and
    subscripts by a constant int or str as 1-tuples (a chain from a closure's variable starts
    with ``*`` and its name, which no global has)."""
    chains, stack = [], [code]
    while stack:
        now = stack.pop()
        stack.extend(c for c in now.co_consts if isinstance(c, types.CodeType))
        chain: list = []
        steps = list(dis.get_instructions(now))
        for at, ins in enumerate(steps):
            if chain and ins.opname in ("LOAD_ATTR", "LOAD_METHOD"):
                chain.append(ins.argval)
                continue
            if chain and ins.opname == "LOAD_CONST" and type(ins.argval) in (int, str) \
                    and at + 1 < len(steps) and steps[at + 1].opname == "BINARY_SUBSCR":
                chain.append((ins.argval,))
                continue
            if chain and ins.opname == "BINARY_SUBSCR" and type(chain[-1]) is tuple:
                continue
            chains.append(tuple(chain))
            chain = [ins.argval] if ins.opname in ("LOAD_GLOBAL", "LOAD_NAME") else \
                [f"*{ins.argval}"] if ins.opname == "LOAD_DEREF" else []
        chains.append(tuple(chain))
    return tuple(dict.fromkeys(c for c in chains if c))


def tensors_of(values, plain: bool = True) -> list:
    """The tensors among ``values`` (from :func:`reached`) and the parameters and buffers of
    the modules among them (read from the modules' own dicts: no method of a module
    subclass runs); ``plain``: plain tensors and parameters only (no other subclass)."""
    found: dict = {}
    for value in values:
        if is_a(value, torch.Tensor):
            found.setdefault(id(value), value)
        elif is_a(value, torch.nn.Module):
            found.update((id(t), t) for t in _module_tensors(value))
    return [t for t in found.values()
            if not plain or type(t) is torch.Tensor or is_a(t, torch.nn.Parameter)]


def _module_tensors(module: torch.nn.Module) -> list:
    """The parameters, then the buffers, of ``module`` and its submodules (in the order of
    ``parameters()``: depth first, each module before its children)."""
    parameters, buffers = [], []
    for now in modules_of([module]):
        held = instance_dict(now)
        for key, into in (("_parameters", parameters), ("_buffers", buffers)):
            table = dict.get(held, key)
            into.extend(t for t in (dict.values(table) if is_a(table, dict) else ())
                        if is_a(t, torch.Tensor))
    return parameters + buffers


def modules_of(values) -> list:
    """The modules among ``values`` and their submodules, each once, depth first (each
    module before its children), read from the modules' own dicts (no method runs)."""
    found, todo, seen = [], list(reversed([v for v in values if is_a(v, torch.nn.Module)])), set()
    while todo:
        now = todo.pop()
        if id(now) in seen:
            continue
        seen.add(id(now))
        found.append(now)
        children = dict.get(instance_dict(now), "_modules")
        todo.extend(reversed([m for m in (dict.values(children) if is_a(children, dict) else ())
                              if is_a(m, torch.nn.Module)]))
    return found


def dict_type(held: dict) -> type:
    """The base type whose own methods read and refill ``held`` in place: ``OrderedDict``'s
    for one (dict's would leave its order list naming keys it no longer has), else dict's (no
    subclass's method runs)."""
    return collections.OrderedDict if is_a(held, collections.OrderedDict) else dict


users_type = _users_type  # (public: run/compiled reads which objects are the user's)
cell_contents = _contents  # (public: backward_writes reads torch's wrappers' closures)

__all__ = ["OPEN_MOST", "READ_MOST", "cell_contents", "class_attribute", "dict_type", "function_of",
           "globals_read", "instance_dict", "is_a", "modules_of", "read_by", "reached",
           "tensors_of", "users_type"]
