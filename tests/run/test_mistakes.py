"""Recognising the mistake that stopped the cell's own backward (``run/mistakes.py``:
:func:`classify`), one kind at a time."""
from __future__ import annotations

import pytest
import torch
from coached import CLASSIFIED, FLOAT_5, cell_error

from vjp_magic.core.torch_api import TorchError
from vjp_magic.run import mistakes
from vjp_magic.run.mistakes import MistakeKind

# -- recognising the mistake: one kind at a time -------------------------------------------------



@pytest.mark.parametrize("source, kind, line", CLASSIFIED)
def test_classify_names_each_kind_and_its_line(source, kind, line):
    log, error = cell_error(source, {"torch": torch})
    found = mistakes.classify(error, log, source)
    assert found is not None and found.kind is kind and found.line == line
    assert found.source_line(line) == source.splitlines()[line - 1]
    assert found.message().startswith("RuntimeError: ")
    assert found.freed_before_cell is False


def test_classify_leaves_other_errors_alone():
    source = FLOAT_5 + "z = x @ torch.ones(2)"
    log, error = cell_error(source, {"torch": torch})
    assert error is not None and mistakes.classify(error, log, source) is None
    log, error = cell_error(FLOAT_5 + "y.backward()", {"torch": torch})
    assert mistakes.classify(KeyError("y"), log, "") is None  # not a RuntimeError
    other = RuntimeError(str(error))  # the same text, but not raised by the cell's backward
    assert mistakes.classify(other, log, FLOAT_5 + "y.backward()") is None


def test_every_mistake_kind_is_one_of_pytorchs_errors():
    """... but a gradient given as a number or a list, which torch meets as a TypeError of
    Python's own words ('int' object is not iterable): the recorded call tells it."""
    for kind in MistakeKind:
        if kind is not MistakeKind.GRADIENT_TYPE:
            assert TorchError[kind.name] is not None


def test_a_graph_freed_by_an_earlier_cell_is_told_apart():
    x = torch.tensor([1., 2.], requires_grad=True)
    y = (x**2).sum()
    y.backward()
    log, error = cell_error("y.backward()", {"y": y})
    found = mistakes.classify(error, log, "y.backward()")
    assert found.kind is MistakeKind.SECOND_PASS and found.freed_before_cell
    assert found.freeing_line is None


def test_the_failing_output_of_a_list_is_the_non_scalar_one():
    source = ("x = torch.tensor([1., 2.], requires_grad=True)\ns = (x**2).sum()\nz = x * 3\n"
              "torch.autograd.backward([s, z])")
    log, error = cell_error(source, {"torch": torch})
    found = mistakes.classify(error, log, source)
    assert found.kind is MistakeKind.IMPLICIT_SCALAR and found.failing_index() == 1
    assert found.call_site().y == "z" and tuple(found.failing_tensor().shape) == (2,)
    assert found.given_gradient() is None
