"""Probe 0's vᵀD for a Linear weight, read by the per-layer rule right after writing D (in
cache: ``run/expanded.py``, ``_WeightedMagnitudes.read``), is taken by the check
(``core/given.py``: ``at_once``) only for that very tensor, unwritten since, and that very
probe; else D is read again, so a D changed after the rule wrote it is still refused.
Expected Jacobians from ``torch.autograd.functional.jacobian``, vᵀJ from a plain backward."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from vjp_magic.core import given as given_jacobians
from vjp_magic.core.given import GivenJacobian
from vjp_magic.core.probes import Probes, probe_vector
from vjp_magic.run.expanded import _WeightedMagnitudes

SEED = 11


def _case(batch: int = 32):
    """Per-sample losses of one Linear layer; D (row b: sample b's weight gradient) from the
    rule g_bᵀ x_b, its |v|ᵀM function read with probe 0, and probe 0's vᵀJ."""
    torch.manual_seed(3)
    layer = torch.nn.Linear(6, 4)
    x, targets = torch.randn(batch, 6), torch.randint(0, 4, (batch,))
    losses = F.cross_entropy(layer(x), targets, reduction="none")
    out = layer(x)
    g = torch.autograd.grad(F.cross_entropy(out, targets, reduction="sum"), out)[0]
    v = probe_vector(losses, SEED, 0)
    factored = _WeightedMagnitudes(g[:, None, :], x[:, None, :], v)
    jacobian = g[:, :, None] * x[:, None, :]
    factored.read(jacobian)
    vjp = torch.autograd.grad(losses, layer.weight, v, retain_graph=True)[0]
    return layer, x, targets, losses, jacobian, factored, v, vjp


def _accepted(losses, layer, jacobian, factored, v, vjp) -> bool:
    named = {"w": layer.weight}
    given = {"w": GivenJacobian(jacobian, None, True, factored, (SEED, v, vjp))}
    return given_jacobians.agreed(Probes(losses, named, SEED),
                                  *given_jacobians.split(given)) == {"w"}


def test_the_rule_jacobian_is_the_true_one():
    layer, x, targets, _, jacobian, _, _, _ = _case()
    expected = torch.autograd.functional.jacobian(
        lambda w: F.cross_entropy(F.linear(x, w, layer.bias), targets, reduction="none"),
        layer.weight.detach())
    torch.testing.assert_close(jacobian, expected)


def test_the_kept_product_is_that_of_the_same_tensor_and_probe():
    _, _, _, _, jacobian, factored, v, _ = _case()
    row, rows = v.reshape(1, -1), jacobian.reshape(v.numel(), -1)
    kept = factored.product(row, rows)
    assert kept is not None and torch.equal(kept, row @ rows)  # the same product, bit for bit
    assert factored.product(row, rows.clone()) is None  # another tensor: read it
    assert factored.product(-row, rows) is None  # another v
    assert factored.product(row.double(), rows.double()) is None


def test_a_jacobian_written_after_the_read_is_read_again_and_refused():
    layer, _, _, losses, jacobian, factored, v, vjp = _case()
    assert _accepted(losses, layer, jacobian, factored, v, vjp)
    column = float(jacobian[:, 1, 2].abs().sum())
    jacobian[5, 1, 2] += 0.05 * column  # in place: the product kept is of the old numbers
    row = v.reshape(1, -1)
    assert factored.product(row, jacobian.reshape(v.numel(), -1)) is None
    assert not _accepted(losses, layer, jacobian, factored, v, vjp)
