"""``--gradcheck`` as strict as ``torch.autograd.gradcheck``: a backward that ignores its
incoming gradient fails for scalar outputs too (random non-unit v, and vᵀJ must double when v
does); a custom Function is blamed only where one lies on the way, by name; kinks and jumps
are no failure; ordinary ops pass; torch's RNG is untouched.

Expected values come from mathematics, never from the code under test.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from custom_functions import Twice

from vjp_magic.render import plain
from vjp_magic.render.document import Document
from vjp_magic.render.gradcheck import gradcheck_sections
from vjp_magic.run.gradcheck import GradcheckReport, custom_on_the_way, gradcheck, probe_v
from vjp_magic.run.record import recording


def _square(ignores_grad: bool):
    class Square(torch.autograd.Function):
        """x ↦ x²; backward 2·g·x, or 2·x (wrong: ``grad_output`` ignored)."""

        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x * x

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return 2 * x if ignores_grad else 2 * g * x

    return Square


def _checked(build, inputs: dict, seed: int | None = None):
    with recording() as rec:
        y = build()
    return gradcheck(rec, inputs, y, list(inputs), seed=seed)


def _text(report) -> str:
    return plain.render(Document(tuple(gradcheck_sections(report, None))))


SHAPES = {"scalar": lambda f, x: f.apply(x).sum(), "vector": lambda f, x: f.apply(x)}


@pytest.mark.parametrize("seed", [0, 1, 7, 12345])
@pytest.mark.parametrize("shape", SHAPES)
def test_a_backward_ignoring_grad_output_fails(shape, seed):
    # d/dx Σx² = 2x; with v the backward gives 2x, not 2·v·x: wrong for any v ≠ 1.
    x = torch.linspace(0.5, 2.0, 6, dtype=torch.float64, requires_grad=True)
    report = _checked(lambda: SHAPES[shape](_square(True), x), {"x": x}, seed)
    assert report.ok is False
    assert report.unscaled == ("x",)  # vjp(2v) is not 2·vjp(v)
    assert report.custom == ("SquareBackward",)
    assert report.max_error["x"] > 0.1


@pytest.mark.parametrize("seed", [0, 3])
@pytest.mark.parametrize("shape", SHAPES)
def test_a_right_backward_passes(shape, seed):
    x = torch.linspace(-2.0, 2.0, 7, dtype=torch.float64, requires_grad=True)
    report = _checked(lambda: torch.sin(SHAPES[shape](_square(False), x)), {"x": x}, seed)
    assert report.ok is True and report.unscaled == () and report.failed == {}
    assert report.max_error["x"] < 1e-6


def test_the_scalar_error_is_in_the_derivatives_units():
    # backward 2·x with a scalar v: vᵀJ/v = 2x/v against 2x; the error at x_k is
    # |2x_k|·|1 − 1/v|, whatever v is (|v| in [1.5, 3]: between 1/3 and 5/3 of |2x_k|).
    x = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64, requires_grad=True)
    report = _checked(lambda: _square(True).apply(x).sum(), {"x": x})
    assert 6 / 3 - 1e-9 <= report.max_error["x"] <= 6 * 5 / 3 + 1e-9


def test_the_magic_says_the_backward_ignores_grad_output(run_vjp, ip):
    ip.user_ns["Square"] = _square(True)
    r = run_vjp("x = torch.linspace(1, 2, 5, requires_grad=True)\ny = Square.apply(x).sum()",
                "--gradcheck")
    assert r.gradcheck.ok is False and r.gradcheck.unscaled == ("x",)
    text = " ".join(r._repr_mimebundle_()["text/plain"].split())
    assert "Gradient check FAILED" in text
    assert "backward not multiplied by grad_output" in text
    assert "likely culprit: SquareBackward" in text
    ip.user_ns["Square"] = _square(False)
    r = run_vjp("x = torch.linspace(1, 2, 5, requires_grad=True)\ny = Square.apply(x).sum()",
                "--gradcheck")
    assert r.gradcheck.ok is True


def test_v_comes_from_the_seed_and_never_near_one():
    out = torch.zeros(1000, dtype=torch.float64)
    v = probe_v(out, 5)
    assert torch.equal(v, probe_v(out, 5)) and not torch.equal(v, probe_v(out, 6))
    assert 1.5 <= float(v.abs().min()) and float(v.abs().max()) <= 3.0
    assert (v > 0).any() and (v < 0).any() and len(set(v.tolist())) == 1000  # non-uniform
    scalars = [float(probe_v(torch.zeros(()), seed)) for seed in range(50)]
    assert all(1.5 <= abs(s) <= 3.0 for s in scalars) and min(scalars) < 0 < max(scalars)


def test_the_check_leaves_torchs_rng_alone():
    x = torch.linspace(-1, 1, 80, dtype=torch.float64, requires_grad=True)  # 64 sampled
    torch.manual_seed(3)
    state = torch.get_rng_state()
    report = _checked(lambda: torch.tanh(x * 2).sum(), {"x": x}, seed=11)
    assert report.ok is True and report.checked == {"x": 64}
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(4)  # another global state: the same draws (from the run's seed)
    again = _checked(lambda: torch.tanh(x * 2).sum(), {"x": x}, seed=11)
    assert again.max_error == report.max_error


# -- the diagnosis follows the graph: custom Functions on the way, kinks, jumps -------------------

KINKS = {
    "relu": lambda x: torch.relu(x),
    "abs": lambda x: torch.abs(x).sum(),
    "abs_scalar_scaled": lambda x: torch.abs(x).sum() * 3,
    "sign": lambda x: torch.sign(x) * 2 + x,  # a jump at 0 (no derivative there)
    "sqrt_abs": lambda x: torch.sqrt(torch.abs(x)),  # an infinite slope at 0
    "clamp": lambda x: torch.clamp(x, -0.5, 0.5),
    "maximum": lambda x: torch.maximum(x, torch.zeros_like(x)).sum(),
}


@pytest.mark.parametrize("case", KINKS)
def test_a_kink_is_never_blamed_on_a_custom_function(case):
    x = torch.linspace(-1, 1, 5, dtype=torch.float64, requires_grad=True)  # holds 0, ±0.5
    report = _checked(lambda: KINKS[case](x), {"x": x})
    assert report.ok is None and report.custom == () and report.unscaled == ()
    assert report.inconclusive  # where f has no derivative: no verdict
    text = _text(report)
    assert "custom" not in text and "FAILED" not in text


@pytest.mark.parametrize("body", ["y = torch.relu(x)", "y = torch.abs(x).sum()"])
def test_relu_and_abs_at_zero_through_the_magic(run_vjp, body):
    r = run_vjp(f"x = torch.linspace(-1, 1, 5, requires_grad=True)\n{body}", "--gradcheck")
    text = " ".join(r._repr_mimebundle_()["text/plain"].split())
    assert r.gradcheck.ok is None and "inconclusive at x[2]" in text
    assert "custom" not in text and "FAILED" not in text


def test_a_failure_without_a_custom_function_names_the_non_differentiable_point():
    report = GradcheckReport(ok=False, max_error={"x": 1.0}, checked={"x": 5},
                             failed={"x": (2,)}, kinks=("relu",))
    text = " ".join(_text(report).split())
    assert ("Finite differences disagree near a point where the function is not "
            "differentiable: x[2] (relu)") in text
    assert "likely culprit" not in text


def test_only_custom_functions_on_the_way_are_named():
    x = torch.randn(3, dtype=torch.float64, requires_grad=True)
    c = torch.randn(3, dtype=torch.float64, requires_grad=True)
    y = x.sin() + Twice.apply(c)
    assert custom_on_the_way(y, [x]) == ()
    assert custom_on_the_way(y, [c]) == ("TwiceBackward",)
    assert custom_on_the_way(y, [x, c]) == ("TwiceBackward",)


# -- no false alarm: ordinary ops in float64 ------------------------------------------------------

def _ordinary(x, w):
    h = torch.tanh(x @ w) + torch.sigmoid(x).sum(1, keepdim=True)
    h = F.softmax(h, dim=1) * torch.exp(-h ** 2) + torch.log1p(h.abs() + 1)
    h = F.layer_norm(h, h.shape[1:]) + torch.cumsum(h, 1) / torch.cosh(h)
    h = F.gelu(h) + F.softplus(h) * torch.atan(h) + torch.erf(h)
    return torch.logsumexp(h, 1) + (h @ h.T).diagonal().sqrt()


@pytest.mark.parametrize("shape", ["vector", "scalar"])
def test_no_false_alarm_on_ordinary_ops(shape):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 6, generator=g, dtype=torch.float64, requires_grad=True)
    report = _checked(lambda: _ordinary(x, w) if shape == "vector" else _ordinary(x, w).mean(),
                      {"x": x, "w": w})
    assert report.ok is True and report.inconclusive == {} and report.unscaled == ()
    assert report.custom == () and report.checked == {"x": 20, "w": 30}
    assert max(report.max_error.values()) < 1e-6


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_v_is_drawn_on_the_cpu_and_the_device_rng_is_left_alone():
    x = torch.linspace(0.5, 2.0, 6, dtype=torch.float64, device="cuda", requires_grad=True)
    state = torch.cuda.get_rng_state()
    report = _checked(lambda: _square(True).apply(x).sum(), {"x": x}, seed=2)
    assert report.ok is False and report.unscaled == ("x",)
    assert _checked(lambda: _square(False).apply(x).sum(), {"x": x}, seed=2).ok is True
    assert torch.equal(torch.cuda.get_rng_state(), state)
