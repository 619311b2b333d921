"""Checks around the analysis: empty tensors refused clearly, NaN/inf derivatives flagged.

``differentiate`` calls :func:`refuse_empty` before any backward and :func:`annotate` on
its result (notes for non-finite derivatives).
"""
from __future__ import annotations

import math

import torch

from .errors import VJPUsageError


def refuse_empty(output: torch.Tensor, inputs: dict, output_name: str) -> None:
    """A tensor with no entries has no derivatives to show: say so instead of failing."""
    for name, tensor in [(output_name, output), *inputs.items()]:
        if tensor.numel() == 0:
            role = "The output" if tensor is output else "The input"
            raise VJPUsageError(
                f"{role} {name} is empty (shape {tuple(tensor.shape)}): it has no entries, so "
                "there are no derivatives to show. Give it at least one entry."
            )


def _entries(count: int, kind: str) -> str:
    """``1 NaN entry``, ``2 NaN entries``; empty for none."""
    if not count:
        return ""
    return f"{count:,} {kind} {'entry' if count == 1 else 'entries'}"


def nonfinite_notes(result) -> list[str]:
    """One sentence per input whose derivatives contain NaN or ±inf."""
    notes = []
    for name, item in result.inputs.items():
        d = item.derivatives
        finite = torch.isfinite(d)
        if bool(finite.all()):
            continue
        nan = int(torch.isnan(d).sum())
        inf = d.numel() - int(finite.sum()) - nan
        parts = [_entries(nan, "NaN"), _entries(inf, "infinite")]
        what = " and ".join(p for p in parts if p)
        notes.append(
            f"The derivatives with respect to {name} have {what}: the function is not "
            "differentiable there, or the computation divided by zero or overflowed (e.g. "
            "sqrt or log at 0, log of a negative number)."
        )
    return notes


def zero_notes(result) -> list[str]:
    """A warning per input the output depends on whose derivatives are all exactly 0 here."""
    notes = []
    for name, item in result.inputs.items():
        d = item.derivatives
        if item.unused or d.numel() == 0 or bool(d.any()) or bool(d.isnan().any()):
            continue
        notes.append(
            f"Every derivative of {result.output_name} with respect to {name} is 0 at this "
            f"{name}, although {result.output_name} depends on {name} through the graph (an "
            "inactive relu or clamp, a product with 0, ...): at another value of "
            f"{name} they may not be."
        )
    return notes


def unverified_notes(result) -> list[str]:
    """A sentence per custom ``autograd.Function`` whose backward the derivatives rely on."""
    names = list(dict.fromkeys(n for item in result.inputs.values() for n in item.unverified))
    if not names:
        return []
    which = ", ".join(names)
    return [
        f"The graph of {result.output_name} contains {which}, a custom autograd.Function: "
        "these derivatives are what its backward computes, and vjp_magic cannot verify it "
        "(check it with torch.autograd.gradcheck); the structure through it is only "
        "observed at this input."
    ]


def _ordinary(derivatives: torch.Tensor) -> bool:
    """One pass: a finite, non-zero sum means every entry is finite and not all are 0."""
    if derivatives.numel() == 0:
        return True
    total = float(derivatives.sum())
    return math.isfinite(total) and total != 0.0


def annotate(result) -> None:
    """Fill what every result carries beyond the numbers: notes on non-finite and all-zero
    derivatives and on backward functions nobody verified (``r.code`` is made on first use)."""
    if not all(_ordinary(item.derivatives) for item in result.inputs.values()):
        result.notes.extend(nonfinite_notes(result) + zero_notes(result))
    result.notes.extend(unverified_notes(result))
