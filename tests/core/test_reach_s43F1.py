"""The one walk of "what does an object hold" (core.reach) runs none of the user's code (V1-7's
class, s42): no property (``__dict__``, ``__class__``, a slot's), descriptor, ``__getattr__``,
``__getattribute__``, ``__len__``, ``__iter__``, ``__eq__``/``__hash__``, module ``__getattr__``
or metaclass attribute, while it still finds what such an object holds (the tensors it reads,
by the object's own storage). Expected: counts of the user's code that ran (zero), and the
tensors placed in the objects by the test itself.
"""
from __future__ import annotations

import sys
import types

import pytest
import torch

import vjp_magic
from vjp_magic.core import reach
from vjp_magic.core.errors import VJPUsageError

RAN: list = []


def _loud_classes():
    """Classes each of whose hooks notes that it ran (the user's code)."""
    class DictProperty:
        def __init__(self, t):
            object.__setattr__(self, "t", t)

        @property
        def __dict__(self):  # noqa: PLE0237
            RAN.append("__dict__")
            return {}

    class ClassProperty:
        def __init__(self, t):
            self.t = t

        @property
        def __class__(self):  # noqa: PLE0237
            RAN.append("__class__")
            return torch.Tensor

    class Getattr:
        def __init__(self, t):
            self.t = t

        def __getattr__(self, name):
            RAN.append(f"__getattr__ {name}")
            raise AttributeError(name)

        def __getattribute__(self, name):
            RAN.append(f"__getattribute__ {name}")
            return object.__getattribute__(self, name)

    class SlotProperty:
        __slots__ = ("t",)

        def __init__(self, t):
            self.t = t

    class Child(SlotProperty):
        __slots__ = ()

        @property
        def t(self):
            RAN.append("slot property")
            return None

    class Sized(list):
        def __len__(self):
            RAN.append("__len__")
            return 0

        def __iter__(self):
            RAN.append("__iter__")
            return iter(())

    class Key:
        def __hash__(self):
            RAN.append("__hash__")
            return 1

        def __eq__(self, other):
            RAN.append("__eq__")
            return self is other

    class Descriptor:
        def __get__(self, obj, owner=None):
            RAN.append("__get__")
            return torch.zeros(1)

    class Meta(type):
        def __getattribute__(cls, name):
            RAN.append(f"metaclass {name}")
            return type.__getattribute__(cls, name)

    class WithMeta(metaclass=Meta):
        pass

    class HasDescriptor:
        d = Descriptor()

    return types.SimpleNamespace(**{c.__name__: c for c in (
        DictProperty, ClassProperty, Getattr, SlotProperty, Child, Sized, Key, HasDescriptor,
        WithMeta)})


def _holders(t: torch.Tensor) -> dict:
    c = _loud_classes()
    child = c.Child.__new__(c.Child)
    c.SlotProperty.__dict__["t"].__set__(child, t)  # the slot holds t; a property hides it
    sized = c.Sized([t])
    return {"a __dict__ property": c.DictProperty(t), "a __class__ property": c.ClassProperty(t),
            "__getattr__ and __getattribute__": c.Getattr(t),
            "a property over a slot": child, "a list's __len__ and __iter__": sized,
            "a dict's keys' __hash__ and __eq__": {c.Key(): t, c.Key(): 1},
            "a set's items' __hash__": [{c.Key()}, t],
            "a class's descriptor and metaclass": [c.HasDescriptor(), c.WithMeta(), c.WithMeta, t]}


@pytest.mark.parametrize("kind", sorted(_holders(torch.zeros(1))))
def test_the_walk_runs_none_of_the_users_code_and_finds_what_is_held(kind):
    t = torch.arange(3.0)
    holder = _holders(t)[kind]
    RAN.clear()
    found = reach.reached([holder])
    assert RAN == []
    assert any(v is t for v in found)
    assert any(v is t for v in reach.tensors_of(found))
    assert RAN == []


def test_a_function_reading_through_a_module_getattr_and_a_metaclass_runs_neither():
    module = types.ModuleType("users_lazy")

    def lazy(name):
        RAN.append(f"module __getattr__ {name}")
        raise AttributeError(name)

    module.__getattr__ = lazy
    module.T = torch.ones(2)
    c = _loud_classes()
    c.WithMeta.u = torch.ones(3)
    scope = {"torch": torch, "lazy": module, "Cls": c.WithMeta, "__name__": "users"}
    exec("def f(g):\n    return g * lazy.T * lazy.missing * Cls.u * Cls.nothing\n", scope)
    sys.modules.pop("users_lazy", None)
    RAN.clear()
    read = reach.read_by(scope["f"])
    assert RAN == []
    assert any(v is module.T for v in read) and any(v is c.WithMeta.u for v in read)


def test_a_backward_writing_a_tensor_a_loud_object_holds_is_refused_and_runs_no_hook():
    t = torch.ones(2)
    c = _loud_classes()
    held = c.Getattr(t)
    ns = {"torch": torch, "HELD": held}
    exec("class F(torch.autograd.Function):\n"
         "    @staticmethod\n"
         "    def forward(ctx, x):\n"
         "        return 3 * x\n"
         "    @staticmethod\n"
         "    def backward(ctx, g):\n"
         "        object.__getattribute__(HELD, 't').add_(1)\n"
         "        return 3 * g\n", ns)
    x = torch.linspace(1., 2., 2, requires_grad=True)
    y = ns["F"].apply(x)
    RAN.clear()
    with pytest.raises(VJPUsageError, match="in place"):
        vjp_magic.differentiate(y, x)
    assert RAN == []
    assert torch.equal(t, torch.ones(2)) and t._version == 0


def test_a_function_reading_a_child_by_index_or_name_reads_that_child_alone():
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Tanh(), torch.nn.Linear(2, 3))
    tree = torch.nn.ModuleDict({"enc": torch.nn.Linear(2, 2), "dec": torch.nn.Linear(2, 2)})
    scope = {"net": net, "tree": tree, "__name__": "users"}
    exec("def f(v):\n    return net[-1](net[0](v)) + tree['enc'](v) + tree.dec.weight.sum()\n",
         scope)
    held = reach.tensors_of(reach.read_by(scope["f"]))
    expected = [*net[0].parameters(), *net[2].parameters(), *tree["enc"].parameters(),
                tree["dec"].weight]
    assert {id(t) for t in held} == {id(t) for t in expected}
