"""Round 2, session 33: the code beneath a result where autograd hands a sparse ``.grad``;
the words for a proved pairing; the Laplacian's stated colours.

Expected numbers come from plain ``backward`` / ``torch.autograd.functional.jacobian`` loops
over the test's own graph, never from the code under test.
"""
from __future__ import annotations

import dataclasses
import math
import re

import pytest
import torch
from torch import nn

import vjp_magic
from vjp_magic.render import graph_facts


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


# -- 2. a proved pairing is not one function ---------------------------------------------------
def _plain(r) -> str:
    return r._repr_mimebundle_()["text/plain"]


@pytest.mark.parametrize("body", [
    "x ** torch.tensor([1., 2., 3.])",
    "x * torch.tensor([1., 2., 3.])",
    "(x + torch.tensor([1., 2., 3.])) ** 2",
    "torch.where(torch.tensor([True, False, True]), x.sin(), x.cos())",
    "x * x.detach().flip(0)",
    "torch.nn.functional.dropout(x, 0.5)",
])
def test_a_proved_pairing_of_different_functions_names_no_one_f(body):
    torch.manual_seed(0)
    x = torch.tensor([1., 2., 3.], requires_grad=True)
    r = vjp_magic.differentiate(eval(body), x)  # noqa: S307 - the test's own expressions
    text = _plain(r)
    assert "one function f" not in text and "f'" not in text
    assert "entry i of y uses entry i of x only" in text  # what is proved is still said


@pytest.mark.parametrize("body", ["x ** 2", "torch.sin(x) * x * 2", "torch.softmax(x, 0) * 3"])
def test_one_function_at_every_point_keeps_the_tutorials_words(body):
    x = torch.tensor([1., 2., 3.], requires_grad=True)
    r = vjp_magic.differentiate(eval(body), x)  # noqa: S307 - the test's own expressions
    if r.inputs["x"].has_points:
        assert "applies one function f at 3 points" in _plain(r)


def test_rows_sharing_a_weight_are_one_scalar_function_rows_scaled_apart_are_not():
    torch.manual_seed(0)
    x = torch.randn(4, 3, requires_grad=True)
    shared = vjp_magic.differentiate((x * x * torch.tensor([-1., 1., 2.])).sum(1), x)
    assert "one scalar function f" in _plain(shared)
    apart = vjp_magic.differentiate((x * x * torch.tensor([[1.], [2.], [3.], [4.]])).sum(1), x)
    assert "one scalar function" not in _plain(apart)
    torch.testing.assert_close(apart.derivatives["x"],
                               2 * x.detach() * torch.tensor([[1.], [2.], [3.], [4.]]))


def test_the_hessian_headline_names_no_f_for_different_functions():
    x = torch.tensor([2., 2., 2.], requires_grad=True)
    h = vjp_magic.hessian(x ** torch.tensor([1., 2., 3.]), x)
    text = _plain(h)
    assert "″ at each" not in text and "at each of the 3 points of x" in text
    torch.testing.assert_close(h.derivatives["x"], torch.tensor([0., 2., 12.]))
    assert "f″ at each of the 3 points" in _plain(vjp_magic.hessian(x ** 3, x))


def test_the_one_function_walk_runs_no_checkpoint_recomputation():
    from torch.utils.checkpoint import checkpoint
    calls = []

    def block(t):
        calls.append(1)
        return t.sin() * 2

    x = torch.tensor([1., 2., 3.], requires_grad=True)
    r = vjp_magic.differentiate(lambda: checkpoint(block, x, use_reentrant=False), x)
    y = checkpoint(block, x, use_reentrant=False)  # (y's own graph: refused by differentiate)
    before = len(calls)
    found = graph_facts.facts(dataclasses.replace(r, output=y))  # the walk, on y's graph
    assert len(calls) == before  # it ran no unpack hook (a checkpoint's recomputation)
    assert found["one_function"] == frozenset()  # the saved values it cannot read: unknown
    torch.testing.assert_close(r.derivatives["x"], 2 * torch.cos(x.detach()))


# -- 3. the colours a display states are r.gradients' -----------------------------------------
def _stated(text: str, shape) -> torch.Tensor | None:
    """Each entry's colour as the display states it: '(a·i + b·j) mod p = c' (a coefficient
    1 unwritten), or 'entries 0, p, 2p, …' (the flat index mod p)."""
    i, j = torch.unravel_index(torch.arange(math.prod(shape)), shape)
    found = re.search(r"\((\d*)i \+ (\d*)j\) mod (\d+) = c", text)
    if found:
        a, b, p = (int(g or 1) for g in found.groups())
        return (a * i + b * j) % p
    found = re.search(r"entries 0, (\d+), (\d+), … of y", text)
    assert found and 2 * int(found.group(1)) == int(found.group(2)), text
    return torch.arange(math.prod(shape)) % int(found.group(1))


@pytest.mark.parametrize("shape", [(40, 40), (7, 13), (12, 30)])
def test_the_laplacians_stated_colouring_is_the_one_r_gradients_holds(shape):
    import torch.nn.functional as F  # noqa: N812 - as the tutorial's readers write it
    torch.manual_seed(0)
    u = torch.rand(*shape, requires_grad=True)
    q = F.pad(u, (1, 1, 1, 1))
    lap = q[:-2, 1:-1] + q[2:, 1:-1] + q[1:-1, :-2] + q[1:-1, 2:] - 4 * u + u ** 3
    r = vjp_magic.differentiate(lap, u, names="u")
    stated = _stated(_plain(r), shape)
    assert len(r.gradients["u"]) == 5
    for c, v in enumerate(r.gradients["u"]):
        assert torch.equal(v.reshape(-1) != 0, stated == c), c
