"""Kinds that do not depend on size or on how full a block is (R3-1, R3-2, R3-8).

A strided convolution or pooling reads s·i + lo .. s·i + hi (its receptive field) at every
length: sparse, with stride s and the field from the layer's kernel, padding and dilation
(mathematics), the same at every length. A batch of graphs with no edge between them is
block-diagonal with the graphs' sizes, however sparse each graph is inside; one edge between
two graphs is the witness. Patterns are checked against ``torch.autograd.functional.jacobian``.
"""
from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import vjp_magic
from vjp_magic.render import findings


def _truth(f, x, axis):
    jac = torch.autograd.functional.jacobian(f, x)
    return (jac != 0).movedim(axis, 0).movedim(x.dim() + axis, 1).flatten(2).any(2)


def _dependency(f, x, axis):
    leaf = x.clone().requires_grad_()
    d = vjp_magic.dependency(f(leaf), leaf, axis, axis, seed=0)
    pattern = d.pattern.to_dense() if d.pattern.layout != torch.strided else d.pattern
    assert torch.equal(pattern, _truth(f, x, axis))
    return d


# name: (layer, stride, receptive field s·i + lo .. s·i + hi as (lo, hi))
def _layers():
    torch.manual_seed(0)
    return {
        "conv-k3-s2-p1": (nn.Conv1d(2, 2, 3, stride=2, padding=1).double(), 2, (-1, 1)),
        "conv-k5-s3": (nn.Conv1d(2, 2, 5, stride=3).double(), 3, (0, 4)),
        "conv-k2-s4": (nn.Conv1d(2, 2, 2, stride=4).double(), 4, (0, 1)),
        "conv-k3-s2-d2": (nn.Conv1d(2, 2, 3, stride=2, dilation=2).double(), 2, (0, 4)),
        "avgpool-k3-s2": (lambda x: F.avg_pool1d(x, 3, 2), 2, (0, 2)),
        "avgpool-k4": (lambda x: F.avg_pool1d(x, 4), 4, (0, 3)),
    }


LAYERS = _layers()


@pytest.mark.parametrize("name", list(LAYERS))
@pytest.mark.parametrize("length", [13, 40, 97])
def test_a_strided_layer_is_sparse_with_its_receptive_field_at_every_length(name, length):
    layer, stride, field = LAYERS[name]
    x = torch.randn(1, 2, length, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    d = _dependency(layer, x, 2)
    assert (d.kind, d.offsets, d.stride, d.field) == ("sparse", None, stride, field), d
    assert d.exceptions() == [] and d.witness is not None and d.witness[1] != stride * d.witness[0]


def test_a_receptive_field_is_said_with_its_stride():
    layer, _, _ = LAYERS["conv-k3-s2-p1"]
    x = torch.randn(1, 2, 16, dtype=torch.float64, requires_grad=True)
    r = vjp_magic.differentiate(layer(x), x, seed=0)
    line = findings._verdict_line(r, "x", r.dependency("x", 2, 2))
    text = "".join(getattr(span, "plain", getattr(span, "text", "")) for span in line.spans)
    assert "sparse, stride 2: index i reads 2i − 1..2i + 1" in text, text


def _graphs(sizes, shape, crossing=None, seed=0):
    """y = x + messages along the edges of connected graphs laid one after another (a ring,
    an undirected path or an undirected random tree each), plus the edge ``crossing``
    (receiver, sender)."""
    rng, edges, start = random.Random(seed), [], 0
    for size in sizes:
        nodes = list(range(start, start + size))
        if shape == "ring" and size > 1:
            edges += [(nodes[(k + 1) % size], nodes[k]) for k in range(size)]
        elif shape == "path":
            edges += [e for k in range(size - 1) for e in ((nodes[k + 1], nodes[k]),
                                                          (nodes[k], nodes[k + 1]))]
        elif shape == "tree":
            edges += [e for k in range(1, size) for parent in [nodes[rng.randrange(k)]]
                      for e in ((nodes[k], parent), (parent, nodes[k]))]
        start += size
    edges += [crossing] if crossing else []
    receivers, senders = (torch.tensor(e) for e in zip(*edges))

    def f(x):
        return x + torch.zeros_like(x).index_add(0, receivers, torch.tanh(x[senders]))
    return f, start


@pytest.mark.parametrize("shape", ["ring", "path", "tree"])
@pytest.mark.parametrize("sizes", [(3, 1, 3, 1), (4, 2, 5, 1, 3), (3, 3, 3), (6, 1, 6, 1, 6),
                                   (8,) * 8])
def test_a_batch_of_sparse_graphs_is_block_diagonal_and_a_crossing_is_the_witness(shape, sizes):
    f, n = _graphs(sizes, shape)
    x = torch.randn(n, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    d = _dependency(f, x, 0)
    assert (d.kind, d.blocks, d.exceptions()) == ("block-diagonal", sizes, []), d
    for crossing in [(n - 2, 1), (1, n - 2)]:
        d = _dependency(_graphs(sizes, shape, crossing)[0], x, 0)
        assert (d.kind, d.blocks) == ("block-diagonal", sizes), d
        assert d.witness == crossing and d.exceptions() == [crossing], d
