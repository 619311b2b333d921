"""The index arrays of a pattern held as diagonals, built by doubling adds (the large ones by
torch into numpy's memory) and one arange per stretch of rows: equal to their definitions
(r + keys[k] row-major; (r + 1)·K less the missing entries of the rows up to r)."""
import numpy as np
import pytest

from vjp_magic.core.indexmaps.offsets import PARALLEL_ENTRIES, _diagonal_crow, diagonal_columns


@pytest.mark.parametrize("m", [0, 1, 2, 7, 1000, PARALLEL_ENTRIES // 3 + 5, 200_003])
@pytest.mark.parametrize("keys", [[0], [-1, 0, 1], [-7, 3], list(range(-4, 5))])
def test_diagonal_columns_are_rows_plus_their_offsets(m, keys):
    keys = np.array(keys, dtype=np.int64)
    expected = (np.arange(m, dtype=np.int64)[:, None] + keys[None, :]).reshape(-1)
    got = diagonal_columns(keys, m)
    assert got.dtype == np.int64 and np.array_equal(got, expected)


@pytest.mark.parametrize("m", [1, 2, 5, 1000, 100_001])
@pytest.mark.parametrize("rows", ["none", "first", "last", "ends", "random"])
def test_diagonal_crow_counts_each_rows_kept_entries(m, rows):
    k, rng = 3, np.random.default_rng(m)
    chosen = {"none": [], "first": [0], "last": [m - 1], "ends": sorted({0, m - 1}),
              "random": sorted(set(rng.integers(0, m, 6).tolist()))}[rows]
    rows = np.array(chosen, dtype=np.int64)
    counts = rng.integers(1, k + 1, len(rows)).astype(np.int64)
    per_row = np.full(m, k, dtype=np.int64)
    per_row[rows] -= counts
    expected = np.concatenate([[0], np.cumsum(per_row)])
    got = _diagonal_crow(rows, counts, m, k)
    assert got.dtype == np.int64 and np.array_equal(got, expected)
