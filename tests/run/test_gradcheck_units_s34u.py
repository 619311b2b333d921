"""--gradcheck's "Largest error" of a vector output is in the derivatives' own units (s34 U9):
the check weighs J by a random v, the figure it shows must not be weighted by it."""
from __future__ import annotations

import pytest

# y = x · sum(x): J_ij = δ_ij·S + x_i. The backward below drops the x_i term, so every column
# of J is off by x itself: the largest error of any column is max |x| (mathematics).
SCALED = """class Scaled(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x.sum()

    @staticmethod
    def backward(ctx, grad):
        x, = ctx.saved_tensors
        return grad * x.sum()  # should add (grad * x).sum()"""


def test_a_dense_jacobians_largest_error_is_one_derivatives(run_ok, run_vjp):
    run_ok(SCALED)
    r = run_vjp("x = torch.tensor([1., -2., 3.], requires_grad=True)\ny = Scaled.apply(x)",
                "--gradcheck")
    assert r.gradcheck.ok is False
    assert r.gradcheck.max_error["x"] == pytest.approx(3.0, rel=1e-3)


EXP = """class Exp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.exp()

    @staticmethod
    def backward(ctx, grad):
        x, = ctx.saved_tensors
        return grad * x.exp() * 1.01  # 1 % too large"""


@pytest.mark.parametrize("n", [5, 300])
def test_an_elementwise_largest_error_is_one_derivatives(run_ok, run_vjp, n):
    run_ok(EXP)
    r = run_vjp(f"x = torch.linspace(0, 1, {n}, dtype=torch.float64, requires_grad=True)\n"
                "y = Exp.apply(x)", "--gradcheck")
    assert r.gradcheck.ok is False
    # the error at entry k is 0.01·e^{x_k}; at most 0.01·e (x = 1, when it is checked)
    error = r.gradcheck.max_error["x"]
    assert error <= 0.01 * 2.718281828 * 1.001
    if n == 5:
        assert error == pytest.approx(0.01 * 2.718281828, rel=1e-3)
