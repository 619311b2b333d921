"""The axis rule of ``gather`` (and ``take_along_dim``, a gather of an expanded index): entry i
along an axis other than ``dim`` reads entry i there, so that axis keeps its carry where the
index spans it whole; along ``dim`` nothing is carried. Each claimed carry checked against the
Jacobian (``torch.autograd.functional.jacobian``): zero wherever the paired indices differ."""
from __future__ import annotations

import pytest
import torch

from axis_carries import proved_as
from vjp_magic.core import axisflow

G = torch.Generator().manual_seed(3)
X = torch.randn(6, 4, 5, generator=G, dtype=torch.float64)
FULL = torch.randint(0, 4, (6, 2, 5), generator=G)  # spans axes 0 and 2 whole
SHORT = torch.randint(0, 6, (3, 4, 5), generator=G)  # axis 0 shorter than x's

CASES = {  # f(x) -> the carries expected
    "gather along 1": (lambda x: x.gather(1, FULL), {0: (0,), 2: (2,)}),
    "gather along -2": (lambda x: torch.gather(x, -2, FULL), {0: (0,), 2: (2,)}),
    "gather along 0": (lambda x: x.gather(0, SHORT), {1: (1,), 2: (2,)}),
    "gather with a shorter index": (lambda x: x.gather(1, FULL[:, :, :3]), {0: (0,)}),
    "take_along_dim along 1": (lambda x: torch.take_along_dim(x, FULL[:, :, :1], 1),
                               {0: (0,), 2: (2,)}),
}


@pytest.mark.parametrize("name", CASES)
def test_gather_carries_the_axes_it_indexes_in_place(name):
    f, expected = CASES[name]
    proved_as(f, X, expected)


def test_the_gathered_axis_carries_nothing():
    """Along ``dim`` entry j reads the entry the index names (here another one): no carry."""
    x = X.clone().requires_grad_()
    index = FULL[:, :1].expand(6, 4, 5).flip(1)
    proof = axisflow.prove(x.gather(1, index), x)
    assert 1 not in proof.carries and not proof.exact
