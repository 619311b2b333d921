"""What the running PyTorch lets the package prove, checked once by feature (never by version
number), and what is left unproved where a feature is missing.

A missing feature never silently weakens a claim: whoever relies on it asks here first and,
where it is missing, claims less and says so with :func:`graph_shapes_limitation`.
"""
from __future__ import annotations

import functools

import torch

from .marked import marked

# The attribute of an autograd node that lists the shapes and dtypes of its forward outputs
# (``Node._input_metadata``, in PyTorch 2.5 and later). The structure proof reads the shape of
# every tensor on the graph from it, and the memory estimate their sizes.
SHAPES_ATTRIBUTE = "_input_metadata"


@functools.cache
def graph_shapes() -> bool:
    """Whether autograd nodes show their outputs' shapes (:data:`SHAPES_ATTRIBUTE`), both
    PyTorch's own nodes and those of a custom ``autograd.Function``."""

    class _Double(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return 2 * x

        @staticmethod
        def backward(ctx, grad):
            return 2 * grad

    with torch.enable_grad():
        leaf = torch.zeros(1, requires_grad=True)
        # the outputs stay alive while their nodes are read: a custom function's node is
        # freed with its output, and PyTorch 2.5 crashes when it is read after that
        outputs = (leaf.exp(), _Double.apply(leaf))
        return all(hasattr(out.grad_fn, SHAPES_ATTRIBUTE) for out in outputs)


def out_metadata(node) -> tuple:
    """The shape and dtype of each of ``node``'s forward outputs: only where
    :func:`graph_shapes` (the structure proof asks once, before it reads any node)."""
    return getattr(node, SHAPES_ATTRIBUTE)


def out_shapes(node) -> list[tuple[int, ...]]:
    return [tuple(int(n) for n in meta.shape) for meta in out_metadata(node)]


def graph_shapes_limitation() -> str | None:
    """What is not proved because this PyTorch hides the graph's shapes; None where it shows
    them."""
    if graph_shapes():
        return None
    return marked(
        f"This PyTorch ({torch.__version__}) cannot show the shapes on the autograd graph "
        f"(`Node.{SHAPES_ATTRIBUTE}`, PyTorch 2.5 and later): no structure is proved from "
        "the graph, it is only checked by probes at this input, and the memory estimate "
        "leaves out the graph's own tensors.")
