"""vjp_magic: the ``gradient`` argument of ``backward`` worked out, derivatives shown as matrices.

In a notebook, ``%load_ext vjp_magic`` registers:

- ``%%vjp``: run the cell, then show the derivatives of its output with respect to its inputs;
- ``%jacobian OUTPUT [INPUT ...]`` / ``%jacobian EXPRESSION wrt INPUT ...``: the full Jacobian
  of tensors already in the namespace;
- ``%hessian``: the same, for second derivatives.

From plain Python: :func:`differentiate` (as ``%%vjp``), :func:`hessian`, :func:`check`
(grade an answer; :func:`assert_correct` for autograded cells), :func:`dependency` (which
output indices read which input indices) and :func:`sparse_jacobian` (a sparse CSR Jacobian
from the live graph).
Each one's help (``vjp_magic.differentiate?``, ``%%vjp?``) is its reference; ``docs/api.md``
has the whole of it, ``docs/architecture.md`` how the package is built.
"""
from importlib.metadata import PackageNotFoundError, version

from .core.compressed import sparse_jacobian
from .core.dependency import Dependency, dependency
from .core.errors import GraphFreed, ObservedPatternWarning, VJPUsageError
from .core.hessian import HessianResult
from .core.result import DerivativeResult, GradientList, VJPResult
from .pipeline import assert_correct, check, differentiate, hessian
from .render.options import RenderOptions

try:
    __version__ = version("vjp_magic")  # written once, in pyproject.toml
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["assert_correct", "check", "dependency", "Dependency", "differentiate", "hessian",
           "sparse_jacobian",
           "DerivativeResult", "VJPResult", "HessianResult", "VJPUsageError", "GraphFreed",
           "ObservedPatternWarning",
           "GradientList", "RenderOptions",
           "load_ipython_extension", "unload_ipython_extension"]


def load_ipython_extension(ipython) -> None:
    """Register ``%%vjp``, ``%jacobian`` and ``%hessian`` (called by ``%load_ext vjp_magic``)."""
    from .magics import load

    load(ipython)


def unload_ipython_extension(ipython) -> None:
    """Remove the magics again (called by ``%unload_ext vjp_magic``)."""
    from .magics import unload

    unload(ipython)
