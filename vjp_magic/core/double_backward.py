"""Where a graph has no double backward: the one test of the errors that say so.

A backward pass with ``create_graph=True``, or one through the graph it made (forward mode by
double backward: J·u as the VJP of g(v) = vᵀJ), fails where an op has no derivative of its
backward: PyTorch raises ``NotImplementedError`` (``_cdist_backward``: "the derivative for
'_cdist_backward' is not implemented"), or a ``RuntimeError`` (a custom Function marked
``once_differentiable``, a backward that is not differentiable). The paths that want a double
backward as a shortcut (column passes, row checks, forward-mode NaN fills) then take the path
that needs none; any other error (a freed graph, the user's mistake said by the entry point;
out of memory; a bug of ours) goes on up. PyTorch's texts: :func:`.torch_api.no_double_backward`.
"""
from __future__ import annotations

from .torch_api import no_double_backward

MISSING = (RuntimeError, NotImplementedError)  # what such a pass may raise


def lacks_double_backward(error: BaseException) -> bool:
    """Whether ``error`` (one of :data:`MISSING`) says the graph has no double backward, so a
    double-backward shortcut takes the path without one."""
    return no_double_backward(error)
