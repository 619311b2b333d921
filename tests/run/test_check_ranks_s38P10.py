"""The per-sample check's codes (s38 P10): samples the first check pass (probe 0) weights
alike get different codes, so a later pass tells them apart; ranks are now taken within a
sign-and-exponent group (a radix sort of 16-bit keys), which must never put two equal
weights in different groups (-0 and +0 included) nor give two of them one rank."""
import numpy
import pytest
import torch

from vjp_magic.core.probes import probe_vector
from vjp_magic.run.expanded import _ranks, check_weights


def _distinct_within_equal(keys: torch.Tensor, ranks: numpy.ndarray) -> bool:
    values = keys.float().numpy()
    for value in numpy.unique(values[~numpy.isnan(values)]):
        same = ranks[values == value]
        if len(numpy.unique(same)) != len(same):
            return False
    return True


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32,
                                   torch.float64])
def test_equal_probe_weights_get_distinct_ranks(dtype):
    keys = probe_vector(torch.zeros(1024, dtype=dtype), 11, 0)
    ranks = _ranks(keys, numpy.random.default_rng(0))
    assert _distinct_within_equal(keys, ranks)
    assert ranks.max() < 1024 // 2  # (a probe takes many values: the groups are small)


def test_signed_zeros_and_other_values_share_groups_safely():
    keys = torch.tensor([0.0, -0.0, 0.0, 3.0, 2.5, 3.0, -1.0, -1.5, -1.0])
    ranks = _ranks(keys, numpy.random.default_rng(1))
    assert _distinct_within_equal(keys, ranks)  # 0 and -0 are one value: three ranks
    assert sorted(ranks[:3].tolist()) == [0, 1, 2]


def test_every_pair_of_samples_weighted_apart_in_some_pass():
    probe = probe_vector(torch.zeros(1024), 5, 0)
    passes = check_weights(1024, torch.float32, first=probe)
    codes = torch.stack(passes, 1)  # one row of weights per sample
    assert len(passes) == 2  # probe 0 and one more: 1,024 float32 samples
    assert len(torch.unique(codes, dim=0)) == 1024


def test_the_probe_scale_made_early_is_the_one_computed_late():
    """A Linear weight's |v|ᵀM for probe 0, made before G is written (s38 P10), is exactly
    what the factors give when asked later; other rows are computed, not the kept ones."""
    from vjp_magic.run.expanded import _WeightedMagnitudes

    g, source = torch.randn(64, 1, 5), torch.randn(64, 1, 3)
    probe = probe_vector(torch.zeros(64), 3, 0)
    early, late = _WeightedMagnitudes(g, source, probe), _WeightedMagnitudes(g, source)
    rows = probe.abs().reshape(1, -1)
    assert torch.equal(early(rows), late(rows))
    expected = torch.einsum("b,bo,bi->oi", rows[0], g[:, 0].abs(), source[:, 0].abs())
    torch.testing.assert_close(early(rows), expected.reshape(1, -1))
    other = rows.clone()
    other[0, 7] *= 2
    assert torch.equal(early(other), late(other))
    assert not torch.equal(early(other), early(rows))
