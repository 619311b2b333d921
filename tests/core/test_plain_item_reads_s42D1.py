"""A gradient list's item read (``r.gradients['x'][k]``) enters no entry point where torch is
as a fresh session leaves it (``quiet.guarded_reads(plain=...)``), and still runs none of the
user's modes, default device or inference mode where one is on (it enters then).

Expected values: rows of the identity (mathematics: the k-th 0/1 gradient argument); whether
an entry point was entered is counted, never timed.
"""
from __future__ import annotations

import pytest
import torch

import vjp_magic
from mode_loggers import DispatchLog, FunctionLog
from vjp_magic.core import quiet


@pytest.fixture(scope="module")
def gradients():
    x = torch.linspace(-1.0, 1.0, 5, dtype=torch.float64, requires_grad=True)
    return vjp_magic.differentiate(torch.cumsum(torch.tanh(x), 0), x).gradients["x"]


@pytest.fixture
def entries(monkeypatch):
    """How many times a read entered ``quiet_autograd``."""
    counted = []
    entered = quiet.quiet_autograd

    def counting(*args, **kwargs):
        counted.append(1)
        return entered(*args, **kwargs)
    monkeypatch.setattr(quiet, "quiet_autograd", counting)
    return counted


def test_an_item_read_in_a_plain_session_enters_no_entry_point(gradients, entries):
    items = [gradients[k] for k in range(len(gradients))] + gradients[1:3] + [gradients[-1]]
    assert entries == []
    expected = torch.eye(5, dtype=torch.float64)
    for k, item in enumerate(items[:5]):
        assert torch.equal(item, expected[k])
    assert torch.equal(torch.stack(items[5:]), expected[[1, 2, 4]])


@pytest.mark.parametrize("mode", [FunctionLog, DispatchLog])
def test_an_item_read_under_the_users_mode_runs_none_of_it(gradients, entries, mode):
    log: list = []
    with mode(log):
        item = gradients[2]
    assert log == [] and entries, log[:5]
    assert torch.equal(item, torch.eye(5, dtype=torch.float64)[2])


def test_an_item_read_under_another_default_device_is_made_as_the_analysis_did(gradients):
    with torch.device("meta"):
        item = gradients[3]
    assert item.device.type == "cpu"
    assert torch.equal(item, torch.eye(5, dtype=torch.float64)[3])


def test_an_item_read_in_inference_mode_is_a_plain_tensor(gradients, entries):
    with torch.inference_mode():
        item = gradients[0]
    assert entries and not item.is_inference()
    assert torch.equal(item, torch.eye(5, dtype=torch.float64)[0])


def test_a_read_that_is_not_plain_still_enters(gradients, entries):
    repr(gradients)
    assert entries == [1]
