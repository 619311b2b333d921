"""The v each of the cell's own backward calls sent (``run/seeds.py``)."""
from __future__ import annotations

import pytest
import torch

from vjp_magic.run import backward_log, seeds
from vjp_magic.run.guard import keep_graphs

# -- the v of each of the cell's own backward calls: ones, zero-one or general; which tensor -------

@pytest.mark.parametrize("v, kind", [
    (None, "ones"), (torch.ones(3), "ones"), (torch.tensor([0.0, 1.0, 0.0]), "zero-one"),
    (torch.tensor([1.0, 0.0, 1.0]), "zero-one"), (torch.tensor([0.5, 1.0, 2.0]), "general"),
    (2 * torch.ones(3), "general"),
])
def test_gradient_kind(v, kind):
    assert seeds.gradient_kind(v) == kind


def test_seeds_tell_the_output_its_sum_and_other_tensors_apart():
    x = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    y = x**2
    z = torch.sin(x)
    with keep_graphs() as log:
        y.backward(torch.ones_like(y), retain_graph=True)
        y.sum().backward(retain_graph=True)
        z.backward(torch.tensor([0.5, -1.0, 2.0]))
        y.mean().backward()
    found = [(s.target, s.kind) for s in seeds.seeds(log, y)]
    assert found == [("output", "ones"), ("sum", "ones"), ("other", "general"),
                     ("other", "ones")]
    assert all(backward_log.reaches(s.call, x) for s in seeds.seeds(log, y))
