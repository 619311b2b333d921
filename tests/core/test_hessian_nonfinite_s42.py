"""The Hessian's note on NaN or infinite second derivatives says what they can be: an
overflow of the dtype (a smooth f whose second derivatives are past its range) as well as a
singularity, and judges no symmetry on them (s42 R2-1's class). Expected values come from
mathematics and ``torch.func.hessian`` in float64."""
from __future__ import annotations

import pytest
import torch

import vjp_magic


def _text(h) -> str:
    return " ".join(str(h).split())


@pytest.mark.parametrize("dtype, at", [(torch.float32, 9.3), (torch.float64, 26.55)])
def test_an_overflow_of_either_dtype_is_named_as_one(dtype, at):
    x = torch.full((5,), at, dtype=dtype, requires_grad=True)

    def f(t):
        return torch.exp(t[1:] * t[:-1]).sum()

    y = f(x)
    assert bool(torch.isfinite(y))
    true = (at * at) ** 1 * torch.exp(torch.tensor(at * at, dtype=torch.float64))  # ~ t² e^{t²}
    assert float(true) > torch.finfo(dtype).max  # the second derivatives are past the range
    text = _text(vjp_magic.hessian(y, x, names=["x"], seed=0))
    assert f"past {str(dtype).replace('torch.', '')}'s range" in text, text[-500:]
    assert "not symmetric" not in text
    assert ("computed in float64" in text) == (dtype != torch.float64)


def test_a_singularity_keeps_its_reason_and_is_not_called_an_overflow():
    x = torch.tensor([0.0, 1.0, 4.0], dtype=torch.float64, requires_grad=True)
    y = torch.sqrt(x).sum()  # d²/dx² sqrt(x) = -x^(-3/2) / 4: infinite at 0
    text = _text(vjp_magic.hessian(y, x, names=["x"], seed=0))
    assert "singularity there" in text, text[-500:]
    assert "not symmetric" not in text


def test_finite_second_derivatives_get_no_such_note():
    x = torch.linspace(-1, 1, 6, dtype=torch.float64, requires_grad=True)
    y = (torch.exp(x[1:] * x[:-1])).sum()
    text = _text(vjp_magic.hessian(y, x, names=["x"], seed=0))
    assert "infinite" not in text and "NaN" not in text
