"""The symbolic tensor: a value of the replay, a numpy object array of SymPy expressions with the
dtype torch gave the same computation.

It has no operators and no torch functions of its own: the replay re-applies each recorded call
to these values through the one rule table (:func:`~.registry.apply`), and the rules read and
build the arrays.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(eq=False, repr=False)
class SymTensor:
    """A tensor of SymPy expressions: ``array`` (an object array), its ``dtype``, and for a
    symbolic input its ``name``."""

    array: np.ndarray
    dtype: torch.dtype
    name: str | None = None  # set for the symbolic inputs

    @property
    def shape(self) -> torch.Size:
        return torch.Size(self.array.shape)

    def __repr__(self) -> str:
        return f"SymTensor(shape={tuple(self.shape)}, dtype={self.dtype})"
