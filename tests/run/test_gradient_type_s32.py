"""A number or a list given as backward's gradient is a coached mistake (s32, G7): recognised
from the recorded call, advised with a tensor (torch.ones_like(y)). execute.run_cell passes
a TypeError to classify once P3 lets it (see the U4 report); here the log is driven directly."""
from __future__ import annotations

import pytest
import torch

import vjp_magic
from vjp_magic.run.backward_log import BackwardLog
from vjp_magic.run.mistakes import MistakeKind, classify
from vjp_magic.teach import coaching


def _failed(gradient):
    x = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    y = x**2
    try:
        y.backward(gradient=gradient)
    except TypeError as error:
        return x, y, error
    raise AssertionError("torch accepted it")


@pytest.mark.parametrize("gradient", [1, [1.0, 1.0, 1.0], 1.0])
def test_a_number_or_list_gradient_is_recognised_and_advised(gradient):
    x, y, error = _failed(gradient)
    log = BackwardLog()
    log.record_failure(error)
    mistake = classify(error, log, "y.backward(gradient=...)")
    assert mistake is not None and mistake.kind is MistakeKind.GRADIENT_TYPE
    result = vjp_magic.differentiate(y, x, output_name="y")
    advice = coaching._ADVICE[mistake.kind](mistake, result)
    text = " ".join(str(p) for p in advice.why) + " ".join(advice.fixed)
    assert "torch.ones_like(y)" in text and type(gradient).__name__ in text, text


def test_a_type_error_of_the_users_own_is_not_coached():
    log = BackwardLog()
    error = TypeError("'int' object is not iterable")
    assert classify(error, log, "") is None
