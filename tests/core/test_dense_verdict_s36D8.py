"""checked_batches.batching_verdict forms |v|ᵀ|flat| only where half the rule's bound at
|vᵀflat| fails: its verdict must be the rule's own, entry by entry (s36 D8). The reference is
the rule as tolerances.py states it: accepted iff |vᵀJ − vᵀflat| < tol·|v|ᵀ|flat| + tiny at
every entry (else the full probe rule judges)."""
import pytest
import torch

from vjp_magic.core import checked_batches
from vjp_magic.core.probes import probe_agrees
from vjp_magic.core.tolerances import tolerances


def _reference(flat, v, vjp):
    m = v.numel()
    d, row = flat.reshape(m, -1).double(), v.reshape(1, m).double()
    expected = row @ d
    bound = tolerances(flat.dtype).probe * (row.abs() @ d.abs()) + torch.finfo(flat.dtype).tiny
    if bool(((vjp.reshape(expected.shape).double() - expected).abs() < bound).all()):
        return True
    return probe_agrees(flat, v, vjp, (), nonfinite_agree=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_same_verdict_as_the_rule_near_its_boundary(dtype):
    g = torch.Generator().manual_seed(0)
    tol = tolerances(dtype).probe
    for trial in range(60):
        m, n = 64, 48
        flat = torch.randn(m, n, generator=g, dtype=dtype)
        if trial % 3 == 0:  # columns that cancel: |vᵀD| far below |v|ᵀ|D|
            flat[:, :8] = 1.0
        v = torch.randint(0, 2, (m,), generator=g).to(dtype) * 2 - 1
        exact = (v.double() @ flat.double())
        scale = (v.double().abs() @ flat.double().abs())
        # errors at 0.2 .. 1.6 of the rule's bound, per column
        factor = torch.rand(n, generator=g, dtype=torch.float64) * 1.4 + 0.2
        vjp = (exact + factor * tol * scale).to(dtype)
        got, _ = checked_batches.batching_verdict(flat, v, vjp)
        assert got == _reference(flat, v, vjp)


def test_cancelling_columns_are_judged_by_the_full_bound():
    """Half the bound at |vᵀflat| fails where a column cancels (vᵀflat = 0), the full bound
    there accepts: accepted, as the rule accepts."""
    flat = torch.ones(4, 3, dtype=torch.float64)
    v = torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=torch.float64)
    vjp = torch.full((3,), 1e-15, dtype=torch.float64)  # within tol·4 = 2.3e-13
    assert checked_batches.batching_verdict(flat, v, vjp) == (True, False)
    assert checked_batches.batching_verdict(flat, v, torch.full((3,), 1e-9,
                                            dtype=torch.float64))[0] is False


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_entries_are_never_accepted_by_the_shortcut(bad):
    flat = torch.randn(8, 5, dtype=torch.float64)
    v = torch.ones(8, dtype=torch.float64)
    flat[2, 1] = bad
    vjp = v @ flat
    agrees, ordinary = checked_batches.batching_verdict(flat, v, vjp)
    assert ordinary is False
    assert agrees == probe_agrees(flat, v, vjp, (), nonfinite_agree=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("factor, accepted", [(0.9, True), (1.3, False), (3.0, False)])
def test_a_column_without_cancellation_at_the_bound(dtype, factor, accepted):
    """Column 0 is v itself (|vᵀd| = |v|ᵀ|d|: no cancellation), its error ``factor`` times
    the rule's bound, every other column exact: accepted iff within the bound."""
    g = torch.Generator().manual_seed(1)
    m, n = 32, 6
    v = torch.randint(0, 2, (m,), generator=g).to(dtype) * 2 - 1
    flat = torch.randn(m, n, generator=g, dtype=dtype)
    flat[:, 0] = v * 3
    scale = float(v.double().abs() @ flat[:, 0].double().abs())
    vjp = (v.double() @ flat.double())
    vjp[0] += factor * tolerances(dtype).probe * scale
    vjp = vjp.to(dtype)
    assert checked_batches.batching_verdict(flat, v, vjp)[0] is accepted
    assert _reference(flat, v, vjp) is accepted
