"""Numbers (``render/numbers.py``): one format per matrix, the digits the dtype resolves,
each entry read back within its digits."""
from __future__ import annotations

import math
import re

import pytest
import torch
from layouts import OPTIONS, plain_entries

from vjp_magic.render.document import Entry
from vjp_magic.render.matrix import layout, tensor_block
from vjp_magic.render.numbers import (
    NumberFormat,
    choose_format,
    number,
    plural,
    resolution,
    significant_digits,
)
from vjp_magic.render.options import RenderOptions


# -- numbers ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "value, dtype, expected",
    [
        (2.0, torch.float32, Entry("2", "2")),  # integral values without a point
        (-0.0, torch.float32, Entry("0", "0")),  # -0 is 0
        (1.9999999, torch.float32, Entry("2", "2")),  # float32 noise hidden
        (0.30000001192092896, torch.float32, Entry("0.3", "0.3")),
        (-0.4344, torch.float64, Entry("-0.4344", "-0.4344")),
        (1 / 3, torch.float64, Entry("0.3333", "0.3333")),  # the precision, 4 digits
        (1.5e-7, torch.float64, Entry(r"1.5 \times 10^{-7}", "1.5e-07")),  # alone: no factor
        (1e6, torch.float64, Entry("10^{6}", "1e+06")),
        (float("nan"), torch.float32, Entry(r"\mathrm{NaN}", "nan")),
        (float("inf"), torch.float32, Entry(r"\infty", "inf")),
        (float("-inf"), torch.float32, Entry(r"-\infty", "-inf")),
    ],
)
def test_number(value, dtype, expected):
    assert number(value, dtype) == expected


def test_digits_capped_by_the_dtype():
    assert significant_digits(torch.float32, 10) == 6
    assert significant_digits(torch.float64, 10) == 10
    assert significant_digits(torch.float16, 10) == 3
    assert significant_digits(torch.float64, 4) == 4


def test_counts_have_thousands_separators():
    assert plural(1, "point") == "1 point" and plural(100_000, "point") == "100,000 points"


@pytest.mark.parametrize("digits", [1, 4, 6, 15])
def test_a_fixed_entry_is_the_rounded_value_spelled_shortest(digits):
    """Positional, no trailing zeros, and exactly the value rounded to ``digits`` significant
    digits (``np.format_float_positional`` of the rounded float)."""
    values = torch.randn(2000, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    for value in (values * 10.0 ** torch.randint(-4, 5, (2000,))).tolist() + [2.5, -0.0, 99999.5]:
        text = NumberFormat(digits).spell(value).plain
        assert re.fullmatch(r"-?\d+(\.\d*[1-9])?", text), text
        assert float(text) == float(f"{value:.{digits}g}")
        assert len(text.lstrip("-").replace(".", "").lstrip("0")) <= max(digits, len(
            str(int(abs(float(text))))))  # no more digits than asked (integral parts aside)


def test_one_format_per_matrix_factors_a_power_of_ten():
    """The issue's matrix: −5.43×10⁻⁵ beside 0.0001839 becomes 10⁻⁵ × [18.39, −5.43]."""
    fmt = choose_format([0.0001839, -5.43e-5], 4)
    assert fmt.factor == -5
    assert [fmt.spell(v).plain for v in (0.0001839, -5.43e-5)] == ["18.39", "-5.43"]
    fixed = choose_format([0.0001839, -0.4344, 2.0], 4)
    assert fixed.factor is None and not fixed.scientific
    assert [fixed.spell(v).plain for v in (0.0001839, -0.4344, 2.0)] == [
        "0.0001839", "-0.4344", "2"]
    wide = choose_format([1.0, 1e-12], 4)  # no one factor makes both short
    assert wide.scientific and [wide.spell(v).tex for v in (1.0, 1e-12)] == ["1", "10^{-12}"]


def test_float32_noise_beside_large_entries_reads_approximately_zero():
    """Below the dtype's resolution beside the largest: ≈0, never 0 (it may be a true value,
    as a single term 1.49e-8 is); only an exact 0 reads 0."""
    eps = resolution(torch.float32)
    fmt = choose_format([3.0000002, 1.49e-8, 0.0], significant_digits(torch.float32, 4), eps)
    assert fmt.spell(3.0000002).plain == "3" and fmt.spell(1.49e-8).plain == "≈0"
    assert fmt.spell(1.49e-8).tex == r"\approx 0" and fmt.spell(0.0).plain == "0"
    assert fmt.spell(-0.0).plain == "0"
    exact = choose_format([3.0, 1.49e-8], 4, resolution(torch.float64))  # float64 resolves it
    assert exact.spell(1.49e-8).plain != "0"


@pytest.mark.parametrize("scale", [1e-9, 1e-5, 1e-3, 1.0, 1e3, 1e7])
@pytest.mark.parametrize("spread", [1.0, 30.0, 1e6])
def test_every_entry_reads_back_within_its_digits(scale, spread):
    """Whatever the format, an entry read back (times the factor) is the value to 4 digits."""
    gen = torch.Generator().manual_seed(0)
    t = (torch.rand(6, 6, generator=gen, dtype=torch.float64) - 0.5) * scale
    t[0, 0] = scale * spread
    m = layout(tensor_block(t), RenderOptions(width=200), torch.float64)  # every entry shown
    assert not any("e" in s for s in plain_entries(m)) or m.factor is None  # one format
    for i, row in enumerate(m.rows):
        for j, e in enumerate(row):
            value, shown = t[i, j].item(), float(e.plain) * 10.0 ** (m.factor or 0)
            assert math.isclose(shown, value, rel_tol=1e-3, abs_tol=1e-15), (e, value)


def test_matrix_never_mixes_formats():
    t = torch.tensor([[0.0001839, -5.43e-5], [1.2e-4, 3e-5]], dtype=torch.float64)
    m = layout(tensor_block(t), OPTIONS, torch.float64)
    assert m.factor == -5 and plain_entries(m) == ["18.39", "-5.43", "12", "3"]


def test_negative_zero_and_integral_entries():
    m = layout(tensor_block(torch.tensor([[-0.0, 2.0], [-4.0, 6.0]])), OPTIONS, torch.float32)
    assert plain_entries(m) == ["0", "2", "-4", "6"]
