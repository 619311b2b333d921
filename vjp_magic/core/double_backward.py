"""Where a graph has no double backward: the one test of the errors that say so.

A backward pass with ``create_graph=True``, or one through the graph it made (forward mode by
double backward: J·u as the VJP of g(v) = vᵀJ), fails where an op has no derivative of its
backward: PyTorch raises ``NotImplementedError`` (``_cdist_backward``: "the derivative for
'_cdist_backward' is not implemented"), or a ``RuntimeError`` (a custom Function marked
``once_differentiable``, a backward that is not differentiable). The paths that want a double
backward as a shortcut (column passes, row checks, forward-mode NaN fills) then take the path
that needs none; only a freed graph (the user's mistake, said by the entry point) goes on up.
"""
from __future__ import annotations

from .torch_api import TorchError, torch_error

MISSING = (RuntimeError, NotImplementedError)  # what such a pass may raise


def lacks_double_backward(error: BaseException) -> bool:
    """Whether ``error`` (one of :data:`MISSING`) leaves a double-backward shortcut to the
    path without one: anything but a freed graph."""
    return isinstance(error, MISSING) and torch_error(error) is not TorchError.SECOND_PASS
