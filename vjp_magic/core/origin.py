"""Whose code is it: PyTorch's, this package's, or the user's.

One owner for the question the guards ask of a frame, a hook's code or a function: by its
file (:func:`torchs`, :func:`ours`, :func:`called_by_us`) or, for a function followed through
the globals it reads, by its module (:func:`users_function`).
"""
from __future__ import annotations

import os
import sys
import types

import torch

# each folder with its separator: site-packages/torch is no prefix of torchvision's files
TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__)) + os.sep
PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
# top-level modules whose functions are a library's, not the user's
LIBRARIES = frozenset({"torch", "numpy", "functorch", "vjp_magic", "IPython", "scipy",
                       *getattr(sys, "stdlib_module_names", ())})


def torchs(filename: str) -> bool:
    """Whether the file ``filename`` (a code's ``co_filename``) is PyTorch's."""
    return filename.startswith(TORCH_DIR)


def ours(filename: str) -> bool:
    """Whether the file ``filename`` is this package's."""
    return filename.startswith(PACKAGE_DIR)


def called_by_us(frame) -> bool:
    """Whether the innermost frame from ``frame`` out that is not PyTorch's runs this
    package."""
    while frame is not None and torchs(frame.f_code.co_filename):
        frame = frame.f_back
    return frame is not None and ours(frame.f_code.co_filename)


def users_function(value) -> bool:
    """Whether ``value`` is a Python function (or bound method) of the user's: its module none
    of :data:`LIBRARIES` (the standard library's included). Reads no attribute of the user's
    (no ``__getattr__``, no ``__str__`` of a global ``__name__`` that is not a string)."""
    if type(value) is types.MethodType:
        value = value.__func__
    if type(value) is not types.FunctionType:
        return False
    module = dict.get(value.__globals__, "__name__")
    return type(module) is not str or module.partition(".")[0] not in LIBRARIES


__all__ = ["LIBRARIES", "PACKAGE_DIR", "TORCH_DIR", "called_by_us", "ours", "torchs",
           "users_function"]
