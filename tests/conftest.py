"""Shared fixtures: a real IPython InteractiveShell with the extension loaded."""
from __future__ import annotations

import pytest
import torch
from IPython.testing.globalipapp import start_ipython


@pytest.fixture(scope="session")
def _shell():
    return start_ipython()


@pytest.fixture
def ip(_shell):
    """A clean namespace with ``torch`` imported and ``%load_ext vjp_magic`` done."""
    _shell.reset(new_session=False)
    _shell.run_line_magic("load_ext", "vjp_magic")
    _shell.run_cell("import torch")
    yield _shell
    _shell.run_line_magic("unload_ext", "vjp_magic")


def run_ok(ip, source: str):
    """Run a cell; fail the test on any error; return its value (the result object)."""
    result = ip.run_cell(source)
    if not result.success:
        raise AssertionError(f"cell failed: {result.error_before_exec or result.error_in_exec!r}")
    return result.result


def run_vjp(ip, body: str, line: str = ""):
    return run_ok(ip, f"%%vjp {line}\n{body}")


def assert_tensor(actual, expected, **kw):
    expected = torch.as_tensor(expected, dtype=actual.dtype)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    torch.testing.assert_close(actual, expected, **kw)
