"""Second derivatives (``core/hessian.py``): ``second_derivatives`` against
``torch.autograd.functional.hessian`` and ``torch.func.hessian`` (``vmap(hessian(f))`` per
point) or the mathematics, never the code under test: elementwise, a scalar of a vector,
row-wise layers, several inputs, symmetry, graphs without a double backward.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hessians import W, close, displayed, leaf, one_sentence
from torch.autograd.function import once_differentiable
from torch.func import hessian as func_hessian
from torch.func import vmap

from vjp_magic.core.errors import VJPUsageError
from vjp_magic.core.hessian import second_derivatives

DTYPES = [torch.float32, torch.float64]


def _full_reference(f, x):
    """∂²f(x)/∂x∂x of any output, shape output.shape + x.shape + x.shape (torch.func)."""
    return torch.func.jacfwd(torch.func.jacrev(f))(x.detach())


# -- elementwise: f″ at each point, shaped like x --------------------------------------------
ELEMENTWISE = {
    "sin": (torch.sin, lambda x: -torch.sin(x)),
    "cube": (lambda x: x**3, lambda x: 6 * x),
    "exp": (torch.exp, torch.exp),
    "log": (torch.log, lambda x: -1 / x**2),
    "tanh": (torch.tanh, lambda x: -2 * torch.tanh(x) * (1 - torch.tanh(x) ** 2)),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(ELEMENTWISE))
def test_elementwise_gives_f_second_at_each_point(name, dtype):
    f, f2 = ELEMENTWISE[name]
    x = leaf(torch.linspace(0.3, 2.0, 7), dtype)
    h = second_derivatives(f(x), x)
    d = h.derivatives["x"]
    assert d.shape == x.shape
    per_point = vmap(func_hessian(f))(x.detach())  # one 0-d Hessian per point
    close(d, per_point, dtype)
    close(d, f2(x.detach()), dtype)
    assert h.point_axes["x"] == ((0, 0),)


@pytest.mark.parametrize("dtype", DTYPES)
def test_elementwise_full_hessian_puts_the_point_deltas_back(dtype):
    x = leaf([0.5, -1.0, 2.0], dtype)
    h = second_derivatives(torch.sin(x), x)
    full = h.hessian("x")
    assert full.shape == (3, 3, 3)
    close(full, _full_reference(torch.sin, x), dtype)
    assert full[0, 1, 1] == 0 and full[2, 0, 0] == 0  # nothing across points


def test_elementwise_on_a_matrix_input():
    x = leaf(torch.randn(3, 4), torch.float64)
    h = second_derivatives(torch.sin(x) * 2, x)
    close(h.derivatives["x"], -2 * torch.sin(x.detach()), torch.float64)
    close(h.hessian(), _full_reference(lambda t: torch.sin(t) * 2, x), torch.float64)


# -- a scalar of a vector: the n×n Hessian --------------------------------------------------
def _rosenbrock(z):
    return (1 - z[0]) ** 2 + 100 * (z[1] - z[0] ** 2) ** 2


A = torch.tensor([[2.0, 1.0, 0.0], [-1.0, 3.0, 0.5], [0.25, 0.0, 1.0]])
SCALARS = {
    "sum of squares": (lambda x: (x**2).sum(), [0.5, -1.0, 2.0]),
    "quadratic form": (lambda x: x @ A.to(x.dtype) @ x, [0.5, -1.0, 2.0]),
    "logsumexp": (lambda x: torch.logsumexp(x, 0), [0.5, -1.0, 2.0]),
    "rosenbrock": (_rosenbrock, [-1.2, 1.0]),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(SCALARS))
def test_scalar_of_a_vector_gives_the_n_by_n_hessian(name, dtype):
    f, values = SCALARS[name]
    x = leaf(values, dtype)
    h = second_derivatives(f(x), x)
    n = x.numel()
    expected = torch.autograd.functional.hessian(f, x.detach())
    assert h.derivatives["x"].shape == (n, n)
    close(h.derivatives["x"], expected, dtype)
    close(h.hessian("x"), expected, dtype)
    close(h.hessian("x"), func_hessian(f)(x.detach()), dtype)
    assert h.inputs["x"].symmetric


def test_quadratic_form_hessian_is_a_plus_a_transpose():
    x = leaf([0.5, -1.0, 2.0], torch.float64)
    a = A.double()
    h = second_derivatives(x @ a @ x, x, output_name="q")
    close(h.derivatives["x"], a + a.T, torch.float64)


def test_rosenbrock_at_its_minimum():
    x = leaf([1.0, 1.0], torch.float64)
    h = second_derivatives(_rosenbrock(x), x)
    close(h.derivatives["x"], torch.tensor([[802.0, -400.0], [-400.0, 200.0]]), torch.float64)


def test_scalar_of_a_matrix_input():
    x = leaf(torch.randn(2, 3), torch.float64)

    def f(t):
        return (t**3).sum() + t[0, 0] * t[1, 2]

    h = second_derivatives(f(x), x)
    assert h.derivatives["x"].shape == (2, 3, 2, 3)
    close(h.derivatives["x"], torch.autograd.functional.hessian(f, x.detach()), torch.float64)


# -- row-wise layers: one Hessian per row (and component) -----------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_row_wise_layer_summed_per_row(dtype):
    x = leaf(torch.randn(6, 4, generator=torch.Generator().manual_seed(1)), dtype)
    w = W.to(dtype)

    def row(r):
        return torch.tanh(r @ w).sum()

    h = second_derivatives(torch.tanh(x @ w).sum(1), x)
    assert h.point_axes["x"] == ((0, 0),)
    assert h.derivatives["x"].shape == (6, 4, 4)
    close(h.derivatives["x"], vmap(func_hessian(row))(x.detach()), dtype)
    close(h.hessian(), _full_reference(lambda t: torch.tanh(t @ w).sum(1), x), dtype)
    assert h.inputs["x"].symmetric


def test_row_wise_layer_with_components():
    x = leaf(torch.randn(5, 4, generator=torch.Generator().manual_seed(2)), torch.float64)
    w = W.double()
    h = second_derivatives(torch.tanh(x @ w), x)
    d = h.derivatives["x"]
    assert d.shape == (3, 5, 4, 4)  # component, row, then one row's 4 × 4 Hessian
    per_row = vmap(func_hessian(lambda r: torch.tanh(r @ w)))(x.detach())  # (5, 3, 4, 4)
    close(d, per_row.permute(1, 0, 2, 3), torch.float64)
    close(h.hessian(), _full_reference(lambda t: torch.tanh(t @ w), x), torch.float64)


def test_components_at_points_seed_example():
    x = leaf([-1.0, 0.0, 2.0], torch.float64)
    h = second_derivatives(torch.stack([-x**3, 5 * x]), x)
    d = h.derivatives["x"]
    assert d.shape == (2, 3)
    close(d, torch.stack([-6 * x.detach(), torch.zeros(3, dtype=torch.float64)]),
           torch.float64)


def test_vector_output_without_points():
    x = leaf([0.3, -0.2, 0.9], torch.float64)

    def f(t):
        return torch.softmax(t, 0)

    h = second_derivatives(f(x), x)
    assert h.derivatives["x"].shape == (3, 3, 3)
    close(h.derivatives["x"], _full_reference(f, x), torch.float64)
    close(h.hessian(), _full_reference(f, x), torch.float64)


# -- several inputs, linear outputs, scale ----------------------------------------------------
def test_several_inputs_one_hessian_each():
    x = leaf([0.5, 1.5], torch.float64)
    w = leaf([2.0, -1.0], torch.float64)
    h = second_derivatives((x**2 * w**3).sum(), [x, w], ["x", "w"], output_name="s")
    xd, wd = x.detach(), w.detach()
    close(h.derivatives["x"], torch.diag(2 * wd**3), torch.float64)
    close(h.derivatives["w"], torch.diag(6 * xd**2 * wd), torch.float64)
    with pytest.raises(ValueError, match="Name the input"):
        h.hessian()


def test_linear_output_has_zero_second_derivatives():
    x = leaf([1.0, 2.0, 3.0], torch.float32)
    h = second_derivatives(3 * x + 1, x)
    assert h.inputs["x"].constant
    assert torch.equal(h.derivatives["x"], torch.zeros(3))
    assert torch.equal(h.hessian(), torch.zeros(3, 3, 3))


def test_large_elementwise():
    x = leaf(torch.linspace(-3, 3, 100_000), torch.float32)
    h = second_derivatives(torch.sin(x) * x, x)
    xd = x.detach()
    close(h.derivatives["x"], 2 * torch.cos(xd) - xd * torch.sin(xd), torch.float32)


def test_large_row_wise_layer():
    gen = torch.Generator().manual_seed(4)
    x = leaf(torch.randn(20_000, 8, generator=gen), torch.float32)
    w = torch.randn(8, 3, generator=gen)

    def row(r):
        return torch.tanh(r @ w).sum()

    h = second_derivatives(torch.tanh(x @ w).sum(1), x)
    assert h.derivatives["x"].shape == (20_000, 8, 8)
    close(h.derivatives["x"], vmap(func_hessian(row))(x.detach()), torch.float32)


def test_input_the_output_does_not_use():
    x = leaf([1.0, 2.0], torch.float64)
    w = leaf([3.0, 4.0, 5.0], torch.float64)
    h = second_derivatives(torch.sin(x), {"x": x, "w": w})
    assert h.inputs["w"].unused
    assert torch.equal(h.hessian("w"), torch.zeros(2, 3, 3, dtype=torch.float64))
    close(h.derivatives["x"], -torch.sin(x.detach()), torch.float64)


def test_second_derivatives_over_the_budget_are_refused():
    x = leaf(torch.randn(200), torch.float32)
    with pytest.raises(VJPUsageError, match="second derivatives of y .* memory budget"):
        second_derivatives(torch.logsumexp(x, 0), x, memory_budget=20_000)


def test_one_variable_vector_output():
    t = leaf(0.5, torch.float64)
    h = second_derivatives(torch.stack([t, t**2, t**3]), t, "t")
    close(h.derivatives["t"], torch.tensor([0.0, 2.0, 3.0]), torch.float64)
    close(h.hessian(), _full_reference(lambda s: torch.stack([s, s**2, s**3]), t),
           torch.float64)
    assert "d²y_k/dt²" in displayed(h)["text/plain"]


def test_full_hessian_over_the_budget_is_refused():
    x = leaf(torch.linspace(-3, 3, 100_000), torch.float32)
    h = second_derivatives(torch.sin(x), x)
    with pytest.raises(VJPUsageError, match="full Hessian .* memory budget"):
        h.hessian()


# -- symmetry ---------------------------------------------------------------------------------
class _Skewed(torch.autograd.Function):
    """f(a, b) = a·b with a backward whose second derivatives are not symmetric."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x[0] * x[1]

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * torch.stack([x[1], 2 * x[0]])  # ∂/∂b of the first is 1, ∂/∂a of the second 2


class _Cube(torch.autograd.Function):
    """x³ with a backward written in torch ops (so it has a double backward)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x**3

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 3 * x**2 * g


@pytest.mark.parametrize("dtype", DTYPES)
def test_custom_function_structure_is_observed_and_checked(dtype):
    x = leaf(torch.linspace(-2, 2, 2000), dtype)
    h = second_derivatives(_Cube.apply(x), x)
    assert h.inputs["x"].evidence == "observed"  # nothing proved through a custom function
    close(h.derivatives["x"], 6 * x.detach(), dtype)
    assert any("_CubeBackward" in note and "gradgradcheck" in note for note in h.notes)


def test_asymmetric_hessian_is_noted():
    x = leaf([1.0, 2.0], torch.float64)
    h = second_derivatives(_Skewed.apply(x), x)
    assert not h.inputs["x"].symmetric
    close(h.derivatives["x"], torch.tensor([[0.0, 1.0], [2.0, 0.0]]), torch.float64)
    assert any("not symmetric" in note for note in h.notes)


def test_smooth_hessians_are_symmetric_within_tolerance():
    x = leaf(torch.randn(4, 3, generator=torch.Generator().manual_seed(3)), torch.float32)
    h = second_derivatives(torch.logsumexp(x * x.sin(), 1), x)
    assert h.inputs["x"].symmetric
    blocks = h.derivatives["x"]
    torch.testing.assert_close(blocks, blocks.transpose(-1, -2))


# -- graphs without double backward ---------------------------------------------------------
class _OnceSquare(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x**2

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 2 * x * g




@pytest.mark.parametrize("build", [lambda x: _OnceSquare.apply(x).sin(),
                                   lambda x: _OnceSquare.apply(x).sum()],
                         ids=["then sin", "then sum"])
def test_once_differentiable_is_one_sentence(build):
    x = leaf([0.5, 1.0, 2.0], torch.float64)
    with pytest.raises(VJPUsageError) as caught:
        second_derivatives(build(x), x)
    message = str(caught.value)
    assert "cannot be differentiated twice" in message and "_OnceSquare" in message
    assert "no double backward" in message and one_sentence(message)


def _twice_differentiable(build, x) -> bool:
    """Whether this PyTorch differentiates ``build`` twice: the premise of the test below,
    read off PyTorch itself (cdist gained a double backward in 2.14, pdist in 2.15)."""
    (first,) = torch.autograd.grad(build(x), x, create_graph=True)
    try:
        torch.autograd.grad(first.sin().sum(), x)
    except (RuntimeError, NotImplementedError) as error:
        if "is not implemented" not in str(error):
            raise
        return False
    return True


# PyTorch words a missing double backward two ways: "the derivative for '_pdist_backward' is
# not implemented." (a formula marked not_implemented) and "derivative for
# aten::multi_margin_loss_backward is not implemented" (no formula at all, every torch ≥ 2.5).


@pytest.mark.parametrize("build, op", [
    (lambda x: torch.pdist(x.reshape(2, 2)).sum(), "pdist"),
    (lambda x: F.multi_margin_loss(x.reshape(2, 2), torch.tensor([0, 1])),
     "multi_margin_loss"),
], ids=["quoted", "unquoted"])
def test_op_without_double_backward_is_one_sentence(build, op):
    x = leaf(torch.randn(4), torch.float64)
    if _twice_differentiable(build, x):
        pytest.skip(f"this PyTorch ({torch.__version__}) differentiates {op} twice")
    with pytest.raises(VJPUsageError) as caught:
        second_derivatives(build(x), x)
    message = str(caught.value)
    assert f"cannot be differentiated twice: {op} has no double backward" in message
    assert one_sentence(message)


# -- nothing of the user's is touched ---------------------------------------------------------
def test_grad_is_never_changed():
    x = leaf([0.5, 1.0], torch.float64)
    x.grad = torch.tensor([7.0, 8.0], dtype=torch.float64)
    y = (x**3).sum()
    second_derivatives(y, x)
    assert torch.equal(x.grad, torch.tensor([7.0, 8.0], dtype=torch.float64))
    y.backward()  # the graph is still usable
    assert torch.allclose(x.grad, torch.tensor([7.75, 11.0], dtype=torch.float64))


def test_no_grad_when_there_was_none():
    x = leaf([0.5, 1.0], torch.float32)
    second_derivatives(torch.sin(x), x)
    assert x.grad is None


def test_output_without_history_is_a_usage_error():
    x = leaf([0.5, 1.0], torch.float32)
    with pytest.raises(VJPUsageError, match="no autograd history"):
        second_derivatives(torch.sin(x).detach(), x)
