"""Probe 0 judging every separated given Jacobian at once (``core/given.py``: ``at_once``)
gives the verdicts of judging each alone: the same accepted names, the same finite and
non-zero ones in ``probes.ordinary``, a non-finite entry still named. Jacobians from the
mathematics of an elementwise map (row b: sample b's own gradient), checked against
``torch.autograd.functional.jacobian``."""
from __future__ import annotations

import pytest
import torch

from vjp_magic.core import given as given_jacobians
from vjp_magic.core.given import GivenJacobian
from vjp_magic.core.probes import Probes


def _losses(x, w, c, zero):
    return (w * x**2).sum(1) + c * x[:, 0] + (zero * 0).sum()


def _case(seed: int, batch: int = 48):
    """Per-sample losses y_b = Σ_i w_i x_bi² + c·x_b0 with their Jacobians in w and c."""
    torch.manual_seed(seed)
    x = torch.randn(batch, 5)
    named = {"w": torch.randn(5, requires_grad=True), "c": torch.randn(1, requires_grad=True),
             "zero": torch.zeros(3, requires_grad=True)}  # read, with a gradient of 0
    jacobians = {"w": x**2, "c": x[:, :1].clone(), "zero": torch.zeros(batch, 3)}
    return _losses(x, **named), named, jacobians, x


def _verdicts(y, named, given, seed, at_once: bool, monkeypatch):
    if not at_once:
        monkeypatch.setattr(given_jacobians, "_at_once_suits", lambda *a: False)
    probes = Probes(y, named, seed)
    found = given_jacobians.agreed(probes, *given_jacobians.split(given))
    monkeypatch.undo()
    return found, set(probes.ordinary), dict(probes.nonfinite)


def test_the_jacobians_are_the_true_ones():
    _, named, jacobians, x = _case(0)
    values = tuple(t.detach() for t in named.values())
    expected = torch.autograd.functional.jacobian(lambda *t: _losses(x, *t), values)
    for name, value in zip(named, expected):
        torch.testing.assert_close(jacobians[name], value)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("wrong", [None, "w", "c"])
def test_at_once_gives_the_verdicts_of_one_by_one(seed, wrong, monkeypatch):
    y, named, jacobians, _ = _case(seed)
    if wrong is not None:
        jacobians[wrong] = jacobians[wrong].clone()
        jacobians[wrong][7, 0] += 0.05 * float(jacobians[wrong][:, 0].abs().sum())
    given = {n: GivenJacobian(j, None, True) for n, j in jacobians.items()}
    quick = _verdicts(y, named, given, seed, True, monkeypatch)
    alone = _verdicts(y, named, given, seed, False, monkeypatch)
    assert quick == alone
    assert quick[0] == set(named) - {wrong}
    assert "zero" not in quick[1] and (wrong is not None or quick[1] == {"w", "c"})


def test_a_nonfinite_entry_is_still_named(monkeypatch):
    y, named, jacobians, _ = _case(5)
    jacobians["w"] = jacobians["w"].clone()
    jacobians["w"][3, 2] = float("nan")
    given = {n: GivenJacobian(j, None, True) for n, j in jacobians.items()}
    found, ordinary, nonfinite = _verdicts(y, named, given, 5, True, monkeypatch)
    assert found == {"c", "zero"} and nonfinite == {"w": 2}


def test_a_scale_function_of_the_wrong_shape_is_judged_alone(monkeypatch):
    y, named, jacobians, _ = _case(6)
    given = {n: GivenJacobian(j, None, True) for n, j in jacobians.items()}
    given["w"] = given["w"]._replace(weighted_magnitudes=lambda rows: torch.ones(1, 2))
    calls = []
    original = given_jacobians.ScaledProbes

    def counted(*args):
        calls.append(1)
        return original(*args)
    monkeypatch.setattr(given_jacobians, "ScaledProbes", counted)
    probes = Probes(y, named, 6)
    assert given_jacobians.agreed(probes, *given_jacobians.split(given)) == set(named)
    assert len(calls) == 3  # at once refused: each judged alone, the function set aside
