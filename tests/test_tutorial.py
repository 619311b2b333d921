"""Every worked example of the seed tutorial, run verbatim through %%vjp.

Expected numbers and gradient arguments are the ones the tutorial prints.
"""
from __future__ import annotations

import pytest
import torch

from conftest import assert_tensor, run_vjp


def check(result, derivatives, gradients):
    assert_tensor(result.derivatives["x"], derivatives)
    grads = result.gradients["x"]
    assert len(grads) == len(gradients)
    for got, want in zip(grads, gradients):
        assert_tensor(got, want)


def test_scalar_univariate_single_point(ip, capsys):
    r = run_vjp(ip, """
import torch
x = torch.tensor(1., requires_grad=True)
y = x**2
y.backward()
print(f"Derivative at a single point:")
print(x.grad.data)
""")
    assert "tensor(2.)" in capsys.readouterr().out
    check(r, 2.0, [1.0])
    assert r.gradients["x"][0].shape == ()
    assert ip.user_ns["x"].grad.item() == 2.0  # the cell's own backward, untouched by the magic


def test_scalar_univariate_multiple_points_gradient_ones(ip, capsys):
    r = run_vjp(ip, """
x = torch.linspace(-2, 2, 5, requires_grad=True)
y = x**2
gradient = torch.ones_like(y)
y.backward(gradient)
print("Derivative at multiple points:")
print(x.grad.data)
""")
    assert "tensor([-4., -2.,  0.,  2.,  4.])" in capsys.readouterr().out
    check(r, [-4.0, -2.0, 0.0, 2.0, 4.0], [[1.0] * 5])
    assert r.point_axes["x"] == ((0, 0),)


def test_sum_trick(ip):
    r = run_vjp(ip, """
x = torch.linspace(-2, 2, 5, requires_grad=True)
y = (x**2).sum()
y.backward()
""")
    check(r, [-4.0, -2.0, 0.0, 2.0, 4.0], [1.0])


def test_scalar_multivariate_single_point(ip):
    r = run_vjp(ip, """
x = torch.tensor([-1., 2.], requires_grad=True)
w = torch.tensor([3., 5.])
y = (x*x*w).sum()
y.backward()
x.grad
""")
    check(r, [-6.0, 20.0], [1.0])
    assert list(r.derivatives) == ["x"]  # w does not require grad: not an input


def test_scalar_multivariate_multiple_points(ip):
    r = run_vjp(ip, """
x = torch.arange(6, dtype=float).view(3, 2).requires_grad_(True)
w = torch.tensor([-1, 1])
y = (x*x*w).sum(1)
v = torch.ones_like(y)
y.backward(v)
x.grad
""")
    check(r, [[-0.0, 2.0], [-4.0, 6.0], [-8.0, 10.0]], [[1.0, 1.0, 1.0]])
    assert r.derivatives["x"].dtype == torch.float64
    assert r.point_axes["x"] == ((0, 0),)


def test_vector_valued_univariate_single_point(ip, capsys):
    r = run_vjp(ip, """
import torch
x = torch.tensor(1., requires_grad=True)
y = torch.stack([-x**3, 5*x])

v1 = torch.tensor([1., 0.])
y.backward(v1, retain_graph=True)

print(f"f_1'({x.data.item()}) = {x.grad.data.item():>4}")

x.grad.zero_()

v2 = torch.tensor([0., 1.])
y.backward(v2)
print(f"f_2'({x.data.item()}) = {x.grad.data.item():>4}")
""")
    out = capsys.readouterr().out
    assert "f_1'(1.0) = -3.0" in out and "f_2'(1.0) =  5.0" in out
    check(r, [-3.0, 5.0], [[1.0, 0.0], [0.0, 1.0]])


def test_vector_valued_univariate_multiple_points(ip, capsys):
    r = run_vjp(ip, """
import torch
import itertools
x = torch.arange(3, dtype=float, requires_grad=True)
y = torch.stack([-x**3, 5*x])

ranges = [range(_) for _ in y.shape]

v1 = torch.tensor([1. if i == 0 else 0. for i, j in itertools.product(*ranges)]).view(*y.shape)
y.backward(v1, retain_graph=True)
print(f"Derivative of f_1(x)=-3x^2 at the points {tuple(x.data.view(-1).tolist())}:")
print(x.grad)

x.grad.zero_()

v2 = torch.tensor([1. if i == 1 else 0. for i, j in itertools.product(*ranges)]).view(*y.shape)
y.backward(v2)
print(f"\\nDerivative of f_2(x)=5x at the points {tuple(x.data.view(-1).tolist())}:")
print(x.grad)
""")
    out = capsys.readouterr().out
    assert "tensor([  0.,  -3., -12.], dtype=torch.float64)" in out
    assert "tensor([5., 5., 5.], dtype=torch.float64)" in out
    # DESIGN.md: shape (2, 3), row k holds f_k' at the 3 points
    check(r, [[0.0, -3.0, -12.0], [5.0, 5.0, 5.0]],
          [[[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]], [[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]])
    # the tutorial's own gradient vectors, built with itertools, are exactly ours
    assert_tensor(r.gradients["x"][0], ip.user_ns["v1"])
    assert_tensor(r.gradients["x"][1], ip.user_ns["v2"])


def test_vector_valued_multivariate_single_point(ip, capsys):
    r = run_vjp(ip, """
import torch
x = torch.arange(4, dtype=float, requires_grad=True)
y = torch.stack([x.sum(), (x**2).sum()])

print(f"x                 : {tuple(x.data.tolist())}")
print(f"y = (y_1, y_2)    : {tuple(y.data.tolist())}")

v1 = torch.tensor([1., 0.])
y.backward(v1, retain_graph=True)
print(f"gradient of y_1   : {tuple(x.grad.data.tolist())}")

x.grad.zero_()

v2 = torch.tensor([0., 1.])
y.backward(v2)
print(f"gradient of y_2   : {tuple(x.grad.data.tolist())}")
""")
    out = capsys.readouterr().out
    assert "gradient of y_1   : (1.0, 1.0, 1.0, 1.0)" in out
    assert "gradient of y_2   : (0.0, 2.0, 4.0, 6.0)" in out
    check(r, [[1.0, 1.0, 1.0, 1.0], [0.0, 2.0, 4.0, 6.0]], [[1.0, 0.0], [0.0, 1.0]])
    assert r.point_axes["x"] == ()


def test_vector_valued_multivariate_multiple_points(ip, capsys):
    r = run_vjp(ip, """
import torch
import itertools
x = torch.arange(4*3, dtype=float).view(-1,4).requires_grad_(True)
y = torch.stack([x.sum(1), (x**2).sum(1)])
print("x:")
print(x.data)
print("y:")
print(y.data)
ranges = [range(_) for _ in y.shape]
v1 = torch.tensor([1. if i == 0 else 0. for i, j in itertools.product(*ranges)]).view(*y.shape)
y.backward(v1, retain_graph=True)
print("Gradients of the f1 at multiple points:")
print(x.grad)
x.grad.zero_()
v2 = torch.tensor([1. if i == 1 else 0. for i, j in itertools.product(*ranges)]).view(*y.shape)
y.backward(v2)
print("Gradients of the f2 at multiple points:")
print(x.grad)
""")
    out = capsys.readouterr().out
    assert "[ 14., 126., 366.]" in out
    ones = [[1.0] * 4] * 3
    twice = [[0.0, 2.0, 4.0, 6.0], [8.0, 10.0, 12.0, 14.0], [16.0, 18.0, 20.0, 22.0]]
    check(r, [ones, twice], [[[1.0] * 3, [0.0] * 3], [[0.0] * 3, [1.0] * 3]])
    assert_tensor(r.gradients["x"][0], ip.user_ns["v1"])
    assert_tensor(r.gradients["x"][1], ip.user_ns["v2"])
    assert r.point_axes["x"] == ((1, 0),)


@pytest.mark.parametrize(
    "make_x, gradient, derivative",
    [
        ("torch.tensor(1., requires_grad=True)", 1.0, 2.0),
        ("torch.tensor([1.], requires_grad=True)", [1.0], [2.0]),
        ("torch.tensor([[1.]], requires_grad=True)", [[1.0]], [[2.0]]),
        ("torch.linspace(-1, 1, 5, requires_grad=True)", [1.0] * 5, [-2.0, -1.0, 0.0, 1.0, 2.0]),
        ("torch.linspace(-2, 2, 5).view(-1,1).requires_grad_(True)", [[1.0]] * 5,
         [[-4.0], [-2.0], [0.0], [2.0], [4.0]]),
    ],
)
def test_examples_revisited_gradient_shapes(ip, make_x, gradient, derivative):
    r = run_vjp(ip, f"""
import torch
x = {make_x}
y = x**2
v = torch.ones_like(y)
y.backward(v)
print(f"Shape of x         : {{tuple(x.shape)}}")
""")
    check(r, derivative, [gradient])
    # the tutorial's v = torch.ones_like(y) is the gradient argument, same shape as y
    assert_tensor(r.gradients["x"][0], ip.user_ns["v"])
    assert r.derivatives["x"].shape == ip.user_ns["x"].shape


def test_matrix_valued_univariate(ip):
    r = run_vjp(ip, """
import torch
import itertools
x = torch.tensor(1., requires_grad=True)
y = torch.stack([x**i for i in range(6)]).view(3,2)
ranges = [range(_) for _ in y.shape]
derivatives = torch.zeros_like(y)
for i, j in itertools.product(*ranges):
    v = torch.zeros_like(y)
    v[i,j] = 1.
    if x.grad is not None: x.grad.zero_()
    y.backward(v, retain_graph=True)
    derivatives[i,j] = x.grad.item()
""")
    check(r, [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]],
          [[[1.0 if (i, j) == (a, b) else 0.0 for b in range(2)] for a in range(3)]
           for i in range(3) for j in range(2)])
    assert_tensor(r.derivatives["x"], ip.user_ns["derivatives"])


def test_scalar_multivariate_gradient_argument_is_one(ip):
    r = run_vjp(ip, """
x = torch.tensor([-1., 2.], requires_grad=True)
w = torch.tensor([3., 5.])
y = (x*x*w).sum()
v = torch.ones_like(y)
y.backward()
""")
    check(r, [-6.0, 20.0], [1.0])


def test_matrix_input_scalar_output(ip):
    r = run_vjp(ip, """
x = torch.arange(6, dtype=float).view(3,2).requires_grad_(True)
y = (x**2).sum()
v = torch.ones_like(y)
y.backward(v)
""")
    check(r, [[0.0, 2.0], [4.0, 6.0], [8.0, 10.0]], [1.0])
    assert_tensor(ip.user_ns["x"].grad, [[0.0, 2.0], [4.0, 6.0], [8.0, 10.0]])
