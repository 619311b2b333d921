"""Adversary s31b: --gradcheck's groups beyond the sample and the limit of 256 entries of
groups in doubt checked singly (MAX_SINGLES). A wrong backward must never be 'passed' (ok
True); a right one never 'failed'. Expected derivatives from mathematics (d(x²)/dx = 2x)."""
from __future__ import annotations

import pytest
import torch

from vjp_magic.render import plain
from vjp_magic.render.document import Document
from vjp_magic.render.gradcheck import gradcheck_sections
from vjp_magic.run.gradcheck import gradcheck
from vjp_magic.run.record import recording

N = 5000


def _square(bad):
    class Square(torch.autograd.Function):
        """x ↦ x², backward 2·x·g, 50 % off at entry ``bad`` (None: right)."""

        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x * x

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            d = 2 * g * x
            if bad is not None:
                d = d.clone()
                d[bad] = d[bad] * 1.5
            return d

    return Square


def _checked(offset: float, bad):
    x = torch.linspace(0.5, 2, N, dtype=torch.float64, requires_grad=True)
    with recording() as rec:
        y = _square(bad).apply(x) + offset
    return gradcheck(rec, {"x": x}, y, ["x"], seed=0)


@pytest.mark.parametrize("offset", [0.0, 1e3, 1e5])
def test_a_right_backward_is_never_failed(offset):
    assert _checked(offset, None).ok is not False


@pytest.mark.parametrize("bad", [-1, N // 2])
def test_a_wrong_entry_beyond_the_sample_fails_where_groups_are_clear(bad):
    """Guard: y = x² + 1e3, one entry 50 % off among 5,000: found and failed."""
    assert _checked(1e3, bad).ok is False


@pytest.mark.parametrize("bad", [-1, N // 2])
def test_a_wrong_entry_left_unchecked_is_never_passed(bad):
    report = _checked(1e5, bad)
    assert report.ok is not True, " ".join(plain.render(Document(tuple(
        gradcheck_sections(report, None)))).split())


def _float32_only(factor: float):
    class Square32(torch.autograd.Function):
        """x ↦ x², backward right in float64, ``factor`` times too large in float32."""

        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x * x

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return 2 * g * x * (factor if x.dtype == torch.float32 else 1.0)

    return Square32


FAR = {  # a branch whose input is >= 10 from its kink at every entry: float32 cannot flip it
    "relu(y + 10)": lambda x, y: torch.relu(y + 10.0),
    "y.clamp(min=-10)": lambda x, y: y.clamp(min=-10.0),
    "where(x > -10, y, 0)": lambda x, y: torch.where(x > -10, y, 0 * y),
    "(y + 10).abs()": lambda x, y: (y + 10).abs(),
}


def _checked32(tail):
    x = torch.linspace(0.5, 2, 6, requires_grad=True)  # float32: the cell's dtype
    with recording() as rec:
        y = tail(x, _float32_only(1.05).apply(x))
    return gradcheck(rec, {"x": x}, y, ["x"], seed=0)


def test_a_float32_only_wrong_backward_fails_without_a_branch():
    """Guard: 5 % off in float32 only, no branch in the cell: failed."""
    assert _checked32(lambda x, y: y * 3.0).ok is False


@pytest.mark.parametrize("case", list(FAR))
def test_a_float32_only_wrong_backward_fails_beside_a_far_branch(case):
    assert _checked32(FAR[case]).ok is False
