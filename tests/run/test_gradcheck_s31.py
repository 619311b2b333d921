"""``--gradcheck`` never passes a wrong backward and never fails a right one (issue 23 item 5,
session 31): the cell's own float32 derivatives are checked too, a backward nonlinear in its
incoming gradient is caught for scalar outputs, a staircase finer than the step is tried at
the smaller steps before it is failed, and every entry outside the 64-entry sample is checked
(in groups) so one wrong entry among thousands fails.

Expected derivatives come from mathematics (d(x²)/dx = 2x) or torch.autograd.gradcheck, never
from the code under test.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vjp_magic.render import plain
from vjp_magic.render.document import Document
from vjp_magic.render.gradcheck import gradcheck_sections
import vjp_magic.run.gradcheck as gradcheck_module
from vjp_magic.run.gradcheck import gradcheck
from vjp_magic.run.record import recording


def _square(backward):
    """x ↦ x², whose backward is ``backward(g, x)`` (right: 2·g·x)."""

    class Square(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x * x

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return backward(g, x)

    return Square


RIGHT = _square(lambda g, x: 2 * g * x)


def _checked(build, inputs: dict, seed: int = 0, seconds: float = 10.0):
    with recording() as rec:
        y = build()
    return gradcheck(rec, inputs, y, list(inputs), seed=seed, seconds=seconds)


def _text(report) -> str:
    return plain.render(Document(gradcheck_sections(report, None)))


# -- 1. the cell's own dtype: a backward wrong only in float32 (or float16) ---------------------

def _wrong_in(dtype, factor, entry=None):
    def backward(g, x):
        d = 2 * g * x
        if x.dtype != dtype:
            return d
        if entry is None:
            return d * factor
        d = d.clone()
        d.view(-1)[entry] *= factor
        return d
    return _square(backward)


@pytest.mark.parametrize("factor", [1.05, 0.98, -1.0])
@pytest.mark.parametrize("entry", [None, 4])
@pytest.mark.parametrize("output", ["vector", "sum", "tanh"])
def test_a_backward_wrong_only_in_float32_fails(factor, entry, output):
    square = _wrong_in(torch.float32, factor, entry)
    x = torch.linspace(0.5, 2, 12, requires_grad=True)
    build = {"vector": lambda: square.apply(x), "sum": lambda: square.apply(x).sum(),
             "tanh": lambda: torch.tanh(square.apply(x) / 4)}[output]
    report = _checked(build, {"x": x})
    assert report.ok is False and report.cell_failed == ("x",) and report.cell_dtype == "float32"
    assert report.failed == {} and report.unscaled == ()  # the float64 replay is right
    assert report.cell_error["x"] > 1e-2 / 12
    text = _text(report)
    assert "FAILED" in text and "only in float32" in text and "SquareBackward" in text


def test_a_backward_wrong_only_in_float16_fails():
    square = _wrong_in(torch.float16, 1.1)
    x = torch.linspace(0.5, 2, 12, dtype=torch.float16, requires_grad=True)
    report = _checked(lambda: square.apply(x).sum(), {"x": x})
    assert report.ok is False and report.cell_failed == ("x",)


def _mlp_cell():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.BatchNorm1d(16),
                                torch.nn.Tanh(), torch.nn.Linear(16, 3))
    x = torch.randn(20, 6, requires_grad=True)
    target = torch.randint(0, 3, (20,))
    return (lambda: F.cross_entropy(model(x), target)), {"x": x, **dict(model.named_parameters())}


@pytest.mark.parametrize("case", ["softmax", "logsumexp", "exp", "cumsum", "matmul"])
def test_right_float32_custom_backwards_pass_in_their_dtype(case):
    z = torch.linspace(-2, 2, 300, requires_grad=True)
    w = torch.linspace(-1, 1, 300 * 7).reshape(300, 7).requires_grad_()
    build, inputs = {
        "softmax": ((lambda: torch.softmax(RIGHT.apply(z) * 30, 0)), {"z": z}),
        "logsumexp": ((lambda: torch.logsumexp(RIGHT.apply(z) * 50, 0)), {"z": z}),
        "exp": ((lambda: torch.exp(RIGHT.apply(z) / 4)), {"z": z}),
        "cumsum": ((lambda: torch.cumsum(RIGHT.apply(z), 0) ** 2), {"z": z}),
        "matmul": ((lambda: torch.tanh(RIGHT.apply(z) @ w)), {"z": z, "w": w}),
    }[case]
    report = _checked(build, inputs)
    assert report.ok is True and report.cell_dtype == "float32" and report.cell_failed == ()
    assert "in float32 (the cell's dtype)" in " ".join(_text(report).split())


def test_pytorchs_own_float32_derivatives_are_not_second_guessed():
    build, inputs = _mlp_cell()  # BatchNorm's bias: 0 in float64, float32 rounding here
    report = _checked(build, inputs)
    assert report.ok is True and report.cell_dtype is None


def test_a_float32_forward_too_coarse_leaves_its_custom_backward_in_doubt():
    # (z + 1e6) - 1e6 in float32 keeps z to 0.06: the float32 derivatives are not compared
    z = torch.linspace(-1, 1, 50, requires_grad=True)
    for square in (RIGHT, _wrong_in(torch.float32, 1.05)):
        report = _checked(lambda s=square: s.apply((z + 1e6) - 1e6), {"z": z})
        assert report.ok is None and "not compared" in report.note
        assert "inconclusive in float32" in " ".join(_text(report).split())


@pytest.mark.parametrize("factor", [1.0, 1.05])
def test_float32_on_the_other_side_of_a_kink_is_doubt_not_failure(factor):
    # x - 0.1 at x = float32(0.1): 0 in float32, 1.5e-9 in float64; relu's slope 0 or 1
    x = torch.tensor([0.1, 0.2, 0.7, 1.3], requires_grad=True)
    square = _wrong_in(torch.float32, factor)
    report = _checked(lambda: square.apply(torch.relu(x - 0.1) + x), {"x": x})
    assert report.ok is None  # never passed, never failed
    assert "relu" in report.note


def test_a_float64_cell_has_no_second_dtype():
    x = torch.linspace(0.5, 2, 12, dtype=torch.float64, requires_grad=True)
    report = _checked(lambda: RIGHT.apply(x).sum(), {"x": x})
    assert report.ok is True and report.cell_dtype is None and report.cell_error == {}


# -- 2. backwards nonlinear in grad_output: never passed, whatever the seed --------------------

NONLINEAR = {
    "abs": lambda g, x: 2 * g.abs() * x,
    "relu": lambda g, x: 2 * g.clamp(min=0) * x,
    "cube": lambda g, x: 2 * g ** 3 * x,
    "square": lambda g, x: 2 * g * g * x,
    "sign": lambda g, x: 2 * g.sign() * x,
    "clamped": lambda g, x: 2 * g.clamp(-2, 2) * x,
}


@pytest.mark.parametrize("kind", list(NONLINEAR))
@pytest.mark.parametrize("output", ["scalar", "weighted", "vector"])
def test_a_backward_nonlinear_in_grad_output_is_never_passed(kind, output):
    square = _square(NONLINEAR[kind])
    x = torch.linspace(0.5, 2, 6, dtype=torch.float64, requires_grad=True)
    weights = torch.arange(1.0, 7.0, dtype=torch.float64)
    build = {"scalar": lambda: square.apply(x).sum(),
             "weighted": lambda: (weights * square.apply(x)).sum(),
             "vector": lambda: square.apply(x)}[output]
    verdicts = [_checked(build, {"x": x}, seed=seed).ok for seed in range(10)]
    assert True not in verdicts, verdicts


@pytest.mark.parametrize("seed", range(6))
def test_a_linear_backward_passes_the_scaling_at_every_seed(seed):
    x = torch.linspace(-2, 2, 7, dtype=torch.float64, requires_grad=True)
    report = _checked(lambda: torch.sin(RIGHT.apply(x)).sum(), {"x": x}, seed=seed)
    assert report.ok is True and report.unscaled == ()


def test_the_scaling_failure_says_the_absolute_value():
    x = torch.linspace(0.5, 2, 6, dtype=torch.float64, requires_grad=True)
    square = _square(NONLINEAR["abs"])
    reports = [_checked(lambda: square.apply(x).sum(), {"x": x}, seed=s) for s in range(4)]
    unscaled = [r for r in reports if r.unscaled]
    assert unscaled and all(r.ok is False for r in reports)
    assert "absolute value" in _text(unscaled[0])


# -- 3. staircases finer than the step: tried at h/16 and h/256 before failing -----------------

SCALES = [1e6, 3e6, 1e7, 1e8, 2.0 ** 20, 2.0 ** 22]
POINTS = torch.tensor([0.10000034, 0.12500117, 0.7310281, 1.3937113, 1.9012447],
                      dtype=torch.float64)


def _stairs_at_h256(op, scale) -> bool:
    """Mathematics: no stair within h/256 of any point (then autograd's derivative is the
    function's own there)."""
    h = 1e-6 / 256
    lo, hi = getattr(torch, op)((POINTS - h) * scale), getattr(torch, op)((POINTS + h) * scale)
    return bool((lo == hi).all())


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("op", ["floor", "round", "ceil", "trunc"])
def test_a_right_fine_staircase_is_never_failed(op, scale):
    """Passed where no stair lies within h/256 of any point; else inconclusive (a jump
    within every step tried), never FAILED."""
    x = POINTS.clone().requires_grad_()
    report = _checked(lambda: getattr(torch, op)(x * scale) / scale + x ** 2, {"x": x})
    assert report.ok is not False, report
    if _stairs_at_h256(op, scale):
        assert report.ok is True, report


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("op", ["floor", "round"])
def test_a_wrong_backward_beside_a_fine_staircase_still_fails(op, scale):
    wrong = _square(lambda g, x: 2.1 * g * x)
    x = POINTS.clone().requires_grad_()
    report = _checked(lambda: getattr(torch, op)(x * scale) / scale + wrong.apply(x), {"x": x})
    assert report.ok is False


# -- 4. one wrong entry among many: every entry covered, in groups -----------------------------

def _one_entry(factor: float, entry: int):
    def backward(g, x):
        d = 2 * g * x
        d.view(-1)[entry] *= factor
        return d
    return _square(backward)


@pytest.mark.parametrize("n", [100, 1000, 5000])
@pytest.mark.parametrize("factor", [1.01, 0.99])
@pytest.mark.parametrize("where", ["last", "first", "middle"])
def test_one_entry_1_percent_off_among_many_fails(n, factor, where):
    entry = {"last": n - 1, "first": 0, "middle": n // 2 + 7}[where]
    square = _one_entry(factor, entry)
    x = torch.linspace(0.5, 2, n, dtype=torch.float64, requires_grad=True)
    if n == 100:  # the standard: torch checks every entry (too slow to ask beyond)
        assert not torch.autograd.gradcheck(square.apply, (x,), raise_exception=False)
    for seed in range(3):
        report = _checked(lambda: square.apply(x), {"x": x}, seed=seed)
        assert report.ok is False, seed
        assert report.failed["x"] == (entry,), seed


def test_one_wrong_entry_in_a_matrix_input_beside_a_right_one_is_named():
    w = torch.linspace(-1, 1, 40 * 30, dtype=torch.float64).reshape(40, 30).requires_grad_()
    x = torch.linspace(0.5, 2, 40 * 30, dtype=torch.float64).reshape(40, 30).requires_grad_()
    square = _one_entry(1.01, 40 * 30 - 5)
    for seed in range(3):
        report = _checked(lambda: torch.tanh(square.apply(x) * w), {"x": x, "w": w}, seed=seed)
        assert report.ok is False and "w" not in report.failed
        assert (39, 25) in report.failed["x"]  # entry 1195, row-major (mathematics)


@pytest.mark.parametrize("n", [100, 3000])
def test_right_backwards_over_many_entries_pass_with_every_entry_covered(n):
    x = torch.linspace(-2, 2, n, dtype=torch.float64, requires_grad=True)
    for build in (lambda: torch.tanh(RIGHT.apply(x)), lambda: torch.sin(1000 * x).sum(),
                  lambda: torch.softmax(x.reshape(-1, 10) * 3, -1)):
        report = _checked(build, {"x": x})
        assert report.ok is not False
        assert report.checked["x"] == 64 and report.covered["x"] == n - 64
    text = " ".join(_text(report).split())
    assert f"{n - 64:,} more in groups" in text


def test_the_groups_stop_at_the_time_limit(monkeypatch):
    monkeypatch.setattr(gradcheck_module, "PASSES", None)  # the user's time budget
    x = torch.linspace(0.5, 2, 5000, dtype=torch.float64, requires_grad=True)
    report = _checked(lambda: RIGHT.apply(x), {"x": x}, seconds=0.0)
    assert report.checked == {"x": 1} and report.covered["x"] == 0
    assert "stopped" in report.note


def test_groups_in_doubt_beyond_a_bound_are_left_and_said():
    # (x + 1e12) * 2 - 2e12: every difference is rounding noise (noise ≈ ε·1e12/h ≫ 1)
    x = torch.linspace(0.5, 2, 1000, dtype=torch.float64, requires_grad=True)
    report = _checked(lambda: (x + 1e12) * 2 - 2e12, {"x": x})
    assert report.ok is None and report.noisy["x"]
    assert report.covered["x"] < 1000 - 64 and "not checked" in report.note
