"""PyTorch's words (``core/torch_api.py``): the error texts are PyTorch's own, matched from
one place."""
from __future__ import annotations

import pytest
import torch
from torch.autograd.variable import Variable

from vjp_magic.core.torch_api import (
    ENGINE,
    FREED_MESSAGE,
    TorchError,
    autograd_grad,
    gradient_position,
    torch_error,
)

# -- the error texts are PyTorch's own, read in one place ------------------------------------------

def _raised(make) -> RuntimeError:
    with pytest.raises(RuntimeError) as info:
        make()
    return info.value


def _implicit():
    (torch.ones(3, requires_grad=True) * 2).backward()


def _shape():
    (torch.ones(3, requires_grad=True) * 2).backward(torch.ones(2))


def _twice():
    y = torch.ones(2, requires_grad=True).exp().sum()
    y.backward()
    y.backward()


def _inplace():
    w = torch.ones(2, requires_grad=True)
    y = (w**2).sum()
    with torch.no_grad():
        w.add_(1)
    y.backward()


@pytest.mark.parametrize("make, kind", [
    (_implicit, TorchError.IMPLICIT_SCALAR), (_shape, TorchError.GRADIENT_SHAPE),
    (_twice, TorchError.SECOND_PASS), (_inplace, TorchError.INPLACE),
])
def test_torch_error_recognises_pytorchs_own_messages(make, kind):
    error = _raised(make)
    assert torch_error(error) is kind
    assert torch_error(str(error)) is kind


def test_torch_error_ignores_other_errors():
    assert torch_error(RuntimeError("something else")) is None
    assert torch_error(ValueError(TorchError.SECOND_PASS.value)) is None  # not autograd's


def test_freed_message_is_pytorchs_text_and_gradient_position_reads_the_index():
    assert str(_raised(_twice)) == FREED_MESSAGE
    assert gradient_position(_raised(_shape)) == 0
    assert gradient_position("Mismatch in shape: grad_output[2] has a shape of") == 2
    assert gradient_position("no index here") is None


def test_real_autograd_captured_once():
    assert autograd_grad is torch.autograd.grad
    assert ENGINE is Variable._execution_engine  # outside a guarded block: the real engine


def test_pytorch_error_texts_are_matched_from_one_place():
    w = torch.ones(2, requires_grad=True)
    y = (w**2).sum()
    with torch.no_grad():
        w.add_(1)
    with pytest.raises(RuntimeError) as info:
        y.backward()
    assert torch_error(info.value) is TorchError.INPLACE
    z = (w**2).sum()
    z.backward()
    with pytest.raises(RuntimeError) as info:
        z.backward()
    assert torch_error(info.value) is TorchError.SECOND_PASS
    assert torch_error(KeyError("second time")) is None
