"""The graph facts the display needs, looked up by one function each: read off the output's
graph by :mod:`vjp_magic.core.graph_facts` while the result keeps it (the features run then:
:mod:`vjp_magic.features.names` hands them to the ``View``; a stored result keeps no graph).

- :func:`sparse_grad`: autograd hands the input a sparse (COO) ``.grad``, so code that copies
  ``.grad`` into a dense tensor reads ``.grad.to_dense()``.
- :func:`one_function`: the graph proves every point applies the same function f, not only
  the pairing (``y[i]`` reads ``x[i]`` only).
- :func:`names_inputs`: a ``backward`` written for some inputs says ``inputs=[...]``, as it
  would otherwise add into another tensor's ``.grad`` (a second input's, a parameter's).

Where the graph cannot say, each fact takes its always-true side (core.graph_facts says
which); a stored result keeps the facts read while it had its graph.
"""
from __future__ import annotations

import weakref
from dataclasses import replace

from ..core import graph_facts as _walks

_READ: dict[int, dict] = {}  # id(result) -> the facts read off its graph, while it lives


def facts(result) -> dict:
    """The ``View`` fields these facts fill, read off ``result``'s graph (while it has one):
    one walk per result, whoever asks first (the names feature, a feature's sections)."""
    found = _READ.get(id(result))
    if found is None:
        found = _READ[id(result)] = _walks.facts(result.output, result.inputs)
        weakref.finalize(result, _READ.pop, id(result), None)
    return found


def read_off(result, output, inputs: dict) -> None:
    """``result``'s facts read off a stand-in for the user's graph: the analysis' hook-free
    replay (``output``, computed by the same operations from the fresh leaves ``inputs``,
    name → tensor), whole where the cell's own backward freed the user's graph and left
    its saved values unreadable (the tutorial's ``y.backward(v)``: ``5 * x``'s saved 5).
    Which ``.grad`` a backward fills is read off the user's graph (``result.output``), the
    one pasted code runs on: its edges survive the free."""
    items = {name: replace(item, tensor=inputs[name]) for name, item in result.inputs.items()
             if name in inputs}
    if len(items) == len(result.inputs) and id(result) not in _READ:
        found = _walks.facts(output, items)
        found["filled"] = _walks.filled(_walks.nodes_of(result.output), result.inputs)
        _READ[id(result)] = found
        weakref.finalize(result, _READ.pop, id(result), None)


def sparse_grad(result, name: str) -> bool:
    """Whether autograd hands input ``name`` a sparse ``.grad`` (module docstring)."""
    return _known(result, "sparse_grads", name)


def one_function(result, name: str) -> bool:
    """Whether the graph proves one function f at every point of ``name`` (module docstring)."""
    return _known(result, "one_function", name)


def names_inputs(result, names) -> bool:
    """Whether a ``backward`` written for the inputs ``names`` must pass ``inputs=[...]``:
    without it, it would also fill the ``.grad`` of another tensor (another input, a
    parameter the cell did not ask about), or the graph could not say (module docstring)."""
    filled = _read(result, "filled")
    return filled is None or not filled <= set(names)


def _known(result, field: str, name: str) -> bool:
    return name in (_read(result, field) or ())


def _read(result, field: str):
    view = getattr(result, "view", None)
    if view is not None and getattr(result.output, "grad_fn", None) is None:
        return getattr(view, field, None)
    return facts(result)[field]  # (a result that keeps its graph: read it now)
