"""The user's own random generators a custom ``autograd.Function``'s forward draws from.

Besides torch's, Python's and numpy's global generators (:func:`.record.generator_states`),
a forward may draw from generator objects of its own: a ``torch.Generator``
(``torch.rand(..., generator=G)``), a numpy ``Generator`` (``np.random.default_rng``) or
``RandomState``, a ``random.Random``. The record keeps the states of those the forward can
reach (by a global name or a closure, as :mod:`..core.backward_writes` finds a backward's
tensors, and among ``apply``'s arguments) and of each ``torch.Generator`` a torch call in the
forward is given, so it knows the forward drew (a float64 replay would draw anew: refused
before it runs) and replays draw the same numbers and leave each generator as the cell did.
"""
from __future__ import annotations

import random

import numpy
import torch


KINDS = (torch.Generator, numpy.random.Generator, numpy.random.RandomState, random.Random)


def reachable(function: type, args, kwargs) -> list:
    """The generator objects ``function``'s forward reads by a global name (and attributes
    of modules and classes) or a closure, and those among ``args`` and ``kwargs``."""
    from .reach import class_attribute, is_a, read_by
    values = [*args, *kwargs.values()] + read_by(class_attribute(function, "forward"))
    found: list = []
    for value in values:
        if is_a(value, KINDS) and not any(value is f for f in found):
            found.append(value)
    return found


def passed(args, kwargs) -> list:
    """The ``torch.Generator`` objects a torch call is given (``generator=``, or by place)."""
    found = [a for a in args if isinstance(a, torch.Generator)]
    given = kwargs.get("generator") if kwargs else None
    if isinstance(given, torch.Generator):
        found.append(given)
    return found


def state(generator):
    """``generator``'s state now (a copy)."""
    if isinstance(generator, torch.Generator):
        return generator.get_state()
    if isinstance(generator, numpy.random.Generator):
        return generator.bit_generator.state
    return generator.get_state() if isinstance(generator, numpy.random.RandomState) \
        else generator.getstate()


def set_state(generator, value) -> None:
    """Put ``value`` (from :func:`state`) back into ``generator``."""
    if isinstance(generator, torch.Generator):
        generator.set_state(value)
    elif isinstance(generator, numpy.random.Generator):
        generator.bit_generator.state = value
    elif isinstance(generator, numpy.random.RandomState):
        generator.set_state(value)
    else:
        generator.setstate(value)


def same(a, b) -> bool:
    """Whether two states (:func:`state`: tensors, arrays, dicts, tuples, numbers) are equal."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, numpy.ndarray):
        return isinstance(b, numpy.ndarray) and numpy.array_equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (tuple, list)):
        return isinstance(b, (tuple, list)) and len(a) == len(b) and \
            all(same(x, y) for x, y in zip(a, b))
    return a == b


def moved(kept) -> bool:
    """Whether any generator of ``kept`` (pairs of a generator and its state) has moved."""
    return any(not same(state(generator), value) for generator, value in kept)


__all__ = ["moved", "passed", "reachable", "same", "set_state", "state"]
