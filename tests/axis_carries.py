"""Checking a proved axis carry against the Jacobian, for the tests of the axis rules."""
from __future__ import annotations

import torch

from vjp_magic.core import axisflow


def carries_hold(f, x: torch.Tensor, carries: dict) -> None:
    """The Jacobian of ``f`` at ``x`` (``torch.autograd.functional.jacobian``) vanishes
    wherever an output index along a carried axis differs from the input's along the axis it
    carries (``carries``: output axis -> (input axis,))."""
    jac = torch.autograd.functional.jacobian(f, x)
    out = f(x).dim()
    idx = torch.meshgrid(*[torch.arange(n) for n in jac.shape], indexing="ij")
    for a, (b,) in carries.items():
        assert jac[idx[a] != idx[out + b]].abs().max() == 0, (a, b)


def proved_as(f, x: torch.Tensor, carries: dict) -> None:
    """:func:`.axisflow.prove` finds exactly ``carries`` for ``f`` at ``x``, each of them
    holding in the Jacobian (:func:`carries_hold`)."""
    leaf = x.clone().requires_grad_()
    proof = axisflow.prove(f(leaf), leaf)
    carries_hold(f, x, carries)
    assert proof.depends and proof.carries == carries
