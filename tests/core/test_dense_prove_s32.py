"""The structure proof's walk made leaner (s32): a leaf's edge recognised by asking the node's
type whether it may hold a ``variable`` (no failed attribute look-up per edge), the input's
own node read once. What it proves is what mathematics says: elementwise maps pair every axis,
a matrix product mixes its summed axis, a custom Function is opaque (and a leaf it does not
reach stays unreached)."""
from __future__ import annotations

import torch

from vjp_magic.core import axisflow


class _Double(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.variable = x  # an attribute named like AccumulateGrad's leaf (its node has a dict)
        return 2 * x

    @staticmethod
    def backward(ctx, grad):
        return 2 * grad


def test_elementwise_of_a_leaf_pairs_every_axis():
    x = torch.randn(4, 5, requires_grad=True)
    proof = axisflow.prove(torch.sin(x) * x, x)
    assert proof.depends and proof.exact and proof.carries == {0: (0,), 1: (1,)}


def test_a_matrix_product_keeps_the_rows_only():
    x = torch.randn(6, 3, requires_grad=True)
    w = torch.randn(3, 2)
    proof = axisflow.prove(torch.tanh(x @ w), x)
    assert proof.depends and proof.carries == {0: (0,)}


def test_an_intermediate_input_and_what_lies_below_it():
    x = torch.randn(5, requires_grad=True)
    h = torch.exp(x)
    y = torch.cos(h) + h
    proof = axisflow.prove(y, h)
    assert proof.depends and proof.carries == {0: (0,)}
    assert not axisflow.prove(torch.cos(x.detach()) * 2, x).depends


def test_a_custom_function_is_opaque():
    x = torch.randn(5, requires_grad=True)
    through = axisflow.prove(torch.sin(_Double.apply(x)), x)
    assert through.depends and not through.exact and through.custom
    other = torch.randn(5, requires_grad=True)
    beside = torch.sin(_Double.apply(other)) + torch.zeros(5)
    assert not axisflow.prove(beside, x).depends
