"""CUDA tensors: the same answers as on the CPU, computed and kept on the device.

Expected values come from ``torch.autograd.functional.jacobian`` on the same tensors.
These run only where a GPU is present (``pytest -m cuda`` on such a machine).
"""
from __future__ import annotations

import pytest
import torch
from torch.autograd.functional import jacobian

from vjp_magic import differentiate

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _full(fn, x):
    return jacobian(fn, x.detach())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_points_on_the_device(dtype):
    x = torch.linspace(-2, 2, 1000, device="cuda", dtype=dtype, requires_grad=True)
    r = differentiate(torch.sin(x) * x, x)
    assert r.derivatives["x"].device.type == "cuda"
    expected = torch.cos(x.detach()) * x.detach() + torch.sin(x.detach())
    torch.testing.assert_close(r.derivatives["x"], expected)
    assert r.point_axes["x"] == ((0, 0),)


def test_rows_and_full_jacobian_match_autograd():
    torch.manual_seed(0)
    X = torch.randn(64, 5, device="cuda", requires_grad=True)
    W = torch.randn(5, 3, device="cuda")
    fn = lambda t: torch.tanh(t @ W)  # noqa: E731
    r = differentiate(fn(X), X)
    assert r.point_axes["x"] == ((0, 0),)
    torch.testing.assert_close(r.jacobian(), _full(fn, X))


def test_a_mixing_map_is_the_full_jacobian():
    torch.manual_seed(0)
    x = torch.randn(300, device="cuda", requires_grad=True)
    fn = lambda t: torch.softmax(t, 0)  # noqa: E731
    r = differentiate(fn(x), x)
    assert r.point_axes["x"] == ()
    torch.testing.assert_close(r.jacobian(), _full(fn, x))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_types_on_the_device(dtype):
    x = torch.linspace(-1, 1, 4096, device="cuda", dtype=dtype, requires_grad=True)
    r = differentiate(x * x, x)
    assert r.point_axes["x"] == ((0, 0),)
    torch.testing.assert_close(r.derivatives["x"], 2 * x.detach())


def test_display_leaves_only_shown_entries_on_the_host():
    x = torch.linspace(-1, 1, 10**6, device="cuda", requires_grad=True)
    r = differentiate(torch.sin(x), x)
    bundle = r._repr_mimebundle_()
    assert "text/plain" in bundle and len(bundle["text/plain"]) < 20_000
    assert r.derivatives["x"].device.type == "cuda"
