"""Adversary s31b: run/execute.py keeps a cell's transformed text and compiled code by its text
and the shell state; a changed state must never give a stale run. Expected numbers from
mathematics (d(k·x²)/dx = 2k·x)."""
from __future__ import annotations

import pytest
import torch

SETTING = {"k": 2}


def _scale(lines):
    """A cleanup transform whose output depends on state outside the text (as a notebook's
    own macros do): SCALE becomes the current setting."""
    return [line.replace("SCALE", str(SETTING["k"])) for line in lines]


CELL = "%%vjp\nx = torch.linspace(1, 2, 4, dtype=torch.float64, requires_grad=True)\n" \
       "y = SCALE * x ** 2\n"


def _expected(k):
    return 2 * k * torch.linspace(1, 2, 4, dtype=torch.float64)


@pytest.fixture
def scaled(ip):
    manager = ip.input_transformer_manager
    manager.cleanup_transforms.append(_scale)
    SETTING["k"] = 2
    yield
    manager.cleanup_transforms.remove(_scale)


def test_a_transformer_registered_later_is_used(ip, run_ok):
    run_ok("import torch")
    run_ok("%%vjp\nx = torch.linspace(1, 2, 4, dtype=torch.float64, requires_grad=True)\n"
           "y = 3 * x ** 2\n")
    ip.input_transformer_manager.cleanup_transforms.append(_scale)
    try:
        SETTING["k"] = 5
        r = run_ok(CELL)
        torch.testing.assert_close(r.derivatives["x"], _expected(5))
    finally:
        ip.input_transformer_manager.cleanup_transforms.remove(_scale)


def test_a_transformer_reading_state_is_not_cached(ip, run_ok, scaled):
    run_ok("import torch")
    torch.testing.assert_close(run_ok(CELL).derivatives["x"], _expected(2))
    SETTING["k"] = 7
    torch.testing.assert_close(run_ok(CELL).derivatives["x"], _expected(7))


def test_a_changed_namespace_is_read_again(ip, run_ok):
    run_ok("import torch\nk = 2")
    cell = "%%vjp\nx = torch.linspace(1, 2, 4, dtype=torch.float64, requires_grad=True)\n" \
           "y = k * x ** 2\n"
    torch.testing.assert_close(run_ok(cell).derivatives["x"], _expected(2))
    run_ok("k = 9")
    torch.testing.assert_close(run_ok(cell).derivatives["x"], _expected(9))


def test_future_annotations_in_one_cell_do_as_a_plain_cell_does(ip, run_ok):
    """IPython keeps a __future__ import's flag for later cells: the cached %%vjp cell must
    follow it as a plain run of the same body does (the oracle: the plain cell's k)."""
    run_ok("import torch")
    body = ("x = torch.linspace(1, 2, 4, dtype=torch.float64, requires_grad=True)\n"
            "def f(t: torch.Tensor) -> 'unused':\n    return 3 * t ** 2\n"
            "k = f.__annotations__['t']\ny = f(x) if k is torch.Tensor else 0 * x\n")
    torch.testing.assert_close(run_ok("%%vjp\n" + body).derivatives["x"], _expected(3))
    run_ok("from __future__ import annotations\nz = 1")
    ip.run_cell(body)
    plain = 3 if ip.user_ns["k"] is torch.Tensor else 0
    torch.testing.assert_close(run_ok("%%vjp\n" + body).derivatives["x"], _expected(plain))


def _count_line(lines):
    """A cleanup transform that is not idempotent: it adds a line counting the cell's runs."""
    return lines + ["RUNS.append(1)\n"]


def test_a_cell_runs_its_transformed_text_once_as_a_plain_cell_does(ip, run_ok):
    run_ok("import torch\nRUNS = []")
    body = "x = torch.linspace(1, 2, 4, dtype=torch.float64, requires_grad=True)\ny = x ** 2\n"
    manager = ip.input_transformer_manager
    manager.cleanup_transforms.append(_count_line)
    try:
        ip.run_cell(body)
        plain = len(ip.user_ns["RUNS"])
        ip.user_ns["RUNS"].clear()
        run_ok("%%vjp\n" + body)
        assert len(ip.user_ns["RUNS"]) == plain == 1
    finally:
        manager.cleanup_transforms.remove(_count_line)
