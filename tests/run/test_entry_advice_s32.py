"""A tuple of outputs handed to vjp_magic.hessian is told to call vjp_magic.hessian on one of
them, not vjp_magic.differentiate (G8): the advice names the entry point actually called."""
from __future__ import annotations

import pytest
import torch

import vjp_magic
from vjp_magic.core.errors import VJPUsageError
from vjp_magic.run.called import Called
from vjp_magic.run.choose import Given


def _pair():
    x = torch.tensor([1., 2.], requires_grad=True)
    return (x**2, x.sin()), x


def _sparse():
    x = torch.tensor([1., 2.], requires_grad=True)
    return (x**2).to_sparse(), x


@pytest.mark.parametrize("entry", ["differentiate", "hessian"])
def test_given_advises_the_entry_called(entry):
    outputs, x = _pair()
    with pytest.raises(VJPUsageError) as raised:
        Given(outputs, x, entry=entry).output(None)
    assert f"vjp_magic.{entry}(outputs[0], x)" in str(raised.value)


@pytest.mark.parametrize("entry", ["differentiate", "hessian"])
def test_called_advises_the_entry_called(entry):
    y, x = _sparse()
    called = Called.call(lambda: y, {"x": x}, entry=entry)
    try:
        with pytest.raises(VJPUsageError) as raised:
            called.output(None)
    finally:
        called.release()
    assert f"vjp_magic.{entry}(lambda: y.to_dense(), x)" in str(raised.value)


def test_differentiate_of_a_tuple_advises_differentiate():
    outputs, x = _pair()
    with pytest.raises(VJPUsageError, match=r"vjp_magic\.differentiate\(outputs\[0\], x\)"):
        vjp_magic.differentiate(outputs, x)


@pytest.mark.parametrize("callable_", [False, True])
def test_hessian_advises_hessian(callable_):
    """A tuple given, or a sparse tensor returned by the function given."""
    outputs, x = _sparse() if callable_ else _pair()
    with pytest.raises(VJPUsageError) as raised:
        vjp_magic.hessian((lambda: outputs) if callable_ else outputs, x)
    assert "vjp_magic.hessian(" in str(raised.value)
    assert "differentiate" not in str(raised.value)
