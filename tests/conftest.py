"""Shared fixtures: a real IPython InteractiveShell with the extension loaded, and the helpers
every test file uses to run a cell through it. The tutorial's cells are in ``cells.py``.

Fixtures (request them by name; nothing here is meant to be imported):

- ``ip``: a clean namespace with ``torch`` imported and ``%load_ext vjp_magic`` done;
- ``run_ok(source)``: run a cell, fail the test on any error, return the cell's value;
- ``run_vjp(body, line="")``: run ``body`` under ``%%vjp line``, return the result;
- ``usage_error(source)``: run a cell that must stop with a ``UsageError``, return its text;
- ``assert_tensor(actual, expected, **kw)``: same shape, close values (``expected`` may be
  nested lists; it is given ``actual``'s dtype);
- ``earlier_grad``: a tensor ``keep`` with a ``.grad`` from an earlier cell, checked
  unchanged after the test (no bad input may touch it);
- ``strategy``: both strategies of the analysis, as keywords of ``differentiate``: ``{}``
  (small problems are judged on their exact Jacobian) and ``{"exact_up_to": 0}`` (every
  problem judged per pairing, by the random vᵀJ probes).

Tests marked ``slow`` run only when the ``-m`` expression names the marker (``pytest -m slow``
runs them alone, ``pytest -m "slow or not slow"`` everything), as ``fuzz``'s long budget
does: ``pytest`` alone, and ``-m "not browser"``, leave them out.
"""
from __future__ import annotations

import gc

import pytest
import torch
from IPython.core.error import UsageError
from IPython.testing.globalipapp import start_ipython


def pytest_collection_modifyitems(config, items):
    """Leave out the tests marked ``slow`` unless the ``-m`` expression names ``slow``."""
    if "slow" in (config.getoption("markexpr") or ""):
        return
    slow = [item for item in items if item.get_closest_marker("slow")]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if not item.get_closest_marker("slow")]


GRADCHECK_PASSES = 2000  # --gradcheck's checks in a test at most (the most any uses: 337)


@pytest.fixture(autouse=True)
def _counted_gradcheck(monkeypatch):
    """--gradcheck samples up to a count (run.gradcheck.PASSES), not the user's 10 s: a
    loaded machine gives the same verdicts as an idle one (tests of the time budget set
    PASSES to None)."""
    from vjp_magic.run import gradcheck

    monkeypatch.setattr(gradcheck, "PASSES", GRADCHECK_PASSES)


@pytest.fixture(scope="session")
def _shell():
    return start_ipython()


@pytest.fixture
def ip(_shell):
    """A clean namespace with ``torch`` imported and ``%load_ext vjp_magic`` done."""
    # IPython's reset ends in a full gc.collect() over every object alive (torch, SymPy, each
    # collected test): a third of a second per test. Frozen, those objects are out of its
    # sight; unfrozen after, the previous test's cycles are left to the automatic collector.
    gc.freeze()
    try:
        _shell.reset(new_session=False)
    finally:
        gc.unfreeze()
    _shell.run_line_magic("load_ext", "vjp_magic")
    _shell.run_cell("import torch")
    yield _shell
    _shell.run_line_magic("unload_ext", "vjp_magic")


def _run_ok(ip, source: str):
    result = ip.run_cell(source)
    if not result.success:
        raise AssertionError(f"cell failed: {result.error_before_exec or result.error_in_exec!r}")
    return result.result


def _run_vjp(ip, body: str, line: str = ""):
    return _run_ok(ip, f"%%vjp {line}\n{body}")


def _usage_error(ip, source: str) -> str:
    result = ip.run_cell(source)
    assert isinstance(result.error_in_exec, UsageError), result.error_in_exec
    return str(result.error_in_exec)


def _assert_tensor(actual, expected, **kw):
    expected = torch.as_tensor(expected, dtype=actual.dtype)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    torch.testing.assert_close(actual, expected, **kw)


@pytest.fixture(name="run_ok")
def _run_ok_fixture(ip):
    """``run_ok(source)``: run a cell; fail the test on any error; return its value."""
    return lambda source: _run_ok(ip, source)


@pytest.fixture(name="run_vjp")
def _run_vjp_fixture(ip):
    """``run_vjp(body, line="")``: run ``body`` under ``%%vjp line``; return the result."""
    return lambda body, line="": _run_vjp(ip, body, line)


@pytest.fixture(name="usage_error")
def _usage_error_fixture(ip):
    """``usage_error(source)``: the text of the ``UsageError`` the cell must stop with."""
    return lambda source: _usage_error(ip, source)


@pytest.fixture(params=["exact", "probe"])
def strategy(request) -> dict:
    """Keywords of ``differentiate`` taking each strategy: the exact Jacobian (the default for
    small problems), then the random vᵀJ probes per pairing (``exact_up_to=0``)."""
    return {} if request.param == "exact" else {"exact_up_to": 0}


@pytest.fixture(name="assert_tensor")
def _assert_tensor_fixture():
    """``assert_tensor(actual, expected, **kw)``: same shape and close values."""
    return _assert_tensor


@pytest.fixture
def earlier_grad(ip, assert_tensor, run_ok):
    """A tensor with a .grad from an earlier cell: no bad input may change it."""
    run_ok("keep = torch.tensor([1., 2.], requires_grad=True)\n(keep**2).sum().backward()")
    yield
    assert_tensor(ip.user_ns["keep"].grad, [2.0, 4.0])
