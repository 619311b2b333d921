"""--gradcheck decides at kinks and rounding stairs by the finite differences, not by who wrote
the function (s42 G1). A right custom autograd.Function backward at a tie or kink (max, maximum,
relu, abs, sort, clamp, a piecewise function at its breakpoint) is inconclusive, with the
one-sided derivatives of a scalar output, not FAILED; a wrong one (wrong away from the kink too,
ignoring grad_output, with a detached term, 1 % off) still fails. A forward that changes in
rounding stairs coarser than the step (``((x + 1e12) - 1e12) * 2 + x``) is inconclusive for a
right backward, while a backward wrong at every scale fails. Complex inputs or outputs, integer
outputs and a backward of the wrong shape get a short note. Expected verdicts come from the
functions' true derivatives (stated per case)."""
from __future__ import annotations

import pytest
import torch

from vjp_magic.render import plain
from vjp_magic.render.document import Document
from vjp_magic.render.gradcheck import gradcheck_sections
from vjp_magic.run.gradcheck import gradcheck
from vjp_magic.run.record import recording

D = torch.float64


def _function(forward, backward):
    class Custom(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return forward(x)

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return backward(x, g)

    return Custom


class Maximum(torch.autograd.Function):
    """torch.maximum(a, b); at a tie the whole gradient goes to a (a piece's slope)."""

    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return torch.maximum(a, b)

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        first = (a >= b).to(g.dtype)
        return g * first, g * (1 - first)


class MaximumToBoth(Maximum):
    """Wrong everywhere, not only at ties: the gradient goes to both a and b."""

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        first = (a >= b).to(g.dtype)
        return g * first, g * first


def _checked(build, x, seed: int = 0):
    x = x.detach().requires_grad_(True)
    with recording() as rec:
        y = build(x)
    return gradcheck(rec, {"x": x}, y, ["x"], seed=seed, passes=10 ** 6)


def _text(report) -> str:
    return " ".join(plain.render(Document(tuple(gradcheck_sections(report, None)))).split())


def _first_argmax(x, g):  # d max / dx at ties: the first tied entry's piece
    out = torch.zeros_like(x)
    out.view(-1)[x.argmax()] = 1.0
    return out * g


def _tied_share(x, g):  # d max / dx at ties: shared equally (torch's own choice)
    tied = (x == x.max()).to(x.dtype)
    return tied / tied.sum() * g


def _sort_backward(x, g):
    out = torch.zeros_like(x)
    out[torch.sort(x).indices] = g
    return out


def _piecewise(x):  # x² below 1, 5x − 4 from 1 on: at 1 the left slope is 2, the right 5
    return torch.where(x < 1, x * x, 5 * x - 4)


def _piecewise_slope(x, g):
    return g * torch.where(x < 1, 2 * x, torch.full_like(x, 5.0))


def _w(n: int) -> torch.Tensor:
    return torch.arange(1.0, n + 1, dtype=D)


RIGHT_AT_KINKS = {
    "max, ties to the first": (lambda x: _function(torch.max, _first_argmax).apply(x) * 3,
                               torch.ones(4, dtype=D)),
    "max, ties shared": (lambda x: _function(torch.max, _tied_share).apply(x) * 3,
                         torch.ones(4, dtype=D)),
    "maximum with its flip": (lambda x: Maximum.apply(x, x.flip(0)) * _w(6),
                              torch.ones(6, dtype=D)),
    "relu at 0": (lambda x: _function(torch.relu, lambda x, g: g * (x > 0).to(x.dtype))
                  .apply(x) * _w(5), torch.tensor([-1.0, 0, 0, 1, 2], dtype=D)),
    "abs at 0": (lambda x: _function(torch.abs, lambda x, g: g * x.sign()).apply(x).sum(),
                 torch.tensor([-1.0, 0, 1], dtype=D)),
    "sort of ties": (lambda x: _function(lambda x: torch.sort(x).values, _sort_backward)
                     .apply(x) * _w(4), torch.tensor([1.0, 1, 2, 2], dtype=D)),
    "clamp at its bounds": (lambda x: _function(
        lambda x: x.clamp(-1, 1), lambda x, g: g * (x.abs() <= 1).to(x.dtype)).apply(x)
        * _w(4), torch.tensor([-1.0, 1, 0.5, 1], dtype=D)),
    "piecewise at its breakpoint": (lambda x: _function(_piecewise, _piecewise_slope)
                                    .apply(x) * _w(3), torch.tensor([1.0, 0.5, 2], dtype=D)),
}


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("name", list(RIGHT_AT_KINKS))
def test_a_right_custom_backward_at_a_kink_is_inconclusive_not_failed(name, seed):
    build, x = RIGHT_AT_KINKS[name]
    report = _checked(build, x, seed)
    assert report.ok is None and not report.failed, (report.failed, report.max_error)
    assert report.inconclusive["x"], report


def test_a_scalar_outputs_kink_is_told_with_its_one_sided_derivatives():
    """At 1, x² on the left has slope 2, 5x − 4 on the right slope 5."""
    report = _checked(lambda x: _function(_piecewise, _piecewise_slope).apply(x).sum(),
                      torch.tensor([1.0, 0.5, 2], dtype=D))
    assert report.ok is None and report.inconclusive == {"x": (0,)}
    assert "one-sided derivatives are 5 (right) and 2 (left)" in _text(report)
    assert "check at another x" in _text(report)


WRONG_AT_KINKS = {
    "max: 2 for every entry (wrong away from ties)": (
        lambda x: _function(torch.max, lambda x, g: 2 * _first_argmax(x, g)).apply(x) * 3,
        torch.ones(4, dtype=D)),
    "maximum: the gradient to both": (lambda x: MaximumToBoth.apply(x, x.flip(0)) * _w(6),
                                      torch.ones(6, dtype=D)),
    "relu 1 % off": (lambda x: _function(torch.relu, lambda x, g: 1.01 * g * (x > 0)
                                         .to(x.dtype)).apply(x) * _w(5),
                     torch.tensor([-1.0, 0, 0, 1, 2], dtype=D)),
    "relu ignoring grad_output": (lambda x: _function(torch.relu, lambda x, g: (x > 0)
                                                      .to(x.dtype)).apply(x) * _w(5),
                                  torch.tensor([-1.0, 0, 0, 1, 2], dtype=D)),
    "x·|x| with |x| detached (slope |x|, not 2|x|)": (
        lambda x: _function(lambda x: x.abs() * x, lambda x, g: g * x.abs()).apply(x).sum(),
        torch.tensor([-1.0, 0, 1.5], dtype=D)),
    "piecewise 1 % off": (lambda x: _function(_piecewise, lambda x, g: 1.01 * _piecewise_slope(
        x, g)).apply(x) * _w(3), torch.tensor([1.0, 0.5, 2], dtype=D)),
}


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("name", list(WRONG_AT_KINKS))
def test_a_wrong_custom_backward_at_a_kink_still_fails(name, seed):
    build, x = WRONG_AT_KINKS[name]
    assert _checked(build, x, seed).ok is False


def test_all_entries_at_ties_a_backward_wrong_only_away_from_them_fails():
    """Every entry of x is tied: max's slopes along e_k are 1 and 0 there, and the backward's
    1 (to both of maximum's arguments) lies between them; a little away from the ties it gives
    1 where the true derivative is 0."""
    for seed in range(3):
        report = _checked(lambda x: MaximumToBoth.apply(x, x.roll(1)) * _w(6),
                          torch.tensor([1.0, 1, 2, 2, 3, 3], dtype=D), seed)
        assert report.ok is False, seed


STAIRS = {  # d/dx of ((x + c) - c)·a + g(x) is a + g'(x), resolved only at steps past ulp(c)
    "x + 1e12 - 1e12, times 2, plus x": (lambda x: ((x + 1e12) - 1e12) * 2 + x,
                                         torch.linspace(1, 2, 4, dtype=D)),
    "the same, summed": (lambda x: (((x + 1e12) - 1e12) * 2 + x).sum(),
                         torch.linspace(1, 2, 4, dtype=D)),
    "x + 1e10 - 1e10, times 3, plus sin x": (lambda x: ((x + 1e10) - 1e10) * 3 + torch.sin(x),
                                             torch.linspace(-1, 1, 5, dtype=D)),
    "in a custom Function, backward 3": (lambda x: _function(
        lambda x: ((x + 1e12) - 1e12) * 2 + x, lambda x, g: 3 * g).apply(x) * _w(4),
        torch.linspace(1, 2, 4, dtype=D)),
}


@pytest.mark.parametrize("name", list(STAIRS))
def test_a_right_backward_on_rounding_stairs_is_inconclusive_not_failed(name):
    build, x = STAIRS[name]
    report = _checked(build, x)
    assert report.ok is None and not report.failed, (report.failed, report.max_error)
    assert report.unresolved.get("x"), report
    assert "changes in rounding steps of ~" in _text(report)


@pytest.mark.parametrize("slope", [5.0, 1.5])
def test_a_backward_wrong_at_every_scale_on_rounding_stairs_fails(slope):
    """The true derivative is 3 (seen across the stairs); 5 and 1.5 are not, nor are they
    the stairs' local slope 1."""
    report = _checked(lambda x: _function(lambda x: ((x + 1e12) - 1e12) * 2 + x,
                                          lambda x, g: slope * g).apply(x) * _w(4),
                      torch.linspace(1, 2, 4, dtype=D))
    assert report.ok is False


@pytest.mark.parametrize("build, x", [
    (lambda x: _function(lambda x: x ** 3, lambda x, g: 3.03 * g * x * x).apply(x),
     torch.linspace(1, 2, 4, dtype=D)),
    (lambda x: _function(lambda x: torch.sin(50 * x), lambda x, g: 50.5 * g * torch.cos(
        50 * x)).apply(x) * _w(4), torch.linspace(0.1, 0.2, 4, dtype=D)),
])
def test_a_smooth_forward_with_a_backward_one_percent_off_fails(build, x):
    """The quotients at every step agree with each other (truncation only), not with it."""
    assert _checked(build, x).ok is False


UNSUPPORTED = {
    "complex input": (lambda x: (x * x).abs(),
                      torch.tensor([1 + 1j, 2 - 1j], dtype=torch.complex128), "complex"),
    "complex output": (lambda x: x * (1 + 2j), torch.linspace(1, 2, 4, dtype=D), "complex"),
    "integer output": (lambda x: (x * 3).floor().long(), torch.linspace(1, 2, 4, dtype=D),
                       "no derivative"),
}


@pytest.mark.parametrize("name", list(UNSUPPORTED))
def test_unsupported_dtypes_are_told_plainly(name):
    build, x, said = UNSUPPORTED[name]
    report = _checked(build, x)
    assert report.ok is None and said in report.note and "overflow" not in report.note


def test_a_backward_of_the_wrong_shape_is_a_short_note():
    report = _checked(lambda x: _function(lambda x: 2 * x, lambda x, g: (2 * g).sum())
                      .apply(x) * _w(4), torch.linspace(1, 2, 4, dtype=D))
    assert report.ok is None and "A custom backward is wrong" in report.note
    assert "shaped like that input" in report.note


def test_the_magic_tells_a_backward_of_the_wrong_shape_in_one_line(ip):
    """The cell's own derivatives meet the mistake first: a usage error, no traceback."""
    ip.run_cell("class Summed(torch.autograd.Function):\n"
                "    @staticmethod\n"
                "    def forward(ctx, x):\n"
                "        return 2 * x\n"
                "    @staticmethod\n"
                "    def backward(ctx, g):\n"
                "        return (2 * g).sum()\n")
    result = ip.run_cell("%%vjp --gradcheck\nx = torch.linspace(1, 2, 4, dtype=torch.float64,"
                         " requires_grad=True)\ny = Summed.apply(x) * torch.arange(4.)")
    error = result.error_in_exec
    assert type(error).__name__ == "UsageError", type(error)  # IPython's: one line
    assert "A custom backward is wrong" in str(error) and "shape" in str(error)


# -- a user's backward wrong at a smooth x, right a little away (read-back V1-2) --------------

WRONG_AT_ONE = '''
class Cube(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x): ctx.save_for_backward(x); return x ** 3
    @staticmethod
    def backward(ctx, g):
        x, = ctx.saved_tensors
        return g * torch.where(x == 1.0, torch.zeros_like(x), 3 * x ** 2)  # wrong at x = 1
x = torch.tensor([0.5, 1.0, 2.0], requires_grad=True)
'''


@pytest.mark.parametrize("cell", ["y = Cube.apply(x).sum()", "y = Cube.apply(x) * 2"])
def test_a_custom_backward_wrong_only_at_a_smooth_x_fails_there(ip, run_ok, cell):
    run_ok("import torch\n" + WRONG_AT_ONE)
    report = run_ok(f"%%vjp --gradcheck\n{cell}").gradcheck
    assert report.ok is False, report  # x³ is smooth at 1: d/dx = 3, the backward says 0
    assert 1 in report.failed["x"]
