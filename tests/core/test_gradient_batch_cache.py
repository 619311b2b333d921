"""One-hot gradient arguments: every component's vectors kept at once where they are small
and sliced per chunk; each chunk is the identity's rows (mathematics), whatever was asked
before."""
from __future__ import annotations

import torch

from vjp_magic.core import derivatives


def test_chunks_are_rows_of_the_identity_in_any_order():
    y = torch.zeros(6, 5)
    eye = torch.eye(30)
    for start, stop in [(0, 1), (1, 30), (7, 9), (0, 30), (29, 30)]:
        batch = derivatives.gradient_batch(y, (), start, stop)
        assert batch.shape == (stop - start, 6, 5)
        assert torch.equal(batch.reshape(stop - start, -1), eye[start:stop])


def test_point_axes_select_one_component_at_every_point():
    y = torch.zeros(4, 3, dtype=torch.float64)  # axis 0: points, 3 components each
    for start, stop in [(0, 3), (1, 2), (2, 3)]:
        batch = derivatives.gradient_batch(y, (0,), start, stop)
        assert batch.shape == (stop - start, 4, 3) and batch.dtype == torch.float64
        for k, component in enumerate(range(start, stop)):
            expected = torch.zeros(4, 3, dtype=torch.float64)
            expected[:, component] = 1
            assert torch.equal(batch[k], expected)
