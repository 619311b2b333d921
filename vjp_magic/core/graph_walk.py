"""The walk of an autograd graph: every node below a root, each once; made once per call.

The stages of one call ask the same graph the same question, "which nodes lie below the
output?" (the refusals, the hook-free check, the retain_grad guard, the graph proof, the
facts and the freed-graph lesson). Within :func:`walked_once` (the pipeline's call) the first
of them walks the graph and the others read that walk (:func:`walk`): the structure below a
node never changes once the node exists (its ``next_functions`` and a leaf's ``variable`` are
fixed), so one walk serves the whole call. What can change (saved tensors freed or changed in
place, hooks, a custom Function's ``ctx``) is not recorded: each stage reads it off the nodes.
The walk only reads ``next_functions``: no hook fires, no ``.grad`` is touched, no user code
runs. Outside the scope every walk is made afresh (lazily, for one that may stop early);
after :func:`seal`, so is the walk of a graph the analysis builds itself (not held alive).

The nodes walked are kept alive while the walk is used: some PyTorch versions (2.11) make a
new Python object for a node each time it is reached and free it when dropped, and a freed
object's ``id`` is reused, which would skip a node never seen.
"""
from __future__ import annotations

import contextlib
import functools
import threading
from dataclasses import dataclass

import torch

_SCOPE = threading.local()


@dataclass(frozen=True, eq=False)
class GraphWalk:
    """The nodes below ``root``: ``nodes`` each once, depth first (a node before the nodes
    it points to, siblings last to first: :func:`walk_nodes`' order); ``edges[k]`` the
    ``next_functions`` of ``nodes[k]`` as read; ``position``: ``id(node)`` → ``k``."""

    root: object
    nodes: tuple
    edges: tuple
    position: dict

    @functools.cached_property
    def postorder(self) -> tuple:
        """Every node, each after all of its inputs (:func:`postorder`'s order)."""
        root, edges, position = self.root, self.edges, self.position
        order, seen, stack = [], {id(root)}, [(root, iter(edges[0]))]
        while stack:
            node, children = stack[-1]
            for child, _ in children:
                if child is not None and id(child) not in seen:
                    seen.add(id(child))
                    stack.append((child, iter(edges[position[id(child)]])))
                    break
            else:
                stack.pop()
                order.append(node)
        return tuple(order)

    @functools.cached_property
    def members(self) -> frozenset:
        """The nodes, as a set (``node in members``)."""
        return frozenset(self.nodes)


def _walk(root) -> GraphWalk:
    """One walk below ``root`` (not None): each node's ``next_functions`` read once."""
    nodes, edges, position = [], [], {}
    stack = [root]
    while stack:
        node = stack.pop()
        if node is None or id(node) in position:
            continue
        position[id(node)] = len(nodes)
        nodes.append(node)
        following = node.next_functions
        edges.append(following)
        stack.extend(child for child, _ in following)
    return GraphWalk(root, tuple(nodes), tuple(edges), position)


def walk(root) -> GraphWalk:
    """The walk below the node ``root``: within :func:`walked_once`, the one made for it."""
    walks = getattr(_SCOPE, "walks", None)
    if walks is None:
        return _walk(root)
    found = walks.get(root)
    if found is None:
        found = _walk(root)
        if not _SCOPE.sealed or root in _SCOPE.kept:
            walks[root] = found  # (the root kept by the key: its id stays its own)
    return found


@contextlib.contextmanager
def walked_once():
    """Within it, one walk of each graph serves every stage (:func:`walk`); nested: the
    outer one's walks are kept. Nothing is kept past it."""
    if getattr(_SCOPE, "walks", None) is not None:
        yield
        return
    _SCOPE.walks, _SCOPE.sealed, _SCOPE.kept = {}, False, set()
    try:
        yield
    finally:
        _SCOPE.walks, _SCOPE.kept = None, set()


def seal(*tensors) -> None:
    """From now on within :func:`walked_once`, keep only the walks of ``tensors``' graphs
    and those kept so far (the graphs the user's tensors hold, walked before any pass): a
    graph the analysis builds (a gradient's, for second derivatives) is walked afresh each
    time, not held alive until the call ends."""
    if getattr(_SCOPE, "walks", None) is None:
        return
    _SCOPE.sealed = True
    _SCOPE.kept.update(t.grad_fn for t in tensors
                       if isinstance(t, torch.Tensor) and t.grad_fn is not None)


def walk_nodes(roots):
    """Every autograd node reachable from the ``roots`` nodes, each once (depth first):
    within :func:`walked_once`, from the walk made for a single root; else walked lazily."""
    roots = list(roots)
    if len(roots) == 1 and roots[0] is not None and \
            getattr(_SCOPE, "walks", None) is not None:
        return iter(walk(roots[0]).nodes)
    return _lazy(roots)


def _lazy(roots):
    seen: dict[int, object] = {}
    stack = roots
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen[id(node)] = node
        yield node
        stack.extend(next_node for next_node, _ in node.next_functions)


def postorder(root) -> list:
    """Every node reachable from ``root``, each after all of its inputs (no recursion)."""
    return list(walk(root).postorder)


__all__ = ["GraphWalk", "postorder", "seal", "walk", "walk_nodes", "walked_once"]
