"""Structure proved from the autograd graph: which output axes index the same points as which
input axes.

Walking the graph from the input towards the output, every tensor on the way gets an *axis
map*: tensor axis → the input axes (row-major, usually one) whose index it carries. "Axis
``c`` carries input axis ``b``" means the tensor's entry at index ``i`` along ``c`` depends
only on input entries whose index along ``b`` is ``i``. Each backward node type has a rule
saying how its forward op moves, keeps or loses these carries (elementwise and broadcasting,
reductions and softmax along a dim, matmul on batch axes, views, permutes, slicing, cat,
stack, convolution batches, …): the rules are in :mod:`.axisrules`. A view merging a carried
axis with uncarried ones keeps the carry as a factor of the merged axis (``(0, Free(C))``:
InstanceNorm's ``(1, B*C, L)``, attention's ``(B*heads, L, d)``); a split on the factors'
boundaries gives the axis back, an op mixing along the merged axis drops it.

A rule never claims a carry that may fail, so whatever reaches the output is *proved*: the
Jacobian is zero wherever paired indices differ, for every value of the input. A rule is
*exact* when what it loses is lost for generic inputs too (a sum really mixes its axis);
nodes without a rule (and custom ``autograd.Function``s) lose everything and are not exact.
When every node on the way is exact, the proved pairing is the whole structure and no
numerical check is needed; otherwise larger pairings may still hold and are probed.

The walk reads every tensor's shape off the graph (:func:`.capabilities.graph_shapes`). A
PyTorch that hides them gets no proof at all: only whether the output depends on the input,
with the :attr:`GraphProof.limitation` saying what was not proved.
"""
from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass, field

import torch

from . import capabilities
from .axisrules import AxisMap, Flow, Free, proper, rule_for
from .capabilities import out_metadata
from .pairing import Pairing
from .tagging import postorder


@dataclass
class GraphProof:
    """The analysis of ``output`` with respect to one input."""

    depends: bool  # the output is reached from the input at all
    carries: AxisMap = field(default_factory=dict)
    exact: bool = False  # every node on the way has an exact rule
    unknown: list[str] = field(default_factory=list)  # node types without a rule
    custom: list[str] = field(default_factory=list)  # custom autograd.Function backward nodes
    workspace: int = 0  # bytes of every tensor on the graph (one backward's gradients)
    limitation: str | None = None  # what this PyTorch kept from being proved, in a sentence
    # the classes of every node of the graph below the output (the walk's), for the batching
    # check's trust (:func:`.checked_batches.batching_trusted`); empty where not walked
    kinds: frozenset = frozenset()
    # the ops whose saved index VALUES a rule read to keep a carry (``x[torch.arange(B), t]``:
    # rows 0..B-1 in order); those may be computed from x (``x.argsort(0)``), so the carries
    # hold for this graph's selections (as :attr:`.pattern.Pattern.conditional_on`)
    conditional_on: tuple[str, ...] = ()

    def pairing(self, out_shape, in_shape) -> Pairing:
        """Proved (output axis, input axis) pairs of equal size; of the size-1 axes, those
        the graph carries where it is exact (the same cell at a batch of 2 pairs those), else
        every size-1 pair (any holds: a 1 × 1 block)."""
        if not self.carries and 1 not in out_shape and 1 not in in_shape:
            return Pairing()  # (nothing proved, no size-1 axes: no pair)
        pairs = Pairing((a, c[0]) for a, c in self.carries.items()
                        if len(c) == 1 and out_shape[a] == in_shape[c[0]]
                        and (out_shape[a] > 1 or self.exact))
        used = pairs.in_axes
        pairs = Pairing(p for p in pairs if used.count(p.in_) == 1)
        if self.exact:
            return pairs.sorted()
        out_ones = [a for a, n in enumerate(out_shape) if n == 1 and a not in pairs.out_axes]
        in_ones = [b for b, n in enumerate(in_shape) if n == 1 and b not in pairs.in_axes]
        return (pairs + zip(out_ones, in_ones)).sorted()


# -- the walk -----------------------------------------------------------------------------------
def prove(output: torch.Tensor, tensor: torch.Tensor, read: tuple | None = None) -> GraphProof:
    """The axis maps from ``tensor`` (a leaf or an intermediate) to ``output``; ``read``:
    :func:`prove_each`'s one read of ``output``'s graph, else read here."""
    shape = tuple(tensor.shape)
    identity = Flow(shape, {b: (b,) for b in range(len(shape))})
    if output is tensor:
        return GraphProof(True, identity.carries, True)
    if output.grad_fn is None:
        return GraphProof(False)
    limitation = capabilities.graph_shapes_limitation()
    if limitation is not None:
        return _reach_only(output, tensor, limitation)
    flows: dict[tuple[int, int], Flow] = {}
    opaque: set[int] = set()  # nodes reached from x whose outputs could not even be read
    proof = GraphProof(False, exact=True)
    source = tensor.grad_fn  # (read once, and held: the walk meets this very object)
    nodes, kinds, read = read if read is not None else _read(output)
    for node, (shapes, size) in zip(nodes, read):
        proof.workspace += size
        if node is source:
            continue  # the input itself: what lies below it is constant
        inputs, reached = _inputs(node, tensor, source, identity, flows, opaque)
        if not reached and inputs.count(None) == len(inputs):
            continue
        outputs = None if reached else _apply_rule(node, inputs, proof, shape, shapes)
        if outputs is None:
            opaque.add(id(node))
            continue
        for index, flow in enumerate(outputs):
            flows[(id(node), index)] = _normalised(flow, shape)
    if id(output.grad_fn) in opaque:
        proof.unknown.append(type(output.grad_fn).__name__)
        return GraphProof(True, {}, False, proof.unknown, proof.custom, proof.workspace,
                          kinds=kinds)
    final = flows.get((id(output.grad_fn), output.output_nr))
    if final is None:
        return GraphProof(False, workspace=proof.workspace, kinds=kinds)
    proof.depends, proof.carries, proof.kinds = True, final.carries, kinds
    # a carry of several input axes may hide a pair inside it (a prefix of a merged axis)
    merged = any(len(c) > 1 for c in final.carries.values())
    proof.exact = final.exact and not merged and not proof.unknown and not proof.custom
    if not final.carries:
        proof.conditional_on = ()
    return proof


def prove_each(output: torch.Tensor, tensors):
    """:func:`prove` for each of ``tensors`` in turn (a generator: a caller may stop at the
    first it refuses), the graph below ``output`` walked and each node's output shapes read
    once for all of them: the same proofs, as each reads nothing else of a node but its
    rule's own attributes, which the rule reads per proof as before."""
    read = None
    for tensor in tensors:
        if read is None and output is not tensor and output.grad_fn is not None \
                and capabilities.graph_shapes_limitation() is None:
            read = _read(output)
        yield prove(output, tensor, read)


def _read(output: torch.Tensor) -> tuple:
    """(the nodes below ``output`` in postorder, their classes, each one's
    :func:`_shapes_and_bytes`): what every :func:`prove` on this graph reads first."""
    nodes = postorder(output.grad_fn)
    return nodes, frozenset(map(type, nodes)), [_shapes_and_bytes(node) for node in nodes]


# -- what a result needs of the graph when its derivatives came from elsewhere --------------
def reach_proofs(output: torch.Tensor, named: dict) -> dict:
    """``{name: GraphProof}`` saying only whether ``output`` depends on each input (``depends``)
    and which custom backward functions lie on the way (``custom``): one walk of the graph for
    all inputs, for those whose derivatives need no structure from the graph (accepted full
    Jacobians). Where a custom function lies on the way, :func:`prove` gives it."""
    BackwardCFunction = torch.autograd.function.BackwardCFunction
    if output.grad_fn is None:
        return {name: GraphProof(output is t, {}) for name, t in named.items()}
    sources: dict = {}  # (id(node), output index) → the non-leaf inputs that edge carries
    for name, t in named.items():
        if t.grad_fn is not None:
            sources.setdefault((id(t.grad_fn), t.output_nr), set()).add(name)
    leaves = {id(t): name for name, t in named.items() if t.grad_fn is None}
    reach: dict[int, frozenset] = {}
    custom = False
    for node in postorder(output.grad_fn):
        below = set()
        for producer, index in node.next_functions:
            if producer is None:
                continue
            below |= sources.get((id(producer), index), set())
            variable = getattr(producer, "variable", None)
            if variable is not None and id(variable) in leaves:
                below.add(leaves[id(variable)])
            # below a non-leaf input's own grad_fn, that input is constant
            below |= {n for n in reach.get(id(producer), ()) if named[n].grad_fn is not producer}
        reach[id(node)] = frozenset(below)
        custom = custom or (bool(below) and isinstance(node, BackwardCFunction))
    found = reach[id(output.grad_fn)]
    return {name: (prove(output, t) if custom or output is t
                   else GraphProof(name in found, {}))
            for name, t in named.items()}


def _inputs(node, tensor, source, identity: Flow, flows: dict,
            opaque: set) -> tuple[list, bool]:
    """(the flow of each of ``node``'s inputs: ``identity`` for ``tensor`` itself, None where
    it does not depend on it; whether one comes from a node whose outputs could not be
    read). ``source``: ``tensor.grad_fn``."""
    inputs, reached = [], False
    for producer, index in node.next_functions:
        if producer is None:
            inputs.append(None)
            continue
        reached = reached or id(producer) in opaque
        inputs.append(identity if _is_source(producer, index, tensor, source)
                      else flows.get((id(producer), index)))
    return inputs, reached


def _is_source(producer, index: int, tensor: torch.Tensor, source) -> bool:
    """Whether the edge (``producer``, ``index``) carries ``tensor`` itself (``source``:
    its ``grad_fn``; a leaf's edge comes from the node holding it as ``variable``)."""
    if source is not None:
        return producer is source and index == tensor.output_nr
    return _may_hold_variable(type(producer)) and getattr(producer, "variable", None) is tensor


@functools.lru_cache(maxsize=256)
def _may_hold_variable(kind: type) -> bool:
    """Whether a node of type ``kind`` may have a ``variable`` (``AccumulateGrad``'s leaf, or
    any attribute of a custom Function's node, which has a ``__dict__``): asked of the type,
    so that no other node's missing attribute is looked up, and failed, per edge."""
    return hasattr(kind, "variable") or kind.__dictoffset__ != 0


def _reach_only(output: torch.Tensor, tensor: torch.Tensor, limitation: str) -> GraphProof:
    """Whether ``output`` depends on ``tensor`` and through which custom functions, with no
    structure claimed: for a PyTorch whose graph hides the shapes (``limitation`` says so)."""
    reached: set[int] = set()
    proof = GraphProof(False, limitation=limitation)
    source = tensor.grad_fn
    for node in postorder(output.grad_fn):
        if node is tensor.grad_fn:
            continue  # the input itself: what lies below it is constant
        if any(producer is not None and (_is_source(producer, index, tensor, source)
                                         or id(producer) in reached)
               for producer, index in node.next_functions):
            reached.add(id(node))
            if isinstance(node, torch.autograd.function.BackwardCFunction):
                proof.custom.append(node.name())
    proof.depends = id(output.grad_fn) in reached
    return proof


def _shapes_and_bytes(node) -> tuple[list[tuple[int, ...]] | None, int]:
    """The shapes of ``node``'s outputs (None where one is no list of sizes: nested) and
    their bytes (only where :func:`.capabilities.graph_shapes`)."""
    shapes: list | None = []
    total = 0
    for meta in out_metadata(node):
        try:
            shape = tuple(map(int, meta.shape))
        except (TypeError, RuntimeError):  # a shape that is no list of sizes (nested)
            shapes = None
            continue
        total += math.prod(shape) * max(meta.dtype.itemsize, 4)
        if shapes is not None:
            shapes.append(shape)
    return shapes, total


def _normalised(flow: Flow, in_shape: tuple[int, ...]) -> Flow:
    """Drop carries of size-1 input axes (their index is always 0) from those of larger
    tensor axes (a carry left with :class:`.axisrules.Free` factors alone goes); a size-1
    tensor axis keeps only one size-1 input axis (a batch of one: which size-1 axes pair, as
    they would at a larger size)."""
    carries = {}
    for axis, carry in flow.carries.items():
        if axis >= len(flow.shape):
            continue
        if flow.shape[axis] == 1:
            if len(carry) == 1 and proper(carry) and in_shape[carry[0]] == 1:
                carries[axis] = carry
            continue
        kept = tuple(b for b in carry if isinstance(b, Free) or in_shape[b] > 1)
        if proper(kept):
            carries[axis] = kept
    return Flow(flow.shape, carries, flow.exact)


def _apply_rule(node, inputs: list[Flow | None], proof: GraphProof,
                x_shape: tuple[int, ...], shapes) -> list[Flow | None] | None:
    """The flows of ``node``'s outputs (``shapes``, from :func:`_shapes_and_bytes`)."""
    if isinstance(node, _CUSTOM):
        proof.custom.append(node.name())
        return _unknown(shapes)
    kind = type(node)  # (a rule depends on the node's type alone: looked up once)
    if kind.__name__ == "AccumulateGrad":
        return []
    if shapes is None:
        proof.unknown.append(kind.__name__)
        return None
    try:
        rule = _RULES[kind] if kind in _RULES else _RULES.setdefault(kind, rule_for(node))
        if rule is None:
            proof.unknown.append(type(node).__name__)
            return _unknown(shapes)
        flows = rule(node, inputs, shapes, x_shape)
        if kind.__name__.startswith("IndexBackward") and any(f is not None and f.carries
                                                             for f in flows):
            proof.conditional_on = tuple(dict.fromkeys(proof.conditional_on + ("indexing",)))
    except (AttributeError, RuntimeError, TypeError, ValueError, IndexError):
        # a saved attribute the rule reads is missing or not as expected: claim nothing
        proof.unknown.append(type(node).__name__)
        return _unknown(shapes)
    # an output the rule does not speak for may still depend on x: it claims nothing
    return [flow if flow is not None else Flow(shape, {}, exact=False)
            for flow, shape in itertools.zip_longest(flows, shapes)][:len(shapes)]


_RULES: dict = {}  # node type → :func:`.axisrules.rule_for`'s rule (by type name)
_CUSTOM = torch.autograd.function.BackwardCFunction  # custom autograd.Function backward nodes


def _unknown(shapes) -> list[Flow] | None:
    """Every output of a node without a rule depends on x, with no structure claimed; None
    when not even its outputs' shapes can be read (the walk then treats it as opaque)."""
    if shapes is None:
        return None
    return [Flow(shape, {}, exact=False) for shape in shapes]
