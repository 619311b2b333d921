"""Upsampling by s (R3-1, s42): the transpose of a strided receptive field, input index j
read by output indices s·j + lo .. s·j + hi, gets one kind at every length: "sparse" with
``stride`` s, ``field`` (lo, hi) and ``transposed`` True (as downsampling got s41's stride and
field). Patterns against ``torch.autograd.functional.jacobian`` in float64; stride and field
from how each layer is built (mathematics).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import vjp_magic
from vjp_magic.core.dependency import Kind

D = torch.float64


def _transposed_conv(k: int, s: int, p: int = 0):
    torch.manual_seed(0)
    return nn.ConvTranspose1d(2, 2, k, stride=s, padding=p).double()


LAYERS = {  # name -> (layer, stride, field): output s·j - p + t (t < k) reads input j
    "nearest x2": (lambda x: F.interpolate(x, scale_factor=2, mode="nearest"), 2, (0, 1)),
    "nearest x3": (lambda x: F.interpolate(x, scale_factor=3, mode="nearest"), 3, (0, 2)),
    # linear x2 (align_corners=False): output i samples (i + 0.5) / 2 - 0.5 between the two
    # inputs around it, so input j is read by outputs 2j - 1 .. 2j + 2
    "linear x2": (lambda x: F.interpolate(x, scale_factor=2, mode="linear"), 2, (-1, 2)),
    "ConvTranspose1d k2 s2": (_transposed_conv(2, 2), 2, (0, 1)),
    "ConvTranspose1d k3 s2": (_transposed_conv(3, 2), 2, (0, 2)),
    "ConvTranspose1d k4 s2 p1": (_transposed_conv(4, 2, 1), 2, (-1, 2)),
}


def _truth(f, x) -> torch.Tensor:
    jac = torch.autograd.functional.jacobian(f, x)  # (1, C, m, 1, C, n)
    return (jac != 0).movedim(2, 0).movedim(5, 1).flatten(2).any(2)


@pytest.mark.parametrize("name", list(LAYERS))
@pytest.mark.parametrize("length", [5, 6, 24, 97])
def test_upsampling_is_a_transposed_field_at_every_length(name, length):
    f, stride, field = LAYERS[name]
    x = torch.randn(1, 2, length, dtype=D, generator=torch.Generator().manual_seed(1))
    leaf = x.clone().requires_grad_()
    d = vjp_magic.dependency(f(leaf), leaf, 2, 2, seed=0)
    truth = _truth(f, x)
    assert torch.equal(d.pattern, truth), d
    assert (d.kind, d.stride, d.field, d.transposed, d.offsets) == (
        Kind.SPARSE, stride, field, True, None), d
    assert d.witness is not None and bool(truth[d.witness]), d
    i, j = d.witness
    assert i != stride * j, d  # off the field's start: a dependence no diagonal allows
    lo, hi = (f"{stride}j" + (f" {'+' if k > 0 else '−'} {abs(k)}" if k else "") for k in field)
    assert f"input index j is read by output indices {lo}..{hi}" in d.summary(), d.summary()


def test_downsampling_keeps_its_field_untransposed():
    conv = nn.Conv1d(2, 2, 3, stride=2, padding=1).double()
    x = torch.randn(1, 2, 24, dtype=D, requires_grad=True)
    d = vjp_magic.dependency(conv(x), x, 2, 2, seed=0)
    assert (d.stride, d.field, d.transposed) == (2, (-1, 1), False), d
    assert "index i reads 2i − 1..2i + 1" in d.summary()


def test_an_upsampling_with_a_leak_says_it():
    """nearest x2 plus one output reading the far end: still exact, the leak the witness."""
    def f(x):
        y = F.interpolate(x, scale_factor=2, mode="nearest")
        return y + F.pad(x[..., -1:], (0, y.shape[-1] - 1)) * 0.5  # output 0 reads x[-1]
    x = torch.randn(1, 2, 24, dtype=D, generator=torch.Generator().manual_seed(3))
    leaf = x.clone().requires_grad_()
    d = vjp_magic.dependency(f(leaf), leaf, 2, 2, seed=0)
    truth = _truth(f, x)
    assert torch.equal(d.pattern, truth), d
    assert d.witness is not None and bool(truth[d.witness]), d
