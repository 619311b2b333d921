"""s36 F5: run/refusals.refuse_data_writes refuses ``x.data = …`` after a recorded call read x
(autograd does not see it; the graph reads the new values), and nothing else: not another
attribute set (``x.grad = None``), not a ``.data`` write before any call read the tensor."""
from __future__ import annotations

import pytest
import torch

from vjp_magic.run.record import recording
from vjp_magic.run.refusals import NotReplayable, refuse_data_writes


def _recorded(body):
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    with recording() as record:
        body(x)
    return record


def _data_after_read(x):
    y = x ** 2
    x.data = x.data * 2
    return y


def _grad_set(x):
    y = (x ** 2).sum()
    y.backward()
    x.grad = None


def _data_before_read(x):
    x.data = x.data * 2
    return x ** 2


def test_a_data_write_after_a_read_is_refused_with_its_line():
    with pytest.raises(NotReplayable, match=r"x\.data = x\.data \* 2 \(line \d+\) swaps"):
        refuse_data_writes(_recorded(_data_after_read))
    out = {}
    record = _recorded(lambda x: out.setdefault("y", _data_after_read(x)))
    with pytest.raises(NotReplayable):
        refuse_data_writes(record, out["y"])  # y's graph read x before the write


def test_an_output_computed_after_the_write_is_not_refused():
    out = {}

    def step(x):  # an optimiser step through .data, then the output at the new values
        (x ** 2).sum().backward()
        x.data -= 0.1 * x.grad
        out["y"] = x ** 3

    record = _recorded(step)
    refuse_data_writes(record, out["y"])  # raises nothing: y's graph read only the new x


@pytest.mark.parametrize("body", [_grad_set, _data_before_read], ids=["grad-set", "data-first"])
def test_other_writes_are_not_refused(body):
    refuse_data_writes(_recorded(body))  # raises nothing


def test_the_cells_derivatives_are_said_to_be_at_the_new_values(run_vjp):
    r = run_vjp("x = torch.tensor([1., 2.], requires_grad=True)\ny = x ** 2\n"
                "x.data = x.data * 2\nz = y.sum()")
    assert r.derivatives["x"].tolist() == [4.0, 8.0]  # 2·x at the new x: the graph's saved x
    assert "x.data = x.data * 2 (line 3)" in " ".join(str(n) for n in r.notes)
