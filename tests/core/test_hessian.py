"""Second derivatives: ``core.hessian.second_derivatives``, their display (the one ``View``,
body of order 2), and ``%hessian`` and ``vjp_magic.hessian`` through the one pipeline.

Expected numbers come from ``torch.autograd.functional.hessian`` and ``torch.func.hessian``
(``vmap(hessian(f))`` per point) or from the mathematics, never from the code under test.
"""
from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable
from torch.func import hessian as func_hessian
from torch.func import vmap

from vjp_magic.core.errors import VJPUsageError
from vjp_magic.core.hessian import second_derivatives
from vjp_magic.render import latex
from vjp_magic.render.view import View

DTYPES = [torch.float32, torch.float64]
TOL = {torch.float32: dict(rtol=1e-4, atol=1e-4), torch.float64: dict(rtol=1e-9, atol=1e-9)}


def _leaf(values, dtype):
    return torch.as_tensor(values, dtype=dtype).clone().requires_grad_(True)


def _close(actual, expected, dtype):
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    torch.testing.assert_close(actual, expected.to(actual.dtype), **TOL[dtype])


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
    x = _leaf(torch.linspace(0.3, 2.0, 7), dtype)
    h = second_derivatives(f(x), x)
    d = h.derivatives["x"]
    assert d.shape == x.shape
    per_point = vmap(func_hessian(f))(x.detach())  # one 0-d Hessian per point
    _close(d, per_point, dtype)
    _close(d, f2(x.detach()), dtype)
    assert h.point_axes["x"] == ((0, 0),)


@pytest.mark.parametrize("dtype", DTYPES)
def test_elementwise_full_hessian_puts_the_point_deltas_back(dtype):
    x = _leaf([0.5, -1.0, 2.0], dtype)
    h = second_derivatives(torch.sin(x), x)
    full = h.hessian("x")
    assert full.shape == (3, 3, 3)
    _close(full, _full_reference(torch.sin, x), dtype)
    assert full[0, 1, 1] == 0 and full[2, 0, 0] == 0  # nothing across points


def test_elementwise_on_a_matrix_input():
    x = _leaf(torch.randn(3, 4), torch.float64)
    h = second_derivatives(torch.sin(x) * 2, x)
    _close(h.derivatives["x"], -2 * torch.sin(x.detach()), torch.float64)
    _close(h.hessian(), _full_reference(lambda t: torch.sin(t) * 2, x), torch.float64)


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
    x = _leaf(values, dtype)
    h = second_derivatives(f(x), x)
    n = x.numel()
    expected = torch.autograd.functional.hessian(f, x.detach())
    assert h.derivatives["x"].shape == (n, n)
    _close(h.derivatives["x"], expected, dtype)
    _close(h.hessian("x"), expected, dtype)
    _close(h.hessian("x"), func_hessian(f)(x.detach()), dtype)
    assert h.inputs["x"].symmetric


def test_quadratic_form_hessian_is_a_plus_a_transpose():
    x = _leaf([0.5, -1.0, 2.0], torch.float64)
    a = A.double()
    h = second_derivatives(x @ a @ x, x, output_name="q")
    _close(h.derivatives["x"], a + a.T, torch.float64)


def test_rosenbrock_at_its_minimum():
    x = _leaf([1.0, 1.0], torch.float64)
    h = second_derivatives(_rosenbrock(x), x)
    _close(h.derivatives["x"], torch.tensor([[802.0, -400.0], [-400.0, 200.0]]), torch.float64)


def test_scalar_of_a_matrix_input():
    x = _leaf(torch.randn(2, 3), torch.float64)

    def f(t):
        return (t**3).sum() + t[0, 0] * t[1, 2]

    h = second_derivatives(f(x), x)
    assert h.derivatives["x"].shape == (2, 3, 2, 3)
    _close(h.derivatives["x"], torch.autograd.functional.hessian(f, x.detach()), torch.float64)


# -- row-wise layers: one Hessian per row (and component) -----------------------------------
W = torch.tensor([[0.5, -1.0, 0.3], [1.5, 0.2, -0.7], [-0.4, 0.8, 1.1], [0.9, -0.3, 0.6]])


@pytest.mark.parametrize("dtype", DTYPES)
def test_row_wise_layer_summed_per_row(dtype):
    x = _leaf(torch.randn(6, 4, generator=torch.Generator().manual_seed(1)), dtype)
    w = W.to(dtype)

    def row(r):
        return torch.tanh(r @ w).sum()

    h = second_derivatives(torch.tanh(x @ w).sum(1), x)
    assert h.point_axes["x"] == ((0, 0),)
    assert h.derivatives["x"].shape == (6, 4, 4)
    _close(h.derivatives["x"], vmap(func_hessian(row))(x.detach()), dtype)
    _close(h.hessian(), _full_reference(lambda t: torch.tanh(t @ w).sum(1), x), dtype)
    assert h.inputs["x"].symmetric


def test_row_wise_layer_with_components():
    x = _leaf(torch.randn(5, 4, generator=torch.Generator().manual_seed(2)), torch.float64)
    w = W.double()
    h = second_derivatives(torch.tanh(x @ w), x)
    d = h.derivatives["x"]
    assert d.shape == (3, 5, 4, 4)  # component, row, then one row's 4 × 4 Hessian
    per_row = vmap(func_hessian(lambda r: torch.tanh(r @ w)))(x.detach())  # (5, 3, 4, 4)
    _close(d, per_row.permute(1, 0, 2, 3), torch.float64)
    _close(h.hessian(), _full_reference(lambda t: torch.tanh(t @ w), x), torch.float64)


def test_components_at_points_seed_example():
    x = _leaf([-1.0, 0.0, 2.0], torch.float64)
    h = second_derivatives(torch.stack([-x**3, 5 * x]), x)
    d = h.derivatives["x"]
    assert d.shape == (2, 3)
    _close(d, torch.stack([-6 * x.detach(), torch.zeros(3, dtype=torch.float64)]),
           torch.float64)


def test_vector_output_without_points():
    x = _leaf([0.3, -0.2, 0.9], torch.float64)

    def f(t):
        return torch.softmax(t, 0)

    h = second_derivatives(f(x), x)
    assert h.derivatives["x"].shape == (3, 3, 3)
    _close(h.derivatives["x"], _full_reference(f, x), torch.float64)
    _close(h.hessian(), _full_reference(f, x), torch.float64)


# -- several inputs, linear outputs, scale ----------------------------------------------------
def test_several_inputs_one_hessian_each():
    x = _leaf([0.5, 1.5], torch.float64)
    w = _leaf([2.0, -1.0], torch.float64)
    h = second_derivatives((x**2 * w**3).sum(), [x, w], ["x", "w"], output_name="s")
    xd, wd = x.detach(), w.detach()
    _close(h.derivatives["x"], torch.diag(2 * wd**3), torch.float64)
    _close(h.derivatives["w"], torch.diag(6 * xd**2 * wd), torch.float64)
    with pytest.raises(ValueError, match="Name the input"):
        h.hessian()


def test_linear_output_has_zero_second_derivatives():
    x = _leaf([1.0, 2.0, 3.0], torch.float32)
    h = second_derivatives(3 * x + 1, x)
    assert h.inputs["x"].constant
    assert torch.equal(h.derivatives["x"], torch.zeros(3))
    assert torch.equal(h.hessian(), torch.zeros(3, 3, 3))


def test_large_elementwise():
    x = _leaf(torch.linspace(-3, 3, 100_000), torch.float32)
    h = second_derivatives(torch.sin(x) * x, x)
    xd = x.detach()
    _close(h.derivatives["x"], 2 * torch.cos(xd) - xd * torch.sin(xd), torch.float32)


def test_large_row_wise_layer():
    gen = torch.Generator().manual_seed(4)
    x = _leaf(torch.randn(20_000, 8, generator=gen), torch.float32)
    w = torch.randn(8, 3, generator=gen)

    def row(r):
        return torch.tanh(r @ w).sum()

    h = second_derivatives(torch.tanh(x @ w).sum(1), x)
    assert h.derivatives["x"].shape == (20_000, 8, 8)
    _close(h.derivatives["x"], vmap(func_hessian(row))(x.detach()), torch.float32)


def test_input_the_output_does_not_use():
    x = _leaf([1.0, 2.0], torch.float64)
    w = _leaf([3.0, 4.0, 5.0], torch.float64)
    h = second_derivatives(torch.sin(x), {"x": x, "w": w})
    assert h.inputs["w"].unused
    assert torch.equal(h.hessian("w"), torch.zeros(2, 3, 3, dtype=torch.float64))
    _close(h.derivatives["x"], -torch.sin(x.detach()), torch.float64)


def test_second_derivatives_over_the_budget_are_refused():
    x = _leaf(torch.randn(200), torch.float32)
    with pytest.raises(VJPUsageError, match="second derivatives of y .* memory budget"):
        second_derivatives(torch.logsumexp(x, 0), x, memory_budget=20_000)


def test_one_variable_vector_output():
    t = _leaf(0.5, torch.float64)
    h = second_derivatives(torch.stack([t, t**2, t**3]), t, "t")
    _close(h.derivatives["t"], torch.tensor([0.0, 2.0, 3.0]), torch.float64)
    _close(h.hessian(), _full_reference(lambda s: torch.stack([s, s**2, s**3]), t),
           torch.float64)
    assert "d²y_k/dt²" in _bundle(h)["text/plain"]


def test_full_hessian_over_the_budget_is_refused():
    x = _leaf(torch.linspace(-3, 3, 100_000), torch.float32)
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
    x = _leaf(torch.linspace(-2, 2, 2000), dtype)
    h = second_derivatives(_Cube.apply(x), x)
    assert h.inputs["x"].evidence == "observed"  # nothing proved through a custom function
    _close(h.derivatives["x"], 6 * x.detach(), dtype)
    assert any("_CubeBackward" in note and "gradgradcheck" in note for note in h.notes)


def test_asymmetric_hessian_is_noted():
    x = _leaf([1.0, 2.0], torch.float64)
    h = second_derivatives(_Skewed.apply(x), x)
    assert not h.inputs["x"].symmetric
    _close(h.derivatives["x"], torch.tensor([[0.0, 1.0], [2.0, 0.0]]), torch.float64)
    assert any("not symmetric" in note for note in h.notes)


def test_smooth_hessians_are_symmetric_within_tolerance():
    x = _leaf(torch.randn(4, 3, generator=torch.Generator().manual_seed(3)), torch.float32)
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


def _one_sentence(text: str) -> bool:
    return len(re.findall(r"[.!?](\s|$)", text.strip())) == 1


@pytest.mark.parametrize("build", [lambda x: _OnceSquare.apply(x).sin(),
                                   lambda x: _OnceSquare.apply(x).sum()],
                         ids=["then sin", "then sum"])
def test_once_differentiable_is_one_sentence(build):
    x = _leaf([0.5, 1.0, 2.0], torch.float64)
    with pytest.raises(VJPUsageError) as caught:
        second_derivatives(build(x), x)
    message = str(caught.value)
    assert "cannot be differentiated twice" in message and "_OnceSquare" in message
    assert "no double backward" in message and _one_sentence(message)


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
    x = _leaf(torch.randn(4), torch.float64)
    if _twice_differentiable(build, x):
        pytest.skip(f"this PyTorch ({torch.__version__}) differentiates {op} twice")
    with pytest.raises(VJPUsageError) as caught:
        second_derivatives(build(x), x)
    message = str(caught.value)
    assert f"cannot be differentiated twice: {op} has no double backward" in message
    assert _one_sentence(message)


# -- nothing of the user's is touched ---------------------------------------------------------
def test_grad_is_never_changed():
    x = _leaf([0.5, 1.0], torch.float64)
    x.grad = torch.tensor([7.0, 8.0], dtype=torch.float64)
    y = (x**3).sum()
    second_derivatives(y, x)
    assert torch.equal(x.grad, torch.tensor([7.0, 8.0], dtype=torch.float64))
    y.backward()  # the graph is still usable
    assert torch.allclose(x.grad, torch.tensor([7.75, 11.0], dtype=torch.float64))


def test_no_grad_when_there_was_none():
    x = _leaf([0.5, 1.0], torch.float32)
    second_derivatives(torch.sin(x), x)
    assert x.grad is None


def test_output_without_history_is_a_usage_error():
    x = _leaf([0.5, 1.0], torch.float32)
    with pytest.raises(VJPUsageError, match="no autograd history"):
        second_derivatives(torch.sin(x).detach(), x)


# -- the display ------------------------------------------------------------------------------
def _bundle(h):
    h.view = View()
    return h._repr_mimebundle_()


def _check_tex(bundle):
    for tex in re.findall(r"\$\$(.*?)\$\$", bundle["text/markdown"], re.S):
        assert not latex.tex_problems(tex), latex.tex_problems(tex)


def test_display_of_an_elementwise_map():
    x = _leaf(torch.linspace(-2, 2, 5), torch.float32)
    bundle = _bundle(second_derivatives(torch.sin(x), x))
    assert set(bundle) == {"text/markdown", "text/latex", "text/plain"}
    assert "at each of the 5 points of x" in bundle["text/plain"]
    assert "∂²y_i/∂x_i²" in bundle["text/plain"]
    assert r"\partial^2 y_{i}" in bundle["text/markdown"]
    assert "-0.9093" in bundle["text/plain"] and "0.9093" in bundle["text/plain"]
    _check_tex(bundle)


def test_display_of_a_scalar_of_a_vector():
    x = _leaf([0.5, -1.0, 2.0], torch.float64)
    h = second_derivatives((x**2).sum() + x[0] * x[1], x, output_name="s")
    bundle = _bundle(h)
    plain = bundle["text/plain"]
    assert "The 3 × 3 Hessian of s with respect to x, symmetric" in plain
    assert "∂²s/∂x_i∂x_j" in plain
    assert repr(h) == plain
    _check_tex(bundle)


def test_display_of_a_large_map_is_summarised():
    x = _leaf(torch.linspace(-3, 3, 100_000), torch.float32)
    bundle = _bundle(second_derivatives(torch.exp(x), x))
    assert len(bundle["text/latex"]) < 20_000
    assert "100,000 points" in bundle["text/plain"]


def test_display_of_a_row_wise_layer_shows_a_few_hessians():
    x = _leaf(torch.randn(50, 4), torch.float32)
    bundle = _bundle(second_derivatives(torch.tanh(x @ W).sum(1), x))
    plain = bundle["text/plain"]
    assert "4 × 4 Hessian" in plain and "50 points" in plain
    assert "∇²f(x^(0))" in plain and "∇²f(x^(49))" in plain and "∇²f(x^(1))" not in plain
    _check_tex(bundle)


def test_display_of_several_inputs_says_no_cross_terms():
    x = _leaf([0.5, 1.5], torch.float32)
    w = _leaf([2.0, -1.0], torch.float32)
    h = second_derivatives((x**2 * w**3).sum(), [x, w], ["x", "w"], output_name="s")
    plain = " ".join(_bundle(h)["text/plain"].split())
    assert "With respect to x: the 2 × 2 Hessian of s" in plain
    assert "mixed second derivatives of s with respect to two different inputs" in plain


def test_display_without_a_view_is_short():
    x = _leaf([1.0, 2.0], torch.float32)
    h = second_derivatives(torch.sin(x), x)
    assert repr(h) == "<HessianResult: y (2,) of x (2,)>"


def test_the_document_of_second_derivatives_is_built_once(monkeypatch):
    """One View for both orders: a notebook asks for the bundle and the repr again and again,
    and the second derivatives' document is made once (HessianView made it every time)."""
    from vjp_magic.render import view as view_module

    built = []
    real = view_module.hessian_sections
    monkeypatch.setattr(view_module, "hessian_sections",
                        lambda h, options: built.append(h) or real(h, options))
    x = _leaf([0.5, 1.0], torch.float32)
    h = second_derivatives(torch.sin(x), x)
    h.view = View()
    first = h._repr_mimebundle_()
    assert h._repr_mimebundle_() == first and repr(h) == first["text/plain"]
    assert len(built) == 1


def test_first_and_second_derivatives_are_one_family():
    from vjp_magic.core.result import DerivativeResult, VJPResult

    x = _leaf([0.5, 1.0], torch.float64)
    h = second_derivatives(torch.sin(x), x)
    assert isinstance(h, DerivativeResult) and h.order == 2 and VJPResult.order == 1
    assert h.input_name() == "x" and h.crosscheck == {} and h.symbolic == {}


# -- %hessian and vjp_magic.hessian ----------------------------------------------------------------
class TestWired:
    def test_hessian_function(self):
        import vjp_magic

        x = _leaf([0.5, -1.0, 2.0], torch.float64)
        h = vjp_magic.hessian((x**3).sum(), x)
        _close(h.derivatives["x"], torch.diag(6 * x.detach()), torch.float64)
        _close(h.hessian("x"), torch.autograd.functional.hessian(
            lambda t: (t**3).sum(), x.detach()), torch.float64)
        assert "text/markdown" in h._repr_mimebundle_()

    def test_hessian_function_names(self):
        import vjp_magic

        x = _leaf([0.5, 1.0], torch.float64)
        h = vjp_magic.hessian(torch.sin(x), [x], names=["t"])
        _close(h.derivatives["t"], -torch.sin(x.detach()), torch.float64)

    def test_magic_names(self, ip, run_ok):
        run_ok("x = torch.linspace(0.5, 2, 4, requires_grad=True)\ny = torch.log(x)")
        h = run_ok("%hessian y x")
        _close(h.derivatives["x"], -1 / torch.linspace(0.5, 2, 4) ** 2, torch.float32)

    def test_magic_expression_wrt(self, ip, run_ok):
        run_ok("x = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)")
        h = run_ok("%hessian (x**2).sum() * x[0] wrt x")
        expected = torch.autograd.functional.hessian(
            lambda t: (t**2).sum() * t[0], torch.tensor([1.0, 2.0], dtype=torch.float64))
        _close(h.derivatives["x"], expected, torch.float64)
        _close(h.hessian("x"), expected, torch.float64)

    def test_magic_options(self, ip, run_ok):
        run_ok("x = torch.tensor([0.123456, 1.0], dtype=torch.float64, requires_grad=True)")
        h = run_ok("%hessian -p 2 --threshold 5 torch.exp(x) wrt x")
        assert "1.1" in repr(h) and "1.131" not in repr(h)  # exp(0.123456) = 1.1314

    def test_magic_symbolic(self, ip, run_ok):
        run_ok("x = torch.linspace(0.5, 2, 3, requires_grad=True)")
        h = run_ok("%hessian --symbolic torch.sin(x) wrt x")
        assert h.crosscheck.get("x") is True

    def test_magic_once_differentiable(self, ip, run_ok, usage_error):
        run_ok("from torch.autograd.function import once_differentiable\n"
               "class Sq(torch.autograd.Function):\n"
               "    @staticmethod\n"
               "    def forward(ctx, x):\n"
               "        ctx.save_for_backward(x)\n"
               "        return x**2\n"
               "    @staticmethod\n"
               "    @once_differentiable\n"
               "    def backward(ctx, g):\n"
               "        return 2 * ctx.saved_tensors[0] * g\n"
               "x = torch.tensor([1.0, 2.0], requires_grad=True)\ny = Sq.apply(x).sum()")
        message = usage_error("%hessian y x")
        assert "cannot be differentiated twice" in message and _one_sentence(message)

    def test_magic_keeps_grad(self, ip, run_ok):
        run_ok("x = torch.tensor([1.0, 2.0], requires_grad=True)\nx.grad = torch.ones(2)")
        run_ok("%hessian (x**3).sum() wrt x")
        assert torch.equal(ip.user_ns["x"].grad, torch.ones(2))


# -- --symbolic: the formulas, checked against the numbers --------------------------------------
def _derived(body: str, name: str = "x"):
    """Run ``body`` as the magic does (graphs kept, torch calls recorded), then the Hessian
    of its ``y`` and the symbolic report."""
    from vjp_magic.run.guard import keep_graphs
    from vjp_magic.run.record import recording
    from vjp_magic.symbolic import derive

    ns = {"torch": torch}
    with keep_graphs(), recording() as record:
        exec(body, ns)  # noqa: S102
    h = second_derivatives(ns["y"], {name: ns[name]})
    return h, derive(h, record=record, namespace=ns)


def _report_text(report) -> str:
    from vjp_magic.render import markdown, plain
    from vjp_magic.render.document import Document

    for tex in markdown.maths(markdown.render(Document(report.sections()))):
        assert latex.tex_problems(tex) == [], tex
    return " ".join(plain.render(Document(report.sections())).split())


def test_symbolic_elementwise():
    import sympy

    _, report = _derived("x = torch.linspace(0.5, 2, 4, requires_grad=True)\ny = torch.sin(x)")
    x = sympy.Symbol("x", real=True)
    assert sympy.simplify(report.formulas["x"] + sympy.sin(x)) == 0
    assert report.crosscheck == {"x": True}
    text = _report_text(report)
    assert "f″(x) = -sin(x)" in text and "agrees with autograd at all 4 points" in text


def test_symbolic_scalar_of_a_vector():
    import sympy

    _, report = _derived("x = torch.tensor([-1.2, 1.0], dtype=torch.float64, "
                         "requires_grad=True)\ny = (1 - x[0])**2 + 100*(x[1] - x[0]**2)**2")
    x1, x2 = sympy.symbols("x_1 x_2", real=True)
    expected = sympy.Matrix([[1200 * x1**2 - 400 * x2 + 2, -400 * x1], [-400 * x1, 200]])
    assert sympy.simplify(report.formulas["x"] - expected) == sympy.zeros(2, 2)
    assert report.crosscheck == {"x": True}
    assert "∇²f(x) =" in _report_text(report)


def test_symbolic_components_at_points():
    import sympy

    _, report = _derived("x = torch.linspace(0.5, 2, 3, requires_grad=True)\n"
                         "y = torch.stack([-x**3, 5*x])")
    x = sympy.Symbol("x", real=True)
    assert report.formulas["x"] == sympy.Matrix([[-6 * x], [0]])
    assert report.crosscheck == {"x": True}


def test_symbolic_disagreement_is_reported():
    from vjp_magic.run.guard import keep_graphs
    from vjp_magic.run.record import recording
    from vjp_magic.symbolic import derive

    ns = {"torch": torch}
    with keep_graphs(), recording() as record:
        exec("x = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)\n"
             "y = (x**3).sum()", ns)  # noqa: S102
    h = second_derivatives(ns["y"], ns["x"])
    h.inputs["x"].derivatives = h.inputs["x"].derivatives + 1  # wrong numbers
    report = derive(h, record=record, namespace=ns)
    assert report.crosscheck == {"x": False}
    assert "disagrees with autograd" in _report_text(report)


def test_symbolic_without_a_record_says_why():
    from vjp_magic.symbolic import derive

    x = _leaf([1.0, 2.0], torch.float64)
    h = second_derivatives((x**3).sum(), x)
    report = derive(h, record=None, namespace={})
    assert report.formulas == {"x": None} and "numbers only" in report.note


def test_hessian_refuses_the_picture_flag(usage_error, run_ok):
    run_ok("x = torch.ones(3, requires_grad=True)")
    message = usage_error("%hessian --picture (x**3).sum() wrt x")
    assert "--picture" in message and "%jacobian" in message
