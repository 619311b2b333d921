"""Shape-only constructors (zeros_like, new_full, …) make no cut, and hide none: a real cut
beside them is still named, and one made from their result is too, and a fill
value computed from x is still a cut."""
from __future__ import annotations

import pytest


@pytest.mark.parametrize("body, cut", [
    ("y = x**2 + torch.zeros_like(x.detach())", False),
    ("y = x**2 + torch.zeros_like(x) + x.detach() * 0", True),
    ("y = x**2 + (torch.ones_like(x) * x).detach()", True),
    ("y = x**2 + torch.empty_like(x).fill_(1.0) + x.new_ones(4)", False),
    ("y = x**2 + torch.full_like(x, x.sum().item())", True),  # the fill value is x's
])
def test_shape_only_constructors(run_vjp, body, cut):
    r = run_vjp("x = torch.linspace(1., 2., 4, requires_grad=True)\n" + body)
    assert bool(r.cuts) == cut, r.cuts
    if cut:
        assert any(c.kind != "other" for c in r.cuts), r.cuts  # the detach or exit itself
