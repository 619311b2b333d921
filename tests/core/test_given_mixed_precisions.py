"""Probe 0 judging separated given Jacobians of different precisions at once
(``core/given.py``: ``at_once``): each judged in its own precision, the verdicts those of
judging each alone. Jacobians from the mathematics of an elementwise map, checked against
``torch.autograd.functional.jacobian``."""
from __future__ import annotations

import pytest
import torch

from vjp_magic.core import given as given_jacobians
from vjp_magic.core.given import GivenJacobian
from vjp_magic.core.probes import Probes


def _losses(x, w, c):
    return (w * x**2).sum(1) + c * x[:, 0]


def _case(seed: int, batch: int = 40):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 5, dtype=torch.float64, generator=generator)
    named = {"w": torch.randn(5, dtype=torch.float64, generator=generator).requires_grad_(),
             "c": torch.randn(1, dtype=torch.float64, generator=generator).requires_grad_()}
    jacobians = {"w": x**2, "c": x[:, :1].float()}  # c's given in float32
    return _losses(x, **named), named, jacobians, x


def test_the_jacobians_are_the_true_ones():
    _, named, jacobians, x = _case(0)
    values = tuple(t.detach() for t in named.values())
    expected = torch.autograd.functional.jacobian(lambda *t: _losses(x, *t), values)
    for name, value in zip(named, expected):
        torch.testing.assert_close(jacobians[name].double(), value, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("wrong", [None, "w", "c"])
def test_mixed_precisions_at_once_give_the_verdicts_of_one_by_one(seed, wrong, monkeypatch):
    y, named, jacobians, _ = _case(seed)
    if wrong is not None:
        jacobians[wrong] = jacobians[wrong].clone()
        size = 0.05 if wrong == "w" else 1e6  # float32 judged against float64's probe range
        jacobians[wrong][5, 0] += size * float(jacobians[wrong][:, 0].abs().sum())
    given = {n: GivenJacobian(j, None, True) for n, j in jacobians.items()}
    verdicts = []
    for together in (True, False):
        if not together:
            monkeypatch.setattr(given_jacobians, "_at_once_suits", lambda *a: False)
        probes = Probes(y, named, seed)
        verdicts.append((given_jacobians.agreed(probes, *given_jacobians.split(given)),
                         set(probes.ordinary)))
        monkeypatch.undo()
    assert verdicts[0] == verdicts[1]
    assert verdicts[0][0] == set(named) - {wrong}
