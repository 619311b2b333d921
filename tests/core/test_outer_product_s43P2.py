"""vᵀD from a per-sample Linear weight's factors (:meth:`vjp_magic.core.outer.OuterProducts.
product`, (v ∘ g)ᵀ a): vᵀD itself, and the weight's gradient of Σ v_b·loss_b bit for bit where
nothing under- or overflows (v holds signed powers of two), so the probe check keeps its
exact-equality path (a scale of 0) against the graph's own backward, whichever of the layer's
sides is wider.

Expected values: vᵀD by hand (einsum over the outer products, float64), and the weight's
gradient from ``torch.autograd.grad``."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vjp_magic.core.outer import OuterProducts
from vjp_magic.core.probes import probe_vector


@pytest.mark.parametrize("out, inn", [(7, 3), (3, 7), (5, 5)])
def test_the_product_is_vtd(out, inn):
    torch.manual_seed(0)
    g, a = torch.randn(40, out, dtype=torch.float64), torch.randn(40, inn, dtype=torch.float64)
    v = probe_vector(torch.zeros(40, dtype=torch.float64), 5, 0).reshape(1, -1)
    found = OuterProducts(g, a).product(v)
    by_hand = torch.einsum("b,bi,bj->ij", v[0], g, a).reshape(1, -1)
    assert found.shape == (1, out * inn)
    torch.testing.assert_close(found, by_hand, rtol=1e-12, atol=0)
    assert torch.equal(found, ((g * v.reshape(-1, 1)).t() @ a).reshape(1, -1))


@pytest.mark.parametrize("width", [32, 96])
def test_the_product_equals_the_weighted_backward_bit_for_bit(width):
    """A Linear (width → 64) in an MLP, float32: vᵀD from the factors (input narrower or
    wider than the output) is the weight's gradient of Σ v_b·loss_b exactly."""
    torch.manual_seed(1)
    layer, head = torch.nn.Linear(width, 64), torch.nn.Linear(64, 10)
    x, targets = torch.randn(256, width), torch.randint(0, 10, (256,))
    h = layer(x)
    losses = F.cross_entropy(head(torch.relu(h)), targets, reduction="none")
    v = probe_vector(losses, 9, 0)
    (g,) = torch.autograd.grad(losses, [h], torch.ones_like(losses), retain_graph=True)
    (weighted,) = torch.autograd.grad(losses, [layer.weight], v)
    found = OuterProducts(g, x.clone()).product(v.reshape(1, -1))
    assert torch.equal(found, weighted.reshape(1, -1))
