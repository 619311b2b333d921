"""Structure inference against torch.autograd.functional.jacobian (the ground truth)."""
from __future__ import annotations

import math

import pytest
import torch
from torch.autograd.functional import jacobian as reference_jacobian

from vjp_magic import differentiate
from vjp_magic.core import axisflow
from vjp_magic.core.pairing import AxisPair, Pairing
from vjp_magic.core.structure import candidate_pairings
from vjp_magic.core.tolerances import TOLERANCES, tolerances

torch.manual_seed(0)
A = torch.randn(3, 4, dtype=torch.float64)
B = torch.randn(4, 2, dtype=torch.float64)

CASES = {
    # name: (function, input shape, expected point axes)
    "elementwise": (lambda x: torch.sin(x) * x**2, (5,), ((0, 0),)),
    "softmax_vector_not_pointwise": (lambda x: torch.softmax(x, 0), (5,), ()),
    "cumsum_not_pointwise": (lambda x: torch.cumsum(x, 0), (4,), ()),
    "normalise_not_pointwise": (lambda x: x / x.norm(), (4,), ()),
    "sort_not_pointwise": (lambda x: torch.sort(x).values, (4,), ()),
    "rows_are_points_x_at_B": (lambda x: torch.tanh(x @ B), (6, 4), ((0, 0),)),
    "columns_are_points_A_at_x": (lambda x: A @ x, (4, 6), ((1, 1),)),
    "row_softmax": (lambda x: torch.softmax(x, 1), (3, 3), ((0, 0),)),
    "column_softmax": (lambda x: torch.softmax(x, 0), (3, 3), ((1, 1),)),
    "transpose_elementwise": (lambda x: x.T ** 2, (3, 3), ((0, 1), (1, 0))),
    "transpose_rect": (lambda x: x.T.exp(), (2, 3), ((0, 1), (1, 0))),
    "column_vector": (lambda x: x**2, (5, 1), ((0, 0), (1, 1))),
    "matrix_elementwise": (lambda x: x.exp(), (3, 3), ((0, 0), (1, 1))),
    "stack_components": (lambda x: torch.stack([-x**3, 5 * x]), (3,), ((1, 0),)),
    "scalar_out": (lambda x: (x**2).sum(), (3, 2), ()),
    "flip_not_pointwise": (lambda x: x.flip(0) * x, (4,), ()),
    "roll_then_square": (lambda x: torch.roll(x, 1, 0) ** 2, (5,), ()),
    "row_reduction_vector_output": (lambda x: torch.stack([x.sum(1), (x**2).sum(1)]), (3, 4),
                                    ((1, 0),)),
    "outer_product_self": (lambda x: torch.outer(x, x), (3,), ()),
    "mean_centered": (lambda x: x - x.mean(), (4,), ()),
    "batched_matvec": (lambda x: torch.einsum("bij,bj->bi", x.reshape(2, 3, 2), x[:, :2]),
                       (2, 6), ((0, 0),)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_structure_and_values_match_autograd(case, strategy):
    fn, shape, expected_axes = CASES[case]
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    y = fn(x)
    r = differentiate(y, x, **strategy)
    assert r.point_axes["x"] == expected_axes
    ref = reference_jacobian(fn, x.detach())
    torch.testing.assert_close(r.jacobian("x"), ref)
    # derivatives have shape (non-point output axes) + input shape
    point_out = {a for a, _ in expected_axes}
    comp = tuple(n for a, n in enumerate(y.shape) if a not in point_out)
    assert r.derivatives["x"].shape == comp + tuple(shape)
    # each gradient argument is a 0/1 tensor shaped like the output, and the derivatives are
    # exactly their vector-Jacobian products
    grads = r.gradients["x"]
    assert len(grads) == math.prod(comp)
    flat_ref = ref.reshape(y.numel(), -1)
    for k, v in enumerate(grads):
        assert v.shape == y.shape
        assert set(v.unique().tolist()) <= {0.0, 1.0}
        vjp = (v.reshape(1, -1).to(ref.dtype) @ flat_ref).reshape(shape)
        torch.testing.assert_close(r.derivatives["x"].reshape((-1,) + tuple(shape))[k], vjp)


def test_several_inputs_linear_layer(strategy):
    x = torch.randn(5, 3, requires_grad=True, dtype=torch.float64)
    w = torch.randn(2, 3, requires_grad=True, dtype=torch.float64)
    b = torch.randn(2, requires_grad=True, dtype=torch.float64)
    y = torch.tanh(x @ w.T + b)
    r = differentiate(y, {"x": x, "w": w, "b": b}, **strategy)
    refs = reference_jacobian(lambda x, w, b: torch.tanh(x @ w.T + b), (x, w, b))
    for name, ref in zip("xwb", refs):
        torch.testing.assert_close(r.jacobian(name), ref)
    assert r.point_axes["x"] == ((0, 0),)
    assert x.grad is None and w.grad is None and b.grad is None


def test_tiny_cross_point_coupling_is_caught():
    # y = x + mean(x) looks elementwise by shape; the probe must see the coupling.
    x = torch.randn(1000, requires_grad=True)
    y = x + x.mean()
    r = differentiate(y, x)
    assert r.point_axes["x"] == ()
    torch.testing.assert_close(r.jacobian("x"),
                               reference_jacobian(lambda t: t + t.mean(), x.detach()))


def test_output_independent_of_input_gives_zeros(strategy):
    x = torch.randn(3, requires_grad=True)
    z = torch.randn(3, requires_grad=True)
    y = z * 2
    r = differentiate(y, {"x": x, "z": z}, **strategy)
    assert torch.equal(r.derivatives["x"], torch.zeros_like(r.derivatives["x"]))
    assert r.inputs["x"].unused and not r.inputs["z"].unused


def test_candidates_prefer_more_point_axes_and_end_with_full():
    cands = candidate_pairings((3, 3), (3, 3))
    assert cands[0] == ((0, 0), (1, 1))
    assert cands[-1] == ()
    assert len(cands[0]) >= len(cands[1]) >= len(cands[-1])


def test_size_one_axes_pair_with_size_one(strategy):
    x = torch.linspace(-2, 2, 5).view(-1, 1).requires_grad_(True)
    r = differentiate(x**2, x, **strategy)
    assert r.derivatives["x"].shape == x.shape


def test_input_named_from_list_and_default_name():
    x = torch.randn(3, requires_grad=True)
    assert list(differentiate(x.exp(), x).derivatives) == ["x"]
    assert list(differentiate(x.exp(), [x], names=["t"]).derivatives) == ["t"]
    assert list(differentiate(x.exp(), x, names="t").derivatives) == ["t"]


def test_loop_fallback_equals_batched():
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    y = torch.softmax(x, 0)
    batched = differentiate(y, x)
    looped = differentiate(y, x, batched=False)
    chunked = differentiate(y, x, max_chunk=2)
    torch.testing.assert_close(batched.derivatives["x"], looped.derivatives["x"])
    torch.testing.assert_close(batched.derivatives["x"], chunked.derivatives["x"])
    assert batched.point_axes == looped.point_axes == chunked.point_axes


def test_infinite_derivative_at_a_point_keeps_point_structure(strategy):
    x = torch.tensor([0.0, 1.0, 4.0], requires_grad=True)
    r = differentiate(torch.sqrt(x), x, **strategy)
    assert r.point_axes["x"] == ((0, 0),)
    assert r.derivatives["x"][0] == float("inf")
    torch.testing.assert_close(r.derivatives["x"][1:], torch.tensor([0.5, 0.25]))


def test_chunked_probe_path_equals_unchunked():
    x = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    y = torch.cumsum(x, 1)  # rows are points, 5 components each
    whole = differentiate(y, x, exact_up_to=0)  # the probe path
    chunked = differentiate(y, x, max_chunk=2, exact_up_to=0)
    looped = differentiate(y, x, batched=False, exact_up_to=0)
    assert whole.point_axes["x"] == ((0, 0),) == chunked.point_axes["x"] == looped.point_axes["x"]
    torch.testing.assert_close(chunked.derivatives["x"], whole.derivatives["x"])
    torch.testing.assert_close(looped.derivatives["x"], whole.derivatives["x"])
    torch.testing.assert_close(whole.jacobian("x"),
                               reference_jacobian(lambda t: torch.cumsum(t, 1), x.detach()))


class _SwapNeighbours(torch.autograd.Function):
    """A custom op whose node name says nothing: y_i = x_{i+1} (cyclic)."""

    @staticmethod
    def forward(ctx, x):
        return torch.roll(x, -1, 0)

    @staticmethod
    def backward(ctx, grad):
        return torch.roll(grad, 1, 0)


@pytest.mark.parametrize(
    "fn, proven",
    [
        (lambda x: torch.sin(x) * x**2, True),
        (lambda x: torch.relu(x - 1).clamp(max=2) / (1 + x.exp()), True),
        (lambda x: torch.where(x > 0, x, 0.1 * x).double(), True),
        (lambda x: x * x.sum(), False),
        (lambda x: x + x.flip(0), False),
        (lambda x: torch.cumsum(x, 0), False),
        (lambda x: _SwapNeighbours.apply(x) * 2, False),
        (lambda x: x.view(-1, 1).squeeze(1) ** 2, True),  # a view and back: still elementwise
    ],
)
def test_graph_proof_of_elementwise_structure(fn, proven):
    x = torch.randn(6, dtype=torch.float64, requires_grad=True)
    y = fn(x)
    assert (axisflow.prove(y, x).pairing(y.shape, x.shape) == ((0, 0),)) is proven
    # whatever the proof says, the answer matches the reference on the probe path too
    r = differentiate(y, x, exact_up_to=0)
    torch.testing.assert_close(r.jacobian("x"), reference_jacobian(fn, x.detach()))


def test_custom_op_that_moves_entries_is_not_called_pointwise(strategy):
    x = torch.randn(5, dtype=torch.float64, requires_grad=True)
    r = differentiate(_SwapNeighbours.apply(x), x, **strategy)
    assert r.point_axes["x"] == ()


@pytest.mark.parametrize(
    "fn, shape",
    [
        (lambda x: x @ x, (4, 3, 3)),  # many equal-size axes: the batch axis must still be found
        (lambda x: torch.softmax(x @ x.transpose(1, 2), -1), (2, 4, 4)),
        (lambda x: torch.nn.functional.conv2d(x, torch.ones(2, 1, 3, 3, dtype=x.dtype), padding=1),
         (2, 1, 5, 5)),
    ],
)
def test_batch_axis_found_among_many_equal_sizes(fn, shape, strategy):
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    r = differentiate(fn(x), x, **strategy)
    assert (0, 0) in r.point_axes["x"]
    torch.testing.assert_close(r.jacobian("x"), reference_jacobian(fn, x.detach()))


def test_infinite_derivative_keeps_components_at_points_on_the_probe_path():
    x = torch.linspace(0, 1, 50, dtype=torch.float64, requires_grad=True)  # sqrt'(0) = inf
    fn = lambda t: torch.stack([t.sqrt(), t**2])  # noqa: E731
    r = differentiate(fn(x), x, exact_up_to=0)
    assert r.point_axes["x"] == ((1, 0),)
    assert r.derivatives["x"][0, 0] == float("inf")
    torch.testing.assert_close(r.derivatives["x"][1, 1:], 2 * x.detach()[1:])
    # autograd's own Jacobian has 0·∞ = NaN wherever a zero seed meets sqrt'(0) = ∞: between
    # different points (y_i does not depend on x_j) and in the other component's row at the
    # same point (d(x²)/dx at 0 is 0). Mathematics says 0 at every one of them.
    J, reference = r.jacobian("x"), reference_jacobian(fn, x.detach())
    off_point = torch.arange(50)[:, None] != torch.arange(50)[None, :]
    assert (reference.isnan() & off_point[None]).any() and reference[1, 0, 0].isnan()
    assert J[1, 0, 0] == 0  # 2·x at x = 0
    expected = torch.nan_to_num(reference, nan=0.0, posinf=float("inf"))
    torch.testing.assert_close(J, expected)


def test_a_pairing_is_still_plain_pairs():
    pairing = Pairing([(1, 0), (0, 2)])
    assert pairing == ((1, 0), (0, 2)) and hash(pairing) == hash(((1, 0), (0, 2)))
    assert [a for a, _ in pairing] == [1, 0] and dict(pairing) == {1: 0, 0: 2}
    assert pairing[0] == AxisPair(out=1, in_=0) and pairing[0].in_ == 0
    assert pairing.out_axes == (1, 0) and pairing.in_axes == (0, 2)
    assert pairing.sorted() == ((0, 2), (1, 0)) and isinstance(pairing.sorted(), Pairing)
    assert pairing.component_shape((3, 4, 5)) == (5,)
    assert pairing.point_count((4, 7, 3)) == 12
    assert repr(pairing) == "((1, 0), (0, 2))"
    x = torch.ones(3, requires_grad=True)
    assert isinstance(differentiate(x * 2, x).point_axes["x"], Pairing)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_each_tolerance_is_looser_where_more_rounding_comes_in(dtype):
    # the probe only absorbs autograd's rounding; a user's backward may sum in another order;
    # a formula in float64 meets autograd's rounding through every op of the cell
    row = tolerances(dtype)
    assert row is TOLERANCES[dtype]
    if dtype in (torch.float64, torch.float32):
        assert row.probe < row.backward < row.symbolic
    assert tolerances(torch.complex64) is TOLERANCES[torch.float32]  # no row: float32's
