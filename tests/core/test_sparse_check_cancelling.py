"""G27-1's class: an OBSERVED pattern whose Jacobian entries are sums of cancelling terms
(linear upsampling of x·roll(x) near x = 0, a conv decoder) was refused by the row check,
whose tolerance |J_sparse|·|w| ignores rounding at the terms' size, and the user was told of
a coupling that does not exist. The rows (and, as the rows follow, the columns) are judged
again against their measured rounding noise; a real coupling well above rounding is still
caught. An opaque autograd.Function (no index-map rule) keeps each pattern observed.
Expected values: torch.autograd.functional.jacobian."""
import pytest
import torch
import torch.nn.functional as F

import vjp_magic
from vjp_magic.core.sparse_check import checked, rows_checked
from vjp_magic.core.sparse_layout import csr_matrix
from custom_functions import Identity  # no rule sees through it: observed


MAPS = {
    "linear upsampling of x·roll(x)": lambda t: F.interpolate(
        Identity.apply(t * t.roll(1))[None, None], scale_factor=2, mode="linear")[0, 0],
    "nearest then box filter of x·roll(x) - x·roll(-1)": lambda t: F.avg_pool1d(
        F.interpolate(Identity.apply(t * t.roll(1) - t * t.roll(-1))[None, None],
                      scale_factor=3, mode="nearest"), 3, 1)[0, 0],
    "second difference of x·roll(x)": lambda t: torch.diff(
        Identity.apply(t * t.roll(1)), 2, prepend=t[:1] * 0, append=t[-1:] * 0),
    "bilinear upsampling of x·roll(x)": lambda t: F.interpolate(
        Identity.apply(t * t.roll(1)).reshape(1, 1, 20, 20), scale_factor=2,
        mode="bilinear").reshape(-1),
}


@pytest.mark.parametrize("seed", [0, 1, 5])
@pytest.mark.parametrize("name", list(MAPS))
def test_a_cancelling_observed_pattern_is_coloured_and_exact(name, seed):
    f = MAPS[name]
    x = torch.linspace(-1, 1, 400, dtype=torch.float64, requires_grad=True)
    y = f(x)
    r = vjp_magic.differentiate(y, x, names=["x"], output_name="y", seed=seed)
    assert not any("coupling" in note and "may" not in note for note in r.notes), r.notes
    torch.testing.assert_close(r.jacobian("x", layout=torch.sparse_csr).to_dense(),
                               torch.autograd.functional.jacobian(f, x.detach()),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_linear_upsampling_of_a_product_is_coloured_not_refused(seed):
    """Its observed pattern (3 entries a row) is exact; the check must accept it, and no
    note may claim a coupling."""
    f = MAPS["linear upsampling of x·roll(x)"]
    x = torch.linspace(-1, 1, 400, dtype=torch.float64, requires_grad=True)
    r = vjp_magic.differentiate(f(x), x, names=["x"], output_name="y", seed=seed)
    sparse = r.inputs["x"].sparse
    assert sparse is not None and str(sparse.evidence) == "observed", r.notes
    assert sparse.count <= 8 and not any("probe" in note for note in r.notes)


def _missing_one(f, x, row: int, relative: float):
    """J as a CSR with J[row, row] changed by ``relative`` times row's largest entry: the
    pattern holds, one value is wrong (a coupling the values did not show)."""
    dense = torch.autograd.functional.jacobian(f, x.detach())
    wrong = dense.clone()
    wrong[row, row // 2] += relative * float(dense[row].abs().max())
    csr = wrong.to_sparse_csr()
    return csr_matrix(csr.crow_indices(), csr.col_indices(), csr.values(), tuple(csr.shape))


@pytest.mark.parametrize("relative", [1e-6, 1e-9])
@pytest.mark.parametrize("row", [400, 399, 3])  # near x = 0, where terms cancel; and not
def test_a_wrong_value_well_above_rounding_is_still_caught(row, relative):
    f = MAPS["linear upsampling of x·roll(x)"]
    x = torch.linspace(-1, 1, 400, dtype=torch.float64, requires_grad=True)
    y = f(x)
    wrong = _missing_one(f, x, row, relative)
    assert not rows_checked(y, x, wrong, 0)
    assert not (checked(y, x, wrong, 0, rows_follow=True)
                and rows_checked(y, x, wrong, 0))


def test_the_exact_values_pass_both_checks():
    f = MAPS["linear upsampling of x·roll(x)"]
    x = torch.linspace(-1, 1, 400, dtype=torch.float64, requires_grad=True)
    y = f(x)
    csr = torch.autograd.functional.jacobian(f, x.detach()).to_sparse_csr()
    exact = csr_matrix(csr.crow_indices(), csr.col_indices(), csr.values(), tuple(csr.shape))
    for seed in range(4):
        assert checked(y, x, exact, seed, rows_follow=True) and rows_checked(y, x, exact, seed)
