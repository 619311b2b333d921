"""--gradcheck (s31 GC): entries left unchecked never let a check pass; a float32-only
wrong custom backward is excused by a branch only where float32 takes another branch than
float64. Expected derivatives from mathematics (d(x²)/dx = 2x)."""
from __future__ import annotations

import pytest
import torch

from vjp_magic.render import plain
from vjp_magic.render.document import Document
from vjp_magic.render.gradcheck import gradcheck_sections
from vjp_magic.run.gradcheck import gradcheck
from vjp_magic.run.record import recording


def _square(factor32: float = 1.0, bad=None):
    class Square(torch.autograd.Function):
        """x ↦ x², backward 2·x·g: ``factor32`` times that in float32, 50 % off at ``bad``."""

        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x * x

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            d = 2 * g * x * (factor32 if x.dtype == torch.float32 else 1.0)
            if bad is not None:
                d = d.clone()
                d[bad] = d[bad] * 1.5
            return d

    return Square


def _text(report) -> str:
    return " ".join(plain.render(Document(tuple(gradcheck_sections(report, None)))).split())


def _checked(x, tail, square):
    with recording() as rec:
        y = tail(x, square.apply(x))
    return gradcheck(rec, {"x": x}, y, ["x"], seed=0)


@pytest.mark.parametrize("bad", [None, 7, 4321])
def test_entries_left_unchecked_make_the_check_inconclusive_and_say_what_to_do(bad):
    # y = x² + 1e5: every group in doubt (offset rounding), past MAX_SINGLES the rest is left
    x = torch.linspace(0.5, 2, 5000, dtype=torch.float64, requires_grad=True)
    report = _checked(x, lambda x, y: y + 1e5, _square(bad=bad))
    assert report.ok is None and report.unchecked["x"] > 0
    text = _text(report)
    assert "passed" not in text and "inconclusive" in text
    assert f"{report.unchecked['x']:,} entries were not checked" in text
    assert "smaller input" in text and "cannot pass" in text


def test_a_failure_found_beside_unchecked_entries_is_failed():
    x = torch.linspace(0.5, 2, 5000, dtype=torch.float64, requires_grad=True)
    wrong = torch.arange(5000)  # every entry 50 % off: the sample fails first
    assert _checked(x, lambda x, y: y + 1e5, _square(bad=wrong)).ok is False


def test_groups_in_doubt_within_the_bound_still_pass():
    # 200 entries: 136 beyond the sample, all checked singly (under MAX_SINGLES): passed
    x = torch.linspace(0.5, 2, 200, dtype=torch.float64, requires_grad=True)
    report = _checked(x, lambda x, y: y + 1e5, _square())
    assert report.ok is True and not report.unchecked


FAR = {
    "relu_ in place": lambda x, y: (y + 10.0).relu_(),
    "max(y, -10)": lambda x, y: torch.maximum(y, torch.full_like(y, -10.0)),
    "sort": lambda x, y: torch.sort(y * torch.arange(1.0, 7.0)).values,
}


@pytest.mark.parametrize("case", list(FAR))
def test_a_float32_only_wrong_backward_fails_where_float32_branches_alike(case):
    x = torch.linspace(0.5, 2, 6, requires_grad=True)
    report = _checked(x, FAR[case], _square(1.05))
    assert report.ok is False and report.cell_failed == ("x",)


def test_a_branch_float32_takes_otherwise_still_excuses_the_difference():
    # x0 = 1 + 2⁻¹²: x0² = 1 + 2⁻¹¹ + 2⁻²⁴ rounds to 1 + 2⁻¹¹ in float32; c between them
    # (c rounds to 1 + 2⁻¹¹ in float32): relu(x² − c) is 0 there in float32, > 0 in float64
    x0 = 1 + 2.0 ** -12
    c = 1 + 2.0 ** -11 + 2.0 ** -25
    assert float(torch.tensor(x0) ** 2 - c) == 0.0 and x0 * x0 - c > 0  # as claimed
    x = torch.tensor([0.7, x0, 1.5], requires_grad=True)
    report = _checked(x, lambda x, y: torch.relu(y - c), _square(1.05))
    assert report.ok is None and report.cell_failed == ()
    assert "takes another branch there" in report.note
