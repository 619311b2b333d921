"""Round 2, session 33: the code beneath a result where autograd hands a sparse ``.grad``;
the words for a proved pairing; the Laplacian's stated colours.

Expected numbers come from plain ``backward`` / ``torch.autograd.functional.jacobian`` loops
over the test's own graph, never from the code under test.
"""
from __future__ import annotations

import torch
from torch import nn

import vjp_magic


def _run(code: str, namespace: dict) -> dict:
    exec(compile(code, "<code>", "exec"), namespace)  # noqa: S102 - the code is written to run
    return namespace


def _embedding():
    torch.manual_seed(0)
    emb = nn.Embedding(10, 4, sparse=True)
    y = emb(torch.tensor([[1, 2, 1], [7, 0, 9]])).pow(2).sum((1, 2))
    w = emb.weight
    expected = torch.stack([torch.autograd.grad(y[b], w, retain_graph=True)[0].to_dense()
                            for b in range(2)])
    return y, w, expected


# -- 1. sparse .grad ------------------------------------------------------------------------
def test_r_code_reads_a_sparse_embedding_grad_densely():
    y, w, expected = _embedding()
    r = vjp_magic.differentiate(y, w, names="w")
    ns = _run(r.code, {"torch": torch, "y": y, "w": w})
    torch.testing.assert_close(ns["d_w"], expected)
    assert w.grad is None


def test_the_loop_beneath_a_sparse_embedding_runs_and_gives_the_numbers():
    y, w, expected = _embedding()
    r = vjp_magic.differentiate(y, w, names="w")
    text = r._repr_mimebundle_()["text/markdown"]
    (loop,) = [block.split("```")[0] for block in text.split("```python\n")[1:]
               if "backward" in block]
    ns = _run(loop, {"torch": torch, "y": y, "w": w})
    torch.testing.assert_close(ns["d_w"], expected)


def test_r_code_of_a_gather_with_sparse_gradients_gives_r_derivatives():
    x = torch.arange(20, dtype=torch.float64).reshape(4, 5).requires_grad_()
    idx = torch.tensor([[0, 1, 2, 3, 0], [3, 3, 1, 0, 2], [1, 0, 0, 2, 3]])
    y = torch.gather(x, 0, idx, sparse_grad=True) ** 2
    r = vjp_magic.differentiate(y, x)
    ns = _run(r.code, {"torch": torch, "y": y, "x": x})
    jac = torch.autograd.functional.jacobian(lambda t: torch.gather(t, 0, idx) ** 2,
                                             x.detach())
    torch.testing.assert_close(ns["d_x"], jac.sum(1))  # ones along the point axis (columns)


def test_a_dense_input_beside_a_sparse_one_keeps_its_plain_grad():
    y, w, _ = _embedding()
    s = torch.tensor([1.5, -2.0], requires_grad=True)
    z = y * s
    r = vjp_magic.differentiate(z, {"w": w, "s": s})
    assert "w.grad.to_dense()" in r.code
    assert "s.grad.to_dense()" not in r.code
    ns = _run(r.code, {"torch": torch, "y": z, "w": w, "s": s})  # (the output is y)
    rows = torch.stack([torch.autograd.grad(z[b], w, retain_graph=True)[0].to_dense()
                        for b in range(2)])
    torch.testing.assert_close(ns["d_w"].reshape(rows.shape), rows)
    torch.testing.assert_close(ns["d_s"], y.detach())
