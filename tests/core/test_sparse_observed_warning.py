"""sparse_jacobian says so when its pattern was observed by grouped probes (not proved) and the
entries outside it could not be checked (over 64 rows and columns to compute, and no second
observation): a derivative below the float resolution of a much larger one in its row and
column can read 0 there (issue 20). Where a second observation runs, nothing is said."""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from custom_functions import Identity
import vjp_magic
from vjp_magic import ObservedPatternWarning


def _opaque_stencil(x):
    """A tridiagonal stencil behind an opaque Function: the pattern can only be observed."""
    u = Identity.apply(x)
    return F.pad(u, (1, 0))[:-1] + u ** 3 + F.pad(u, (0, 1))[1:]


def _observed_warnings(f, n, dtype=torch.float32):
    x = torch.linspace(-1, 1, n, dtype=dtype, requires_grad=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        matrix = vjp_magic.sparse_jacobian(f(x), x, seed=0)
    expected = torch.autograd.functional.jacobian(f, x.detach())
    torch.testing.assert_close(matrix.to_dense(), expected)
    return [w for w in caught if issubclass(w.category, ObservedPatternWarning)]


def test_an_observed_pattern_past_the_exact_check_warns_and_says_what_to_do(monkeypatch):
    from vjp_magic.core import couplings
    monkeypatch.setattr(couplings, "observed_pattern", lambda *a, **k: None)  # no second
    monkeypatch.setattr(couplings, "observed_columns", lambda *a, **k: None)  # observation
    monkeypatch.setattr(couplings, "_by_colours", lambda *a, **k: None)  # nor structure check
    caught = _observed_warnings(_opaque_stencil, 200)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "observed" in message and "differentiate" in message and "float64" in message
    assert "64" in message and "fresh values" in message
    assert caught[0].filename == __file__  # points at the caller's line


def test_an_observed_pattern_past_64_entries_is_checked_by_observing_it_again():
    assert _observed_warnings(_opaque_stencil, 200) == []


def test_the_huge_diagonal_case_keeps_its_coupling_and_does_not_warn():
    x = (torch.rand(65, generator=torch.Generator().manual_seed(0)) + 0.5).requires_grad_()
    u = Identity.apply(x)
    one_hot = torch.zeros_like(x)
    one_hot[4] = 1.0
    y = 1e12 * u * u / 2 + one_hot * u[5]
    with warnings.catch_warnings():
        warnings.simplefilter("error", ObservedPatternWarning)
        assert vjp_magic.sparse_jacobian(y, x, seed=0).to_dense()[4, 5] == 1.0


@pytest.mark.parametrize("n", [16, 64])
def test_no_warning_where_the_outside_entries_are_computed_exactly(n):
    assert _observed_warnings(_opaque_stencil, n) == []


def test_no_warning_for_a_proved_pattern():
    def proved(x):
        return F.pad(x, (1, 0))[:-1] + x ** 3 + F.pad(x, (0, 1))[1:]
    assert _observed_warnings(proved, 1000) == []
    assert _observed_warnings(proved, 1000, torch.float64) == []
