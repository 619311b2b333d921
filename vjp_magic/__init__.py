"""vjp_magic: the ``gradient`` argument of ``backward`` worked out, derivatives shown as matrices.

``%load_ext vjp_magic`` registers the ``%%vjp`` cell magic and the ``%jacobian`` and
``%hessian`` line magics;
:func:`differentiate` does the same analysis from plain Python (see ``docs/api.md``).
"""
from importlib.metadata import PackageNotFoundError, version

from .core.dependency import Dependency, dependency
from .core.errors import VJPUsageError
from .core.result import GradientList, VJPResult
from .pipeline import check, differentiate, hessian
from .render.options import RenderOptions

try:
    __version__ = version("vjp_magic")  # written once, in pyproject.toml
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["check", "dependency", "Dependency", "differentiate", "hessian", "VJPResult", "VJPUsageError", "GradientList", "RenderOptions",
           "load_ipython_extension", "unload_ipython_extension"]


def load_ipython_extension(ipython) -> None:
    """Register ``%%vjp`` and ``%jacobian`` (called by ``%load_ext vjp_magic``)."""
    from .magics import load

    load(ipython)


def unload_ipython_extension(ipython) -> None:
    """Remove the magics again (called by ``%unload_ext vjp_magic``)."""
    from .magics import unload

    unload(ipython)
