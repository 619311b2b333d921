"""Adversarial review, session 29 (issue 20, "the pattern, proved"): index maps the graph rules
should prove for every x (pads of every mode, convolutions with their padding), read through
the public result (``r.inputs[name].sparse.evidence``).

A map left to be observed is still right (the values are checked against ``torch.func.jacrev``
here), but costs grouped probes: 74 passes and seconds at 2,000 entries (600 here) where a proved
pattern takes none. Tests marked ``xfail(strict=True)`` are gaps found in this review.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import vjp_magic

N = 600


def _circular(x):
    return F.pad(x[None, None], (2, 2), mode="circular")[0, 0][4:] * x


def _circular_conv(x):  # Conv1d(padding=1, padding_mode="circular")'s own graph
    kernel = torch.tensor([[[1.0, -2.0, 1.0]]], dtype=x.dtype)
    return F.conv1d(F.pad(x[None, None], (1, 1), mode="circular"), kernel)[0, 0] * x


def _reflect(x):
    return F.pad(x[None], (2, 2), mode="reflect")[0][4:] * x


def _replicate(x):
    return F.pad(x[None], (2, 2), mode="replicate")[0][4:] * x


def _constant(x):
    return F.pad(x, (2, 2))[4:] * x


def _sparse(f):
    x = torch.randn(N, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    expected = torch.func.jacrev(f)(x)
    x.requires_grad_()
    r = vjp_magic.differentiate(f(x), x, seed=0)
    torch.testing.assert_close(r.jacobian("x"), expected)
    return r.inputs["x"].sparse


@pytest.mark.parametrize("f", [_reflect, _replicate, _constant])
def test_pads_are_proved(f):
    sparse = _sparse(f)
    assert (sparse.evidence, sparse.pattern_passes) == ("proved", 0)


@pytest.mark.parametrize("f", [_circular, _circular_conv])
def test_circular_pads_are_proved(f):
    sparse = _sparse(f)
    assert (sparse.evidence, sparse.pattern_passes) == ("proved", 0)
