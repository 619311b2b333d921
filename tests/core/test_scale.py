"""Large inputs: chunked and batched paths agree with the plain ones; memory refusals are
immediate and say what to do. (Speed is measured by benchmarks/bench.py, not here.)"""
from __future__ import annotations

import pytest
import torch
from torch.autograd.functional import jacobian as reference_jacobian

from vjp_magic import VJPUsageError, differentiate
from vjp_magic.core.derivatives import chunk_size


def test_budget_sized_chunks_equal_one_batch():
    torch.manual_seed(1)
    x = torch.randn(40, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, 5, dtype=torch.float64)
    y = torch.tanh(x @ w)  # rows are points; 5 components
    tiny_budget = 3 * (y.numel() * 4 + x.numel()) * 8  # room for about 3 vectors at a time
    assert chunk_size(y, [x], tiny_budget) < 5
    chunked = differentiate(y, x, memory_budget=tiny_budget, exact_up_to=0)  # the probe path
    whole = differentiate(y, x, memory_budget=2**30, exact_up_to=0)
    assert chunked.point_axes == whole.point_axes == {"x": ((0, 0),)}
    torch.testing.assert_close(chunked.derivatives["x"], whole.derivatives["x"])
    ref = reference_jacobian(lambda t: torch.tanh(t @ w), x.detach())
    torch.testing.assert_close(whole.jacobian("x"), ref)


def test_full_jacobian_in_chunks_equals_reference():
    torch.manual_seed(2)
    a = torch.randn(30, 30, dtype=torch.float64)
    x = torch.randn(30, dtype=torch.float64, requires_grad=True)
    y = torch.tanh(a @ x)
    r = differentiate(y, x, full=True, max_chunk=7)
    torch.testing.assert_close(r.jacobian("x"),
                               reference_jacobian(lambda t: torch.tanh(a @ t), x.detach()))


def test_result_over_budget_is_refused_with_size_and_advice():
    x = torch.randn(200_000, requires_grad=True)
    y = torch.softmax(x, 0)  # full 2e5 x 2e5 Jacobian: 160 GB
    with pytest.raises(VJPUsageError) as info:
        differentiate(y, x, memory_budget=2**30)
    message = str(info.value)
    assert "160.0 GB" in message and "--wrt" in message
    assert x.grad is None


def test_jacobian_method_refuses_to_materialise_a_huge_matrix():
    x = torch.linspace(0, 1, 100_000, requires_grad=True)
    r = differentiate(torch.exp(x), x, memory_budget=2**28)
    assert r.point_axes["x"] == ((0, 0),)
    with pytest.raises(VJPUsageError, match="GB"):
        r.jacobian("x")


@pytest.mark.parametrize("points", [10_000, 1_000_000])
def test_many_points_structure_and_values(points):
    x = torch.linspace(-3, 3, points, requires_grad=True)
    y = torch.sin(x) * x**2
    r = differentiate(y, x)
    assert r.point_axes["x"] == ((0, 0),)
    expected = (torch.cos(x) * x**2 + 2 * x * torch.sin(x)).detach()
    torch.testing.assert_close(r.derivatives["x"], expected, rtol=1e-5, atol=1e-5)
    assert len(r.gradients["x"]) == 1 and x.grad is None


def test_jacobian_magic_on_a_million_points_renders_without_materialising(run_ok):
    run_ok("x = torch.linspace(-1, 1, 1_000_000, requires_grad=True)\ny = torch.sin(x)")
    r = run_ok("%jacobian y x")
    latex = r._repr_mimebundle_()["text/latex"]
    assert r"\ddots" in latex and len(latex) < 20_000
    # the corner entries of the 10^6 x 10^6 Jacobian: cos on the diagonal, zero elsewhere
    block = r.jacobian_block("x", torch.tensor([0, 1]), torch.tensor([0, 1]))
    expected = torch.diag(torch.cos(torch.tensor([-1.0, -1.0 + 2 / 999_999])))
    torch.testing.assert_close(block, expected)


def test_memory_budget_config_is_used(ip, run_ok):
    run_ok("x = torch.randn(20_000, requires_grad=True)\ny = torch.softmax(x, 0)")
    ip.run_line_magic("config", "VJPMagics.memory_budget = 1e6")
    try:
        result = ip.run_cell("%jacobian y x")
        assert "GB" in str(result.error_in_exec) or "MB" in str(result.error_in_exec)
    finally:
        ip.run_line_magic("config", "VJPMagics.memory_budget = 0.25")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_tensors_work_unchanged():
    x = torch.linspace(-2, 2, 1000, device="cuda", requires_grad=True)
    r = differentiate(torch.sin(x) * x, x)
    assert r.derivatives["x"].device.type == "cuda"
    assert r.point_axes["x"] == ((0, 0),)
    assert "at 1,000 points" in r._repr_mimebundle_()["text/plain"]


class _OnceDifferentiableSquare(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x**2

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return 2 * x * grad


@pytest.mark.parametrize("rows", [2000, 40_000])  # the exact path and the probe path
def test_tall_jacobian_by_forward_mode_matches_reference(rows):
    torch.manual_seed(3)
    a = torch.randn(rows, 8, dtype=torch.float64)
    x = torch.randn(8, dtype=torch.float64, requires_grad=True)
    y = torch.sin(a @ x)
    r = differentiate(y, x)
    assert r.point_axes["x"] == ()
    # d sin(a x) / dx = cos(a x) a, row by row (mathematics, not a 40 000-pass reference loop)
    expected = torch.cos(a @ x.detach())[:, None] * a
    torch.testing.assert_close(r.derivatives["x"], expected)


def test_forward_mode_falls_back_to_reverse_without_double_backward():
    a = torch.randn(300, 3, dtype=torch.float64)
    x = torch.randn(3, dtype=torch.float64, requires_grad=True)
    y = a @ _OnceDifferentiableSquare.apply(x)
    r = differentiate(y, x)
    torch.testing.assert_close(r.derivatives["x"], a * (2 * x.detach()))
