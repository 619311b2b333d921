"""One-hot gradient arguments: each chunk is the identity's rows (mathematics), whatever was
asked before, and each reaches a backward as a tensor of its own."""
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


def test_a_backward_reading_its_gradient_by_as_strided_gets_each_row_whole():
    """as_strided_scatter's backward reads its gradient with as_strided from the storage's
    start: a row of a stacked (or kept) batch of gradient arguments gave it another row's
    values (wrong Jacobians, by plain and by batched passes)."""
    import vjp_magic

    def f(a, b):
        return torch.as_strided_scatter(a, b, (2, 2), (1, 2), storage_offset=0)

    gen = torch.Generator().manual_seed(0)
    a = torch.randn(3, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    b = torch.randn(2, 2, dtype=torch.float64, generator=gen, requires_grad=True)
    expected = torch.autograd.functional.jacobian(f, (a.detach(), b.detach()))
    for seed in range(3):
        for batched in (True, False):
            r = vjp_magic.differentiate(f(a, b), {"a": a, "b": b}, seed=seed, batched=batched)
            for name, jacobian in zip("ab", expected):
                assert torch.equal(r.jacobian(name).reshape(jacobian.shape), jacobian)
