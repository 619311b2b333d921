"""``--gradcheck`` (``run/gradcheck.py``): a custom autograd.Function's backward checked
against finite differences of the replayed cell; wrong ones caught, right ones passed,
inconclusive at kinks, and the global RNG left as a plain run leaves it.

Expected values come from mathematics and ``torch.autograd.functional.jacobian``, never from
the code under test.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from custom_functions import COUNTED_SQUARE, Jitter, matmul, square, x_sin

import vjp_magic.run.gradcheck as gradcheck_module
from vjp_magic.run.gradcheck import gradcheck
from vjp_magic.run.record import recording


# -- custom Functions' backwards, right and wrong, at two sizes ------------------------------------

SIZES = {"small": 4, "large": 48}  # square sizes: 16 and 2,304 entries (64 of them sampled)


def _checked(build_output, inputs: dict):
    with recording() as rec:
        y = build_output()
    return gradcheck(rec, inputs, y, list(inputs)), y


@pytest.mark.parametrize("size", SIZES.values(), ids=SIZES.keys())
@pytest.mark.parametrize("case", ["times_two", "transposed", "missing_term"])
def test_wrong_custom_backward_is_caught(case, size):
    g = torch.Generator().manual_seed(size)
    x = torch.randn(size, size, generator=g, requires_grad=True)
    w = torch.randn(size, size, generator=g, requires_grad=True)
    function, inputs, args = {
        "times_two": (square(4.0), {"x": x}, (x,)),
        "transposed": (matmul(True), {"x": x, "w": w}, (x, w)),
        "missing_term": (x_sin(True), {"x": x}, (x,)),
    }[case]
    report, _ = _checked(lambda: function.apply(*args) * 1.5, inputs)
    assert report.ok is False
    assert report.max_error["x"] > 1e-2
    assert report.custom == (f"{function.__name__}Backward",)
    assert report.checked["x"] == min(size * size, 64)
    if case == "transposed":  # w's own backward is right
        assert report.max_error["w"] < 1e-6


@pytest.mark.parametrize("size", SIZES.values(), ids=SIZES.keys())
@pytest.mark.parametrize("case", ["square", "matmul", "x_sin"])
def test_right_custom_backward_passes(case, size):
    g = torch.Generator().manual_seed(size)
    x = torch.randn(size, size, generator=g, requires_grad=True)
    w = torch.randn(size, size, generator=g, requires_grad=True)
    function, inputs, args = {
        "square": (square(2.0), {"x": x}, (x,)),
        "matmul": (matmul(False), {"x": x, "w": w}, (x, w)),
        "x_sin": (x_sin(False), {"x": x}, (x,)),
    }[case]
    report, _ = _checked(lambda: torch.tanh(function.apply(*args)), inputs)
    assert report.ok is True
    assert set(report.max_error) == set(inputs)
    assert all(error < 1e-6 for error in report.max_error.values())
    assert report.note is None


# -- the report: the error per input, the entries sampled, why a check did not run -----------------

def test_gradcheck_max_error_per_input_without_custom_functions():
    x = torch.randn(3, 5, requires_grad=True)
    w = torch.randn(5, 100, requires_grad=True)
    report, _ = _checked(lambda: torch.sigmoid(x @ w).sum(0), {"x": x, "w": w})
    assert report.ok and report.custom == ()
    assert report.checked == {"x": 15, "w": 64}
    assert report.max_error["x"] < 1e-7 and report.max_error["w"] < 1e-7


def test_wrong_backward_error_is_the_missing_factor():
    # y = Σ x² with a backward 3·g·x instead of 2·g·x: for a scalar output the error at
    # entry k is |3x_k − 2x_k| = |x_k| (mathematics); the largest is 3.
    x = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
    report, _ = _checked(lambda: square(3.0).apply(x).sum(), {"x": x})
    assert not report.ok
    assert report.max_error["x"] == pytest.approx(3.0, rel=1e-6)
    assert report.checked == {"x": 3}


def test_gradcheck_sampling_stops_at_its_time_limit(monkeypatch):
    monkeypatch.setattr(gradcheck_module, "PASSES", None)  # the user's time budget
    x = torch.randn(100, requires_grad=True)
    w = torch.randn(100, requires_grad=True)
    with recording() as rec:
        y = x * w
    report = gradcheck(rec, {"x": x, "w": w}, y, ["x", "w"], seconds=0.0)
    # out of time, the other entries not checked: never "passed" (inconclusive, ok None)
    assert report.checked == {"x": 1, "w": 1} and report.ok is None
    assert report.stopped == 0.0 and "stopped" in report.note


def _written_under_no_grad(x):
    h = x * 2
    with torch.no_grad():
        h[0] = 5.0  # autograd does not see this write: no pure function of x repeats it
    return h * 3


def test_gradcheck_says_why_it_did_not_run():
    x = torch.randn(1000, requires_grad=True)
    report, _ = _checked(lambda: _written_under_no_grad(x), {"x": x})
    assert report.ok is None and report.max_error == {}  # not run: neither passed nor failed
    assert "no_grad" in report.note
    y = x * 2
    assert "not recorded" in gradcheck(None, {"x": x}, y, ["x"]).note


def test_gradcheck_replays_the_cells_own_random_draws():
    """A dropout mask is drawn again from the generator's state kept at the call: the replay
    is the cell's function at its mask, whose derivative is mask·2/(1−p) (mathematics)."""
    x = torch.randn(1000, dtype=torch.float64, requires_grad=True)
    state = torch.get_rng_state()
    report, y = _checked(lambda: F.dropout(x, 0.5, training=True) * 2, {"x": x})
    assert report.ok is True and report.max_error["x"] < 1e-6
    assert not torch.equal(state, torch.get_rng_state())  # the cell's own draw moved it once
    torch.set_rng_state(state)
    mask = F.dropout(torch.ones(1000, dtype=torch.float64), 0.5, training=True) != 0
    torch.testing.assert_close(y.detach() != 0, mask)


# -- through the magic: a wrong backward FAILED, a right one passed --------------------------------

def test_gradcheck_flag_catches_a_wrong_backward(run_vjp, ip):
    ip.user_ns["Wrong"] = square(3.0)
    r = run_vjp("x = torch.linspace(1, 2, 5, requires_grad=True)\ny = Wrong.apply(x)",
                "--gradcheck")
    assert r.gradcheck.ok is False and r.gradcheck.max_error["x"] > 0.5
    ip.user_ns["Right"] = square(2.0)
    r = run_vjp("x = torch.linspace(1, 2, 5, requires_grad=True)\ny = Right.apply(x)",
                "--gradcheck")
    assert r.gradcheck.ok is True and r.gradcheck.max_error["x"] < 1e-6


# -- what autograd does not see: a detach, batch statistics, float32, an earlier reference ---------

@pytest.mark.parametrize("how", ["detach", "no_grad"])
def test_gradcheck_failing_through_a_detach_says_so(how):
    x = torch.randn(5, requires_grad=True)

    def centred():
        if how == "detach":
            return x - x.mean().detach()
        with torch.no_grad():
            m = x.mean()
        return x - m

    report, _ = _checked(centred, {"x": x})
    # autograd: the identity; the function: I − 1/5 (mathematics); the entries differ by 1/5·v
    assert report.ok is False and report.custom == ()
    assert "detaches" in report.note and report.max_error["x"] > 1e-2


def test_gradcheck_of_batch_norm_in_training_mode_leaves_its_statistics():
    with recording() as rec:  # the model built in the cell: its parameters change there
        torch.manual_seed(6)
        model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
        x = torch.randn(6, 3)
        y = torch.tanh(model(x)).sum(1)
    mean, var = model[1].running_mean.clone(), model[1].running_var.clone()
    params = dict(model.named_parameters())
    report = gradcheck(rec, params, y)
    assert report.ok and set(report.max_error) == set(params)
    assert torch.equal(model[1].running_mean, mean) and torch.equal(model[1].running_var, var)


def test_gradcheck_refuses_a_replay_that_stays_in_float32():
    class Float32Square(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x.float() ** 2

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return 2 * g * x

    x = torch.randn(4, requires_grad=True)
    report, _ = _checked(lambda: Float32Square.apply(x), {"x": x})
    assert report.ok is None and report.max_error == {} and "float32" in report.note


def test_gradcheck_catches_an_error_in_one_entry_of_many():
    class OneEntryWrong(torch.autograd.Function):
        """x ↦ x², backward right except at the last entry (×3): 1 entry of 2,304."""

        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x * x

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            grad = 2 * g * x
            grad.view(-1)[-1] *= 3
            return grad

    x = torch.linspace(-1, 1.5, 48 * 48).reshape(48, 48).requires_grad_()
    report, _ = _checked(lambda: OneEntryWrong.apply(x).sin(), {"x": x})
    assert report.ok is False and report.checked == {"x": 64}


def test_gradcheck_refuses_a_function_applied_through_an_earlier_reference(ip, run_ok, run_vjp):
    """``sq = Sq.apply`` before the cell: the record holds only the forward's inner ops, so
    the check says it cannot replay instead of reporting a correct backward as FAILED."""
    run_ok(COUNTED_SQUARE + "sq = Sq.apply")
    r = run_vjp("x = torch.linspace(-1, 1, 5, requires_grad=True)\ny = sq(x)", "--gradcheck")
    assert r.gradcheck.ok is None and r.gradcheck.max_error == {}
    assert "reference made before the cell" in r.gradcheck.note
    assert "FAILED" not in r._repr_mimebundle_()["text/plain"]


# -- --gradcheck at kinks: inconclusive, never FAILED for a right derivative -------------------
def _relu_with_backward(at_zero: float, slope: float = 1.0):
    class CustomRelu(torch.autograd.Function):
        """relu, backward ``slope`` on x > 0 and ``at_zero`` at x = 0 (right: slope 1 and
        anything in [0, 1] at 0, the one-sided slopes)."""

        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x.clamp_min(0)

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return g * torch.where(x == 0, at_zero, (x > 0).to(x.dtype) * slope)

    return CustomRelu


def test_gradcheck_at_the_tutorials_relu_kink_is_inconclusive(run_vjp):
    """linspace(-1, 1, 5) holds 0 exactly: relu has no derivative there to check."""
    r = run_vjp("x = torch.linspace(-1, 1, 5, requires_grad=True)\ny = torch.relu(x)",
                "--gradcheck")
    assert r.gradcheck.ok is None and r.gradcheck.inconclusive == {"x": (2,)}
    assert r.gradcheck.max_error["x"] < 1e-6 and r.gradcheck.kinks == ("relu",)
    text = " ".join(r._repr_mimebundle_()["text/plain"].split())
    assert "inconclusive at x[2] (a kink: relu is not differentiable there; check at " \
           "another x)" in text
    assert "FAILED" not in text and "custom autograd.Function" not in text
    markdown = r._repr_mimebundle_()["text/markdown"]
    assert "inconclusive at `x[2]` (a kink: relu is not differentiable there" in markdown


@pytest.mark.parametrize("near", [5e-7, -5e-7, 1e-7, 3e-7 - 1e-6])
def test_gradcheck_steps_around_a_kink_within_one_step(near):
    """The kink of relu at 0 lies within the step 1e-6 of x: a one-sided difference (or a
    smaller step) that does not cross it is used, and agrees (relu' = 1 or 0: mathematics)."""
    x = torch.tensor([near, 0.3, -0.2], dtype=torch.float64, requires_grad=True)
    report, _ = _checked(lambda: torch.relu(x) * 2, {"x": x})
    assert report.ok is True and report.inconclusive == {}
    assert report.max_error["x"] < 1e-6


def test_gradcheck_of_relu_near_its_kink_passes_through_the_magic(run_vjp):
    r = run_vjp("x = torch.tensor([5e-7, -5e-7, 0.3], requires_grad=True)\ny = torch.relu(x)",
                "--gradcheck")
    assert r.gradcheck.ok is True and r.gradcheck.inconclusive == {}
    assert "Gradient check passed" in r._repr_mimebundle_()["text/plain"]


def test_gradcheck_of_clamp_is_inconclusive_only_at_its_bounds():
    x = torch.tensor([[0.5, -0.5], [0.5 + 3e-7, 0.2]], requires_grad=True)
    report, _ = _checked(lambda: torch.clamp(x, -0.5, 0.5), {"x": x})
    assert report.ok is None and report.inconclusive == {"x": ((0, 0), (0, 1))}
    assert report.kinks == ("clamp",)


def test_gradcheck_of_abs_at_zero_takes_autograds_subgradient():
    """|x|' at 0 is 0 in autograd: between the one-sided slopes -1 and 1, so inconclusive."""
    x = torch.tensor([0.0, 1.5, -2.0], dtype=torch.float64, requires_grad=True)
    report, _ = _checked(lambda: torch.abs(x).sum(), {"x": x})
    assert report.ok is None and report.inconclusive == {"x": (0,)}


@pytest.mark.parametrize("at_zero, slope, ok", [(0.0, 1.0, None), (0.5, 1.0, None),
                                                (5.0, 1.0, None), (0.0, 2.0, False),
                                                (5.0, 2.0, False)])
def test_a_wrong_custom_backward_at_a_kink_still_fails(at_zero, slope, ok):
    """FAILED where the backward is wrong where f has a derivative: a slope of 2. At the kink
    itself f has none, so 5 there (outside the one-sided slopes 0 and 1), right elsewhere, is
    inconclusive, never passed: outside the slopes along e_k is no proof where several
    pieces meet (a right maximum(x, x.flip(0)) at ties lies outside them; s42 G1)."""
    x = torch.linspace(-1, 1, 5, dtype=torch.float64, requires_grad=True)
    function = _relu_with_backward(at_zero, slope)
    report, _ = _checked(lambda: function.apply(x), {"x": x})
    assert report.ok is ok
    assert report.custom == ("CustomReluBackward",)
    if ok is False and slope == 2.0:
        assert report.max_error["x"] > 0.5  # relu' = 1 at x = 0.5, 1: off by 1


def test_a_failure_at_a_kink_without_custom_functions_blames_none(run_vjp, ip):
    ip.user_ns["Wrong"] = _relu_with_backward(5.0, 2.0)  # wrong away from the kink too
    r = run_vjp("x = torch.linspace(-1, 1, 5, requires_grad=True)\ny = Wrong.apply(x)",
                "--gradcheck")
    assert r.gradcheck.ok is False
    text = " ".join(r._repr_mimebundle_()["text/plain"].split())
    assert "custom autograd.Function's backward is the likely culprit" in text
    r = run_vjp("x = torch.linspace(-1, 1, 5, requires_grad=True)\ny = torch.relu(x) * 3",
                "--gradcheck")
    text = " ".join(r._repr_mimebundle_()["text/plain"].split())
    assert r.gradcheck.ok is None and "inconclusive at x[2]" in text
    assert "custom" not in text and "FAILED" not in text


# -- --gradcheck leaves the global RNG as a plain run does -------------------------------------
_RANDOM_CELLS = {
    "rand_like_dropout": "x = torch.linspace(-1, 1, 6, requires_grad=True)\n"
                         "noise = torch.rand_like(x)\n"
                         "y = F.dropout(x * noise, 0.5, training=True)",
    "drawn_in_a_function": "x = torch.linspace(-1, 1, 6, requires_grad=True)\n"
                           "y = Jitter.apply(x) * 2",
}


@pytest.mark.parametrize("line", ["--gradcheck", "--gradcheck --wrt x", "--check x"])
@pytest.mark.parametrize("cell", _RANDOM_CELLS)
def test_the_rng_after_the_magic_is_as_after_a_plain_run(ip, run_ok, cell, line):
    run_ok("import torch.nn.functional as F")
    ip.user_ns["Jitter"] = Jitter
    body = _RANDOM_CELLS[cell]
    torch.manual_seed(5)
    run_ok(body)
    plain = torch.get_rng_state()
    torch.manual_seed(5)
    run_ok(f"%%vjp {line}\n{body}")
    assert torch.equal(torch.get_rng_state(), plain)


def test_gradcheck_itself_restores_the_rng():
    """A replay that draws (a custom Function's forward) runs under fork_rng."""
    x = torch.linspace(-1, 1, 6, requires_grad=True)
    with recording() as rec:
        y = Jitter.apply(x)
    state = torch.get_rng_state()
    report = gradcheck(rec, {"x": x}, y)
    assert report.ok is None and "random draws" in report.note
    assert torch.equal(torch.get_rng_state(), state)
