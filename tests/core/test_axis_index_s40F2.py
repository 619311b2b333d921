"""The axis rule of an advanced index whose first index is the identity on the batch
(``x[torch.arange(B), t]``, ``x[range(B), t]``, ``x[torch.arange(B)[:, None], t2d]``): the
result's axis 0 reads x's row b at b, proved from the index's own values; any other first
index (a permutation, a shift, a mask) claims nothing. Each claimed carry is checked against
the Jacobian (``torch.autograd.functional.jacobian``): zero wherever paired indices differ;
each refusal against a Jacobian that reads across rows."""
from __future__ import annotations

import pytest
import torch

from axis_carries import proved_as
from vjp_magic.core import axisflow

B = 6
G = torch.Generator().manual_seed(5)
X = torch.randn(B, 4, 5, generator=G, dtype=torch.float64)
T = torch.randint(0, 4, (B,), generator=G)
T2 = torch.randint(0, 4, (B, 3), generator=G)
K = torch.randint(0, 5, (B, 3), generator=G)
PERM = torch.tensor([1, 0, 3, 2, 5, 4])  # no row in place

CASES = {  # f(x) -> the carries expected
    "x[arange(B), t]": (lambda x: x[torch.arange(B), T], {0: (0,), 1: (2,)}),
    "x[range(B), t]": (lambda x: x[range(B), T], {0: (0,), 1: (2,)}),
    "x[arange(B)[:, None], t2d]": (lambda x: x[torch.arange(B)[:, None], T2], {0: (0,), 2: (2,)}),
    "x[arange(B)]": (lambda x: x[torch.arange(B)], {0: (0,), 1: (1,), 2: (2,)}),
    "x[arange(B, dtype=int32), t]": (lambda x: x[torch.arange(B, dtype=torch.int32), T],
                                     {0: (0,), 1: (2,)}),
    "x[arange(B)[:, None], :, k] (the indices apart)": (
        lambda x: x[torch.arange(B)[:, None], :, K], {0: (0,), 2: (1,)}),
    "log_softmax(x.sum(2))[arange(B), t]": (
        lambda x: -torch.log_softmax(x.sum(2), 1)[torch.arange(B), T], {0: (0,)}),
}

REFUSED = {  # f(x) whose first index is no identity: row b reads another row
    "x[perm, t]": lambda x: x[PERM, T],
    "x[arange(B).roll(1), t]": lambda x: x[torch.arange(B).roll(1), T],
    "x[arange(B).flip(0), t]": lambda x: x[torch.arange(B).flip(0), T],
    "x[arange(B) // 2, t]": lambda x: x[torch.arange(B) // 2, T],
    "x[t2d[:, :1] * 0 + arange(B)[:, None] % 3, t2d]": lambda x: x[
        T2[:, :1] * 0 + torch.arange(B)[:, None] % 3, T2],
}


@pytest.mark.parametrize("name", CASES)
def test_an_identity_first_index_carries_the_batch(name):
    f, expected = CASES[name]
    proved_as(f, X, expected)


def test_a_loss_read_by_an_identity_index_is_exact():
    """Nothing carried is lost (log_softmax already mixed the classes): the proof is whole."""
    x = X.clone().requires_grad_()
    assert axisflow.prove(-torch.log_softmax(x.sum(2), 1)[torch.arange(B), T], x).exact


@pytest.mark.parametrize("name", REFUSED)
def test_a_first_index_moving_rows_claims_no_batch(name):
    f = REFUSED[name]
    jac = torch.autograd.functional.jacobian(f, X).reshape(B, -1, B, 20)
    jac = jac.ne(0).any(3).any(1)  # out row b reads x row c
    assert jac.logical_and(~torch.eye(B, dtype=torch.bool)).any()  # a coupling across rows
    x = X.clone().requires_grad_()
    proof = axisflow.prove(f(x), x)
    assert 0 not in proof.carries and not proof.exact


def test_a_mask_beside_the_identity_claims_nothing():
    """A bool index stands for as many axes as it has (its nonzeros): not read as an
    integer index, so nothing is claimed (here conservatively: row b reads row b)."""
    x = X.clone().requires_grad_()
    mask = torch.tensor([False, True, False, False])
    proof = axisflow.prove(x[torch.arange(B), mask], x)
    assert proof.carries == {} and not proof.exact
