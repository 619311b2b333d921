"""Elementwise ops (and broadcasting): every output axis keeps the carries of the inputs'
axes it lines up with."""
from __future__ import annotations

from .flow import all_exact, broadcast, meet


def elementwise(node, inputs, shapes):
    out = shapes[0]
    maps = [broadcast(f, out) for f in inputs if f is not None]
    return meet(out, maps, all_exact(inputs))


