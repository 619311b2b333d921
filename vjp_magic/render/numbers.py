"""Numbers as a reader wants them: one format per matrix, the digits the dtype resolves, counts
with thousands separators.

A matrix is spelled in one of three formats, chosen from the entries it shows:

* fixed: every non-zero magnitude between 10⁻⁴ and 10⁵ (``0.0001839``, ``-0.4344``, ``2``), or
  down to 10⁻⁶ where the largest is at least 10⁻² (``0.0000513`` beside ``0.719``), or down to
  10⁻⁷ in an output whose other matrices are fixed (``render/matrix.py``'s plan);
* factored: outside that range but within four orders of magnitude of each other: a common power of
  ten comes out in front of the matrix (``10^{-5} ×`` then ``-5.43``, ``18.39``);
* scientific: magnitudes too far apart for one factor: every entry as ``m × 10^e``.

Digits are the requested precision capped by what the dtype resolves (float32: 6), so float32 noise
(``2.9999998``) never shows; a non-zero entry below the dtype's resolution relative to the
largest shown entry (a float32 ``1.5e-08`` beside ``1``: rounding noise, or a true value too
small to show beside it) reads ≈0, only an exact 0 reads ``0`` (``-0`` too); integral values
read ``2``.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch

from .document import Entry

FIXED_RANGE = (-4, 4)  # decimal exponents of magnitudes written without a factor: 1e-4 ≤ |v| < 1e5
FACTOR_SPAN = 3  # a common factor when the exponents of the entries differ by at most this much
# Positional too where the largest entry reads as a decimal (at least 10^-2) and the smallest
# needs at most 6 zeros (0.0000513 is narrower typeset than 5.13 × 10^{-5} beside 0.719).
DECIMAL_HIGH, DECIMAL_LOW = -2, -6
NEAR_ZERO = Entry(r"\approx 0", "≈0")  # not 0, but within the noise of the largest beside it
NOISE_ULPS = 4  # entries within this many ulps (of the largest shown entry) of 0 read ≈0


def significant_digits(dtype: torch.dtype, precision: int) -> int:
    """Digits worth showing: the requested precision, capped by what the dtype resolves."""
    if dtype.is_floating_point:
        resolvable = max(1, int(-math.log10(torch.finfo(dtype).resolution)))
        return max(1, min(precision, resolvable))
    return max(1, precision)


def resolution(dtype: torch.dtype) -> float:
    """The dtype's machine epsilon (0 for integer dtypes, whose values are exact)."""
    return torch.finfo(dtype).eps if dtype.is_floating_point else 0.0


def plural(n: int, word: str) -> str:
    """``1 point``, ``1,000,000 points``, ``2 entries``, ``3 passes``."""
    if n == 1:
        return f"{n:,} {word}"
    if word.endswith("y") and word[-2:-1] not in "aeiou":
        return f"{n:,} {word[:-1]}ies"
    return f"{n:,} {word}{'es' if word.endswith(('s', 'sh', 'ch', 'x')) else 's'}"


def _round(value: float, digits: int) -> float:
    return float(f"{value:.{digits}g}")


def _exponent(value: float) -> int:
    return math.floor(math.log10(abs(value)))


def _fixed(value: float, digits: int) -> str:
    """``value`` to ``digits`` significant digits, in positional notation, no trailing 0s
    (the rounded float's shortest spelling: ``0.3``, ``2``, ``0.00000015``; ``-0`` is ``0``)."""
    rounded = _round(value, digits)
    return "0" if rounded == 0 else np.format_float_positional(rounded, trim="-")


def _special(value: float) -> Entry | None:
    if math.isnan(value):
        return Entry(r"\mathrm{NaN}", "nan")
    if math.isinf(value):
        return Entry(r"\infty", "inf") if value > 0 else Entry(r"-\infty", "-inf")
    return None


@dataclass(frozen=True)
class NumberFormat:
    """One way to spell every entry of one matrix."""

    digits: int
    factor: int | None = None  # a power of ten taken out of every entry
    scientific: bool = False  # every entry as m × 10^e
    floor: float = 0.0  # magnitudes at or below this read 0 (the dtype's noise)

    def spell(self, value: float) -> Entry:
        special = _special(value)
        if special is not None:
            return special
        if value == 0:
            return Entry("0", "0")
        if abs(value) <= self.floor:  # not 0: within the dtype's noise of the largest shown
            return NEAR_ZERO
        if self.factor is not None:
            text = _fixed(_round(value, self.digits) / 10.0**self.factor, self.digits)
            return Entry(text, text)
        if not self.scientific:
            text = _fixed(value, self.digits)
            return Entry(text, text)
        mantissa, _, exponent = np.format_float_scientific(
            _round(value, self.digits), precision=self.digits - 1, trim="-").partition("e")
        exponent = int(exponent)
        plain = f"{mantissa}e{exponent:+03d}"  # e+00 too: one format for the whole matrix
        if exponent == 0:
            return Entry(mantissa, plain)
        if mantissa in ("1", "-1"):
            return Entry(f"{mantissa[:-1]}10^{{{exponent}}}", plain)
        return Entry(f"{mantissa} \\times 10^{{{exponent}}}", plain)


def noise_floor(largest, eps: float):
    """The magnitude at or below which an entry beside ``largest`` (a number or a tensor of
    them) is within the noise of a dtype of resolution ``eps``: read ≈0 (:data:`NEAR_ZERO`)."""
    return largest * eps * NOISE_ULPS


def choose_format(values: Iterable[float], digits: int, eps: float = 0.0,
                  fixed_low: int | None = None) -> NumberFormat:
    """The one format for a matrix showing ``values`` (only the shown entries are looked at).

    ``fixed_low``: the smallest decimal exponent positional notation may take when the largest
    entry is in its range (the matrix beside others in positional notation), instead of
    ``FIXED_RANGE[0]``."""
    finite = [v for v in values if math.isfinite(v)]
    floor = noise_floor(max((abs(v) for v in finite), default=0.0), eps)
    rounded = [_round(v, digits) for v in finite if abs(v) > floor]
    magnitudes = [abs(v) for v in rounded if v != 0]
    if not magnitudes:
        return NumberFormat(digits, floor=floor)
    low, high = _exponent(min(magnitudes)), _exponent(max(magnitudes))
    lowest = FIXED_RANGE[0] if fixed_low is None else min(FIXED_RANGE[0], fixed_low)
    if high >= DECIMAL_HIGH:
        lowest = min(lowest, DECIMAL_LOW)
    if lowest <= low and FIXED_RANGE[0] <= high <= FIXED_RANGE[1]:
        return NumberFormat(digits, floor=floor)
    if high - low <= FACTOR_SPAN:
        return NumberFormat(digits, factor=low, floor=floor)
    return NumberFormat(digits, scientific=True, floor=floor)


def number(value: float, dtype: torch.dtype = torch.float64, precision: int = 4) -> Entry:
    """One number on its own (a scalar result, a value in a sentence), spelled both ways."""
    return alone(choose_format([float(value)], significant_digits(dtype, precision))).spell(value)


def alone(fmt: NumberFormat) -> NumberFormat:
    """The format for a number with no matrix to put a factor in front of: scientific instead."""
    if fmt.factor is None:
        return fmt
    return NumberFormat(fmt.digits, scientific=True, floor=fmt.floor)
