"""--gradcheck's largest error past 64 moving outputs (G14's s34 finding 3): the worst
entry's column of J is the backward's own, read in one double backward, so the figure is
the largest |analytic − numeric| derivative at every size, not a lower bound that varies per
run. Expected values from mathematics."""
import pytest
import torch

SCALED = """class Scaled(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x.sum()

    @staticmethod
    def backward(ctx, grad):
        x, = ctx.saved_tensors
        return grad * x.sum()  # should add (grad * x).sum()"""


@pytest.mark.parametrize("n", [50, 100, 300])
def test_the_largest_error_of_a_long_column_is_one_derivatives(run_ok, run_vjp, n):
    run_ok(SCALED)
    r = run_vjp(f"x = torch.linspace(-1, 2, {n}, dtype=torch.float64, requires_grad=True)\n"
                "y = Scaled.apply(x)", "--gradcheck")
    assert r.gradcheck.ok is False
    # y_i = x_i·S (S = Σx): ∂y_i/∂x_k = δ_ik·S + x_i; the backward gives δ_ik·S, so every
    # column's entries are off by x_i, at most max|x_i| = 2 (x = 2)
    assert r.gradcheck.max_error["x"] == pytest.approx(2.0, rel=1e-3)


def test_a_direction_never_cancels_an_error_shared_by_its_entries():
    """A backward missing a term every entry shares (x_i·Σv above) is off by the same c in
    every entry of a column; along a direction of signs alone a group's errors sum to
    c·Σu = 0 wherever its signs balance (half the pairs); the weights' magnitudes in [1, 2)
    never balance."""
    from vjp_magic.run.gradcheck import _weights
    generator = torch.Generator().manual_seed(0)
    sums = torch.stack([_weights(2, generator).sum() for _ in range(2000)])
    assert bool((sums.abs() > 0).all())
    magnitudes = _weights(10_000, generator).abs()
    assert float(magnitudes.min()) >= 1 and float(magnitudes.max()) < 2
