"""The observed sparsity pattern: exact on local maps, refused when dense."""
import torch
import torch.nn.functional as F
from custom_functions import Twice

from vjp_magic.core.pattern import observed_pattern


def _dense(pattern):
    crow, col = pattern.crow, pattern.col
    rows = torch.repeat_interleave(torch.arange(pattern.shape[0]), crow.diff())
    out = torch.zeros(pattern.shape, dtype=torch.bool)
    out[rows, col] = True
    return out


def test_tridiagonal_pattern_at_this_x():
    x = torch.randn(50, requires_grad=True)
    y = F.pad(x, (1, 0))[:-1] + x ** 3 + F.pad(x, (0, 1))[1:]
    pattern = observed_pattern(y, x, 2**28, seed=1)
    expected = torch.ones(50, 50).triu(-1).tril(1).bool()
    assert torch.equal(_dense(pattern), expected)
    assert pattern.nnz == 3 * 50 - 2


def test_a_zero_derivative_at_this_x_is_missing_observed_not_proved():
    x = torch.tensor([0.0, 1.0, 2.0], requires_grad=True)
    pattern = observed_pattern(x ** 3, x, 2**28, seed=1)
    assert pattern.col.tolist() == [1, 2]  # d(x³)/dx = 0 at x = 0


def test_dense_patterns_are_refused():
    x = torch.randn(64, requires_grad=True)
    assert observed_pattern(x.sum() * x, x, 2**28, seed=1) is None


def test_a_non_finite_probe_refuses():
    x = torch.tensor([0.0, 1.0, 4.0], requires_grad=True)
    assert observed_pattern(torch.sqrt(x), x, 2**28, seed=1) is None


def test_find_pattern_proves_what_the_rules_cover_and_observes_the_rest():
    from vjp_magic.core.pairing import Evidence
    from vjp_magic.core.pattern import find_pattern

    x = torch.tensor([0.0, 1.0, 2.0, 3.0], requires_grad=True)
    proved = find_pattern(x ** 3, x, 2**28, seed=1)
    assert proved.evidence == Evidence.PROVED and proved.probes == 0
    assert proved.col.tolist() == [0, 1, 2, 3]  # d(x³)/dx = 0 at x = 0, still a dependence

    observed = find_pattern(Twice.apply(x) ** 3, x, 2**28, seed=1)
    assert observed.evidence == Evidence.OBSERVED and observed.probes > 0
    assert observed.col.tolist() == [1, 2, 3]
    assert observed_pattern(x ** 3, x, 2**28, seed=1).evidence == Evidence.OBSERVED
