"""Sparse edge cases: a leaky batch (one row reads another) at B = 4,096, whose Jacobian the
analysis computes by compressed passes instead of refusing the full one, with the values of
the mathematics; the identity map (y is x)."""
import torch

import vjp_magic


def test_a_leaky_batch_at_4096_is_computed_sparse_not_refused():
    torch.manual_seed(2)
    x = torch.randn(4096, 16, dtype=torch.float64, requires_grad=True)
    w = torch.randn(16, 16, dtype=torch.float64)
    h = torch.tanh(x @ w)
    y = torch.index_add(h, 0, torch.tensor([1]), 0.1 * x[:1])
    r = vjp_magic.differentiate(y, x, memory_budget=2**26, seed=0)
    sparse = r.inputs["x"].sparse
    assert sparse is not None
    j = r.jacobian("x", layout=torch.sparse_csr)
    # rows (b, k): ∂y[b, k]/∂x[b, l] = (1 − h[b, k]²) w[l, k]; row 1 also 0.1 δ_kl on x[0]
    rows = torch.tensor([0, 1, 2, 4095])
    dense = torch.stack([j[int(b) * 16 + k].to_dense() for b in rows for k in range(16)])
    dense = dense.reshape(len(rows), 16, 4096, 16)
    d = (1 - h.detach() ** 2)
    for i, b in enumerate(rows.tolist()):
        expected = torch.zeros(16, 4096, 16, dtype=torch.float64)
        expected[:, b, :] = (d[b][:, None] * w.t())
        if b == 1:
            expected[:, 0, :] += 0.1 * torch.eye(16, dtype=torch.float64)
        torch.testing.assert_close(dense[i], expected)
    assert j.col_indices().numel() == 4096 * 16 * 16 + 16  # every block, and the leak
    assert x.grad is None


def test_the_identity_map_has_the_identity_jacobian():  # y is x: a composition of no ops
    x = torch.randn(5, dtype=torch.float64, requires_grad=True)
    got = vjp_magic.sparse_jacobian(x, x)
    assert got.layout == torch.sparse_csr
    torch.testing.assert_close(got.to_dense(), torch.eye(5, dtype=torch.float64))
