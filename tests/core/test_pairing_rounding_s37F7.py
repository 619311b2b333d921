"""s37 F7: the pairing checks' second reading (vjp_magic.core.pairing.firm_outside,
probe_rounding): an entry off the points that scales with a rescaled probe is a dependence,
rounding (a sum that cancels in mathematics) is not. Expected values: the Jacobian of
softmax(x - x.max(), 1) is block-diagonal in mathematics (each row's softmax is invariant
to the shift); autograd's own Jacobian (torch.autograd.functional.jacobian) shows the
rounding it leaves at the max's entry, and a real leak (1e-6 · x.sum()) scales."""
from __future__ import annotations

import torch

from vjp_magic.core.pairing import Pairing, firm_outside, probe_rounding, rescaling


def _rows(f, x, rows, scale):
    """Rows of J read with one-hot probes, and again with the probes times ``scale``."""
    y = f(x)
    first, again = [], []
    for i, s in zip(rows, scale.tolist()):
        v = torch.zeros(y.numel(), dtype=y.dtype)
        v[i] = 1
        first.append(torch.autograd.grad(y, x, v.reshape(y.shape), retain_graph=True)[0])
        again.append(torch.autograd.grad(y, x, (s * v).reshape(y.shape), retain_graph=True)[0])
    return torch.stack(first).reshape(len(rows), -1), torch.stack(again).reshape(len(rows), -1)


def _off_row(shape, rows):
    """(k × n): the input entries off each output row's own row of x (off the points)."""
    b, n = shape
    cols = torch.arange(b * n) // n
    return torch.stack([cols != i // n for i in rows])


def _shifted(x):
    return torch.softmax(x - x.max(), dim=1)


def test_the_shift_leaves_rounding_only():
    torch.manual_seed(0)
    x = torch.randn(4, 5, requires_grad=True)
    jac = torch.autograd.functional.jacobian(_shifted, x.detach()).reshape(20, 20)
    outside = _off_row((4, 5), range(20))
    assert bool((jac[outside] != 0).any())  # autograd leaves a residue off the rows
    assert float(jac[outside].abs().max()) < 1e-6  # … at rounding level
    scale = rescaling(20, 7, 0)
    first, again = _rows(_shifted, x, range(20), scale)
    coupled, rounded = firm_outside(first, again, scale, outside)
    assert not coupled
    assert bool(rounded.any())


def test_a_real_leak_scales():
    torch.manual_seed(0)
    x = torch.randn(4, 5, requires_grad=True)

    def leaking(t):
        return _shifted(t) + 1e-6 * t.sum()

    jac = torch.autograd.functional.jacobian(leaking, x.detach()).reshape(20, 20)
    assert float(jac[_off_row((4, 5), range(20))].abs().min()) > 5e-7  # the leak, 1e-6
    scale = rescaling(20, 7, 0)
    first, again = _rows(leaking, x, range(20), scale)
    coupled, _ = firm_outside(first, again, scale, _off_row((4, 5), range(20)))
    assert coupled


def test_the_probe_rule_disagreement_is_rounding_for_the_shift_only():
    """(A leak under the probe's resolution, 1e-20 in float64, is the coupling check's to
    find, which reads entries off the points one by one: the probe needs only not excuse
    one it sees.)"""
    torch.manual_seed(1)
    x = torch.randn(6, 7, dtype=torch.float64, requires_grad=True)
    for f, rounding in ((_shifted, True), (lambda t: _shifted(t) + 1e-3 * t.sum(), False)):
        y = f(x)
        jac = torch.autograd.functional.jacobian(f, x.detach())  # (6, 7, 6, 7)
        d = torch.stack([jac[i, :, i, :] for i in range(6)])  # the batch axis as points
        d = d.permute(1, 0, 2)  # components (7) + x's shape (6, 7)
        v = torch.randn(6, 7, dtype=torch.float64) * 2.0 ** torch.randint(-20, 20, (6, 7))
        (vjp,) = torch.autograd.grad(y, x, v, retain_graph=True)

        def again(w, y=y):
            return torch.autograd.grad(y, x, w, retain_graph=True)[0]
        ok, _ = probe_rounding(d, Pairing([(0, 0)]), v, vjp, again, seed=3)
        assert ok is rounding
