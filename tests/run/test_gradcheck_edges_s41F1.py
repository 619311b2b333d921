"""--gradcheck at the edges of its own arithmetic (R2-1, R2-2, R2-4, R2-5), at functions and
points other than the review's: ties and 0/0 (no derivative: inconclusive, a wrong custom
backward there still failed), overflow of the check's own probes, inputs as small as the
step, outputs whose ulp is larger than any step's effect. Expected verdicts from
mathematics (where a derivative exists, PyTorch's built-in one is right)."""
from __future__ import annotations

import pytest

TIES = {
    "kthvalue of tied rows": "x = torch.ones(8, dtype=torch.float64, requires_grad=True)\n"
                             "y = x.view(2, 4).kthvalue(2, 1).values * torch.tensor([1., 3.])",
    "cummax of tied values": "x = torch.ones(8, dtype=torch.float64, requires_grad=True)\n"
                             "y = torch.cummax(x, 0).values * torch.arange(8.)",
    "maximum with its flip": "x = torch.ones(6, dtype=torch.float64, requires_grad=True)\n"
                             "y = torch.maximum(x, x.flip(0)) * torch.arange(6.)",
    "atan2(x, x) at 0": "x = torch.zeros(6, dtype=torch.float64, requires_grad=True)\n"
                        "y = torch.atan2(x, x)",
}


@pytest.mark.parametrize("name", list(TIES))
def test_right_built_in_backwards_at_ties_and_0_over_0_are_inconclusive(run_ok, name):
    report = run_ok("%%vjp --gradcheck\n" + TIES[name]).gradcheck
    assert report.ok is None and report.inconclusive, (report.failed, report.max_error)


TIED_MAX = '''
class TiedMax(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.max()

    @staticmethod
    def backward(ctx, g):
        return torch.full((4,), 2.0, dtype=g.dtype) * g  # wrong: 2 is no slope of max here
'''


def test_a_wrong_custom_backward_at_ties_still_fails(ip, run_ok):
    """max at 4 tied values: along e_k its slopes are 1 (up) and 0 (down); 2 is neither."""
    ip.run_cell(TIED_MAX)
    report = run_ok("%%vjp --gradcheck\nx = torch.ones(4, dtype=torch.float64, "
                    "requires_grad=True)\ny = TiedMax.apply(x) * 3").gradcheck
    assert report.ok is False


def test_a_detached_term_still_fails_where_the_built_ins_disagree_everywhere(run_ok):
    """d(x·x.detach())/dx is 2x; autograd's x (a constant x) disagrees at x and nearby."""
    report = run_ok("%%vjp --gradcheck\nx = torch.linspace(1, 2, 4, dtype=torch.float64,"
                    " requires_grad=True)\ny = x * x.detach()").gradcheck
    assert report.ok is False and report.failed == {"x": (0, 1, 2, 3)}


NEAR_OVERFLOW = {
    "cosh at 710": "x = torch.full((4,), 710.0, dtype=torch.float64, requires_grad=True)\n"
                   "y = torch.cosh(x)",
    "1e308·x (J beyond y)": "x = torch.full((4,), 1.5, dtype=torch.float64, "
                            "requires_grad=True)\ny = x * 1e308",
    "float32 exp at 88": "x = torch.full((4,), 88.0, requires_grad=True)\ny = torch.exp(x)",
}


@pytest.mark.parametrize("name", list(NEAR_OVERFLOW))
def test_near_overflow_the_checks_own_probes_do_not_overflow(run_ok, name):
    report = run_ok("%%vjp --gradcheck\n" + NEAR_OVERFLOW[name]).gradcheck
    assert report.ok is True and not report.unscaled, report.note


IGNORES_G = '''
class IgnoresG(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        y = torch.exp(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return y  # wrong: not multiplied by g
'''


def test_a_backward_ignoring_its_gradient_near_overflow_still_fails(ip, run_ok):
    ip.run_cell(IGNORES_G)
    report = run_ok("%%vjp --gradcheck\nx = torch.full((4,), 709.0, dtype=torch.float64,"
                    " requires_grad=True)\ny = IgnoresG.apply(x)").gradcheck
    assert report.ok is False and report.unscaled == ("x",)


CUBE_OFF = '''
class CubeOff(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x ** 3

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 4.5 * x ** 2 * g  # wrong: d(x³)/dx = 3x²
'''


@pytest.mark.parametrize("x0", [1e-8, 3e-7])
@pytest.mark.parametrize("body", ["torch.tanh(x) * x", "torch.exp(x) * x ** 2", "x ** 4"])
def test_smooth_functions_at_inputs_below_the_step_pass(run_ok, body, x0):
    r = run_ok(f"%%vjp --gradcheck\nx = torch.full((5,), {x0}, dtype=torch.float64,"
               f" requires_grad=True)\ny = {body}")
    assert r.gradcheck.ok is True, r._repr_mimebundle_()["text/plain"]


@pytest.mark.parametrize("x0", [1e-8, -3e-7])
def test_a_backward_50_percent_off_at_inputs_below_the_step_fails_in_its_units(ip, run_ok, x0):
    """The error told is 1.5·x² (4.5x² − 3x²), in the derivative's own units."""
    ip.run_cell(CUBE_OFF)
    report = run_ok(f"%%vjp --gradcheck\nx = torch.full((6,), {x0}, dtype=torch.float64,"
                    " requires_grad=True)\ny = CubeOff.apply(x)").gradcheck
    assert report.ok is False
    assert report.max_error["x"] == pytest.approx(1.5 * x0 ** 2, rel=1e-3)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("body", ["torch.sin(x) + 1e17", "x ** 3 - 1e20"])
def test_a_smooth_function_whose_steps_are_below_its_ulp_is_inconclusive(run_ok, body, dtype):
    r = run_ok(f"%%vjp --gradcheck\nx = torch.linspace(1, 2, 4, dtype=torch.{dtype},"
               f" requires_grad=True)\ny = {body}")
    assert r.gradcheck.ok is None and r.gradcheck.noisy
    assert "not differentiable" not in r._repr_mimebundle_()["text/plain"]
