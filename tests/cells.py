"""The tutorial's worked examples, named once for every test file and the benchmarks.

Each :class:`Cell` is one code cell of the tutorial "Computing gradients and derivatives in
PyTorch" (whose worked examples ``demo_notebooks/01_backward_gradient.ipynb`` runs), its
``In [n]`` label kept, verbatim but for the blog's ``# collapse-…`` directives and trailing
spaces, with the answers the tutorial gives for it: what it prints, the derivatives of ``y``
with respect to ``x`` and the ``gradient`` arguments (the tutorial's 0/1 vectors). Where the
tutorial prints no number (its "Examples revisited" print shapes only) the derivative is the
mathematics' own (2x for x**2).

Use a cell by name (``cells.MULTIPLE_POINTS.source``), parametrise over :data:`TUTORIAL`
(``ids=cells.ids(TUTORIAL)``), or take ``cell.short`` — only its ``x =``/``w =``/``y =``
lines — where a test needs the computation without the tutorial's prints and backward calls.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Cell:
    """One tutorial cell and the tutorial's answers for it (all about ``y`` and ``x``)."""

    name: str  # a test id
    label: str  # the tutorial's own "In [n]"
    source: str
    derivatives: object  # r.derivatives["x"], as nested lists
    gradients: tuple  # r.gradients["x"], one per component, as nested lists
    point_axes: tuple  # r.point_axes["x"]: the (out_axis, in_axis) pairs that are points
    stdout: str = ""  # what the tutorial shows the cell printing ("" when it prints nothing)
    value: str = field(default="")  # the tutorial's Out for a final expression (x.grad)

    @property
    def short(self) -> str:
        """The computation alone: the cell's ``x =``, ``w =`` and ``y =`` lines."""
        keep = ("x =", "w =", "y =")
        return "\n".join(line for line in self.source.splitlines() if line.startswith(keep))

    def __str__(self) -> str:
        return self.name


def ids(cells) -> list[str]:
    """Test ids for ``pytest.mark.parametrize`` over ``cells``."""
    return [cell.name for cell in cells]


_POINTS5 = [-4.0, -2.0, 0.0, 2.0, 4.0]

# -- "A brief overview" ---------------------------------------------------------------------------
OVERVIEW_SINGLE_POINT = Cell("overview_single_point", "In [10]", """\
import torch
x = torch.tensor(1., requires_grad=True)
y = x**2
y.backward()
print(f"Derivative at a single point:")
print(x.grad.data)
""", 2.0, (1.0,), (), stdout="Derivative at a single point:\ntensor(2.)\n")

OVERVIEW_MULTIPLE_POINTS = Cell("overview_multiple_points", "In [13]", """\
import torch
x = torch.linspace(-2, 2, 5, requires_grad=True)
y = x**2
gradient = torch.ones_like(y)
y.backward(gradient)
print("Derivative at multiple points:")
print(x.grad.data)
""", _POINTS5, ([1.0] * 5,), ((0, 0),),
    stdout="Derivative at multiple points:\ntensor([-4., -2.,  0.,  2.,  4.])\n")

SUM_TRICK = Cell("sum_trick", "In [44]", """\
import torch
x = torch.linspace(-2, 2, 5, requires_grad=True)
y = (x**2).sum()

y.backward()
print("Derivative at multiple points:")
print(x.grad.data)
""", _POINTS5, (1.0,), (),
    stdout="Derivative at multiple points:\ntensor([-4., -2.,  0.,  2.,  4.])\n")

# -- "Usage examples of the backward function" ----------------------------------------------------
SCALAR_UNIVARIATE_SINGLE_POINT = Cell("scalar_univariate_single_point", "In [1]", """\
import torch
x = torch.tensor(1., requires_grad=True)
y = x**2
y.backward()
x.grad
""", 2.0, (1.0,), (), value="tensor(2.)")

SCALAR_UNIVARIATE_MULTIPLE_POINTS = Cell("scalar_univariate_multiple_points", "In [2]", """\
import torch
x = torch.linspace(-2, 2, 5, requires_grad=True)
y = x**2
v = torch.ones_like(y)
y.backward(v)
x.grad
""", _POINTS5, ([1.0] * 5,), ((0, 0),), value="tensor([-4., -2.,  0.,  2.,  4.])")

SCALAR_MULTIVARIATE_SINGLE_POINT = Cell("scalar_multivariate_single_point", "In [3]", """\
import torch
x = torch.tensor([-1., 2.], requires_grad=True)
w = torch.tensor([3., 5.])
y = (x*x*w).sum()
y.backward()
x.grad
""", [-6.0, 20.0], (1.0,), (), value="tensor([-6., 20.])")

SCALAR_MULTIVARIATE_MULTIPLE_POINTS = Cell("scalar_multivariate_multiple_points", "In [4]", """\
import torch
x = torch.arange(6, dtype=float).view(3, 2).requires_grad_(True)
w = torch.tensor([-1, 1])
y = (x*x*w).sum(1)
v = torch.ones_like(y)
y.backward(v)
x.grad
""", [[-0.0, 2.0], [-4.0, 6.0], [-8.0, 10.0]], ([1.0, 1.0, 1.0],), ((0, 0),),
    value="tensor([[-0.,  2.],\n        [-4.,  6.],\n        [-8., 10.]], dtype=torch.float64)")

VECTOR_UNIVARIATE_SINGLE_POINT = Cell("vector_univariate_single_point", "In [5]", """\
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
""", [-3.0, 5.0], ([1.0, 0.0], [0.0, 1.0]), (), stdout="f_1'(1.0) = -3.0\nf_2'(1.0) =  5.0\n")

VECTOR_UNIVARIATE_MULTIPLE_POINTS = Cell("vector_univariate_multiple_points", "In [6]", """\
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
""", [[0.0, -3.0, -12.0], [5.0, 5.0, 5.0]],
    ([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]], [[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]), ((1, 0),),
    stdout="Derivative of f_1(x)=-3x^2 at the points (0.0, 1.0, 2.0):\n"
           "tensor([  0.,  -3., -12.], dtype=torch.float64)\n\n"
           "Derivative of f_2(x)=5x at the points (0.0, 1.0, 2.0):\n"
           "tensor([5., 5., 5.], dtype=torch.float64)\n")

VECTOR_MULTIVARIATE_SINGLE_POINT = Cell("vector_multivariate_single_point", "In [17]", """\
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
""", [[1.0, 1.0, 1.0, 1.0], [0.0, 2.0, 4.0, 6.0]], ([1.0, 0.0], [0.0, 1.0]), (),
    stdout="x                 : (0.0, 1.0, 2.0, 3.0)\n"
           "y = (y_1, y_2)    : (6.0, 14.0)\n"
           "gradient of y_1   : (1.0, 1.0, 1.0, 1.0)\n"
           "gradient of y_2   : (0.0, 2.0, 4.0, 6.0)\n")

VECTOR_MULTIVARIATE_MULTIPLE_POINTS = Cell("vector_multivariate_multiple_points", "In [18]", """\
import torch
import itertools
x = torch.arange(4*3, dtype=float).view(-1,4).requires_grad_(True)
y = torch.stack([x.sum(1), (x**2).sum(1)])
print("x:")
print(x.data)
print("y:")
print(y.data)

print()

ranges = [range(_) for _ in y.shape]

v1 = torch.tensor([1. if i == 0 else 0. for i, j in itertools.product(*ranges)]).view(*y.shape)
y.backward(v1, retain_graph=True)
print("Gradients of the f1 at multiple points:")
print(x.grad)

x.grad.zero_()

print()
v2 = torch.tensor([1. if i == 1 else 0. for i, j in itertools.product(*ranges)]).view(*y.shape)
y.backward(v2)
print("Gradients of the f2 at multiple points:")
print(x.grad)
""", [[[1.0] * 4] * 3,
      [[0.0, 2.0, 4.0, 6.0], [8.0, 10.0, 12.0, 14.0], [16.0, 18.0, 20.0, 22.0]]],
    ([[1.0] * 3, [0.0] * 3], [[0.0] * 3, [1.0] * 3]), ((1, 0),),
    stdout="x:\n"
           "tensor([[ 0.,  1.,  2.,  3.],\n"
           "        [ 4.,  5.,  6.,  7.],\n"
           "        [ 8.,  9., 10., 11.]], dtype=torch.float64)\n"
           "y:\n"
           "tensor([[  6.,  22.,  38.],\n"
           "        [ 14., 126., 366.]], dtype=torch.float64)\n"
           "\n"
           "Gradients of the f1 at multiple points:\n"
           "tensor([[1., 1., 1., 1.],\n"
           "        [1., 1., 1., 1.],\n"
           "        [1., 1., 1., 1.]], dtype=torch.float64)\n"
           "\n"
           "Gradients of the f2 at multiple points:\n"
           "tensor([[ 0.,  2.,  4.,  6.],\n"
           "        [ 8., 10., 12., 14.],\n"
           "        [16., 18., 20., 22.]], dtype=torch.float64)\n")


# -- "Examples revisited": the shape of the gradient argument follows y's ------------------------
def _revisited(name: str, label: str, make_x: str, backward: str, derivatives, gradient,
               point_axes, stdout: str) -> Cell:
    source = (f"import torch\nx = {make_x}\ny = x**2\nv = torch.ones_like(y)\n{backward}\n"
              'print(f"Shape of x         : {tuple(x.shape)}")\n'
              'print(f"Shape of y         : {tuple(y.shape)}")\n'
              'print(f"gradient argument  : {v}")\n')
    return Cell(name, label, source, derivatives, (gradient,), point_axes, stdout=stdout)


REVISITED_SCALAR = _revisited(
    "revisited_scalar", "In [9]", "torch.tensor(1., requires_grad=True)", "y.backward()",
    2.0, 1.0, (),
    "Shape of x         : ()\nShape of y         : ()\ngradient argument  : 1.0\n")
REVISITED_VECTOR_OF_ONE = _revisited(
    "revisited_vector_of_one", "In [10]", "torch.tensor([1.], requires_grad=True)",
    "y.backward()", [2.0], [1.0], ((0, 0),),
    "Shape of x         : (1,)\nShape of y         : (1,)\ngradient argument  : tensor([1.])\n")
REVISITED_MATRIX_OF_ONE = _revisited(
    "revisited_matrix_of_one", "In [11]", "torch.tensor([[1.]], requires_grad=True)",
    "y.backward()", [[2.0]], [[1.0]], ((0, 0), (1, 1)),
    "Shape of x         : (1, 1)\nShape of y         : (1, 1)\n"
    "gradient argument  : tensor([[1.]])\n")
REVISITED_POINTS = _revisited(
    "revisited_points", "In [12]", "torch.linspace(-1, 1, 5, requires_grad=True)",
    "y.backward(v)", [-2.0, -1.0, 0.0, 1.0, 2.0], [1.0] * 5, ((0, 0),),
    "Shape of x         : (5,)\nShape of y         : (5,)\n"
    "gradient argument  : tensor([1., 1., 1., 1., 1.])\n")
REVISITED_COLUMN = Cell("revisited_column", "In [13]", """\
import torch
x = torch.linspace(-2, 2, 5).view(-1,1).requires_grad_(True)
y = x**2
v = torch.ones_like(y)
y.backward(v)
print(f"Shape of x         : {tuple(x.shape)}")
print(f"Shape of y         : {tuple(y.shape)}")
print(f"gradient argument  : ")
print(v)
""", [[-4.0], [-2.0], [0.0], [2.0], [4.0]], ([[1.0]] * 5,), ((0, 0), (1, 1)),
    stdout="Shape of x         : (5, 1)\nShape of y         : (5, 1)\ngradient argument  : \n"
           "tensor([[1.],\n        [1.],\n        [1.],\n        [1.],\n        [1.]])\n")

MATRIX_VALUED_UNIVARIATE = Cell("matrix_valued_univariate", "In [19]", """\
import torch
import itertools
x = torch.tensor(1., requires_grad=True)
y = torch.stack([x**i for i in range(6)]).view(3,2)
ranges = [range(_) for _ in y.shape]

print("x:")
print(x.data)
print("\\ny:")
print(y.data)

derivatives = torch.zeros_like(y)

for i, j in itertools.product(*ranges):
    v = torch.zeros_like(y)
    v[i,j] = 1.
    if x.grad is not None: x.grad.zero_()

    y.backward(v, retain_graph=True)
    derivatives[i,j] = x.grad.item()
print("\\nDerivatives:")
print(derivatives)
""", [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]],
    tuple([[1.0 if (i, j) == (a, b) else 0.0 for b in range(2)] for a in range(3)]
          for i in range(3) for j in range(2)), (),
    stdout="x:\ntensor(1.)\n\ny:\ntensor([[1., 1.],\n        [1., 1.],\n        [1., 1.]])\n"
           "\nDerivatives:\ntensor([[0., 1.],\n        [2., 3.],\n        [4., 5.]])\n")

SCALAR_MULTIVARIATE_GRADIENT_ONE = Cell("scalar_multivariate_gradient_one", "In [15]", """\
import torch
x = torch.tensor([-1., 2.], requires_grad=True)
w = torch.tensor([3., 5.])
y = (x*x*w).sum()
v = torch.ones_like(y)
y.backward()
print(f"Shape of x         : {tuple(x.shape)}")
print(f"Shape of y         : {tuple(y.shape)}")
print(f"gradient argument  : {v}")
""", [-6.0, 20.0], (1.0,), (),
    stdout="Shape of x         : (2,)\nShape of y         : ()\ngradient argument  : 1.0\n")

MATRIX_INPUT_SCALAR_OUTPUT = Cell("matrix_input_scalar_output", "In [16]", """\
x = torch.arange(6, dtype=float).view(3,2).requires_grad_(True)
y = (x**2).sum()
v = torch.ones_like(y)
y.backward(v)

print(f"Shape of x: {tuple(x.shape)}")
print(f"Shape of y: {tuple(y.shape)}")
print(f"gradient argument: {v}")
print("x:")
print(x.data)
print("x.grad:")
print(x.grad.data)
""", [[0.0, 2.0], [4.0, 6.0], [8.0, 10.0]], (1.0,), (),
    stdout="Shape of x: (3, 2)\nShape of y: ()\ngradient argument: 1.0\nx:\n"
           "tensor([[0., 1.],\n        [2., 3.],\n        [4., 5.]], dtype=torch.float64)\n"
           "x.grad:\n"
           "tensor([[ 0.,  2.],\n        [ 4.,  6.],\n        [ 8., 10.]], dtype=torch.float64)\n")

# -- collections ------------------------------------------------------------------------------
OVERVIEW = (OVERVIEW_SINGLE_POINT, OVERVIEW_MULTIPLE_POINTS, SUM_TRICK)
USAGE = (SCALAR_UNIVARIATE_SINGLE_POINT, SCALAR_UNIVARIATE_MULTIPLE_POINTS,
         SCALAR_MULTIVARIATE_SINGLE_POINT, SCALAR_MULTIVARIATE_MULTIPLE_POINTS,
         VECTOR_UNIVARIATE_SINGLE_POINT, VECTOR_UNIVARIATE_MULTIPLE_POINTS,
         VECTOR_MULTIVARIATE_SINGLE_POINT, VECTOR_MULTIVARIATE_MULTIPLE_POINTS)
REVISITED = (REVISITED_SCALAR, REVISITED_VECTOR_OF_ONE, REVISITED_MATRIX_OF_ONE,
             REVISITED_POINTS, REVISITED_COLUMN, MATRIX_VALUED_UNIVARIATE,
             SCALAR_MULTIVARIATE_GRADIENT_ONE, MATRIX_INPUT_SCALAR_OUTPUT)
TUTORIAL = OVERVIEW + USAGE + REVISITED  # every cell of the tutorial that differentiates
BY_NAME = {cell.name: cell for cell in TUTORIAL}

# One cell of each kind of structure, for tests that need a representative few.
MULTIPLE_POINTS = SCALAR_UNIVARIATE_MULTIPLE_POINTS  # f at 5 points: v = ones
STACK_AT_POINTS = VECTOR_UNIVARIATE_MULTIPLE_POINTS  # two component functions at 3 points
