"""Adversarial review, session 34 (G12: trust). Classes the earlier reviews did not cover:

1. a backward PyTorch batches wrongly: ``torch.func.vmap`` over ``autograd.grad`` through
   ``torch.cdist`` gives every vector the first one's answer (PyTorch's batching of
   ``_cdist_backward``; ``torch.func.jacrev`` of cdist is wrong for the same reason).
   ``differentiate`` checks its vectorised passes against a plain one and is right;
   ``sparse_jacobian``'s exact fallback and ``dependency``'s grouped probes use them unchecked;
2. a backward with no double backward that raises ``NotImplementedError`` (not the
   ``RuntimeError`` the column passes catch): ``_cdist_backward``;
3. the column-observed pattern where the sampled rows call every column dense (nothing is
   left for the grouped probes);
4. ``hessian`` where the analysis of the gradient D pairs only an axis of size 1 and computes
   D's Jacobian sparse (full shape, as documented for sparse results): read as if that axis
   were left out.

Expected values: ``torch.autograd.functional.jacobian`` (plain, not vectorised: one backward
per output entry) or mathematics. Tests marked ``xfail(strict=True)`` are bugs found in this
review (they pass once fixed and then lose the mark); unmarked ones guard what held.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import vjp_magic


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _distance_case():
    """y = cdist(x, c): the distances of the 3 rows of x to 2 fixed points; y[i, k] reads
    row i of x only."""
    c = torch.randn(2, 2, dtype=torch.float64, generator=_generator(1))
    x = torch.randn(3, 2, dtype=torch.float64, generator=_generator(0)).requires_grad_()
    expected = torch.autograd.functional.jacobian(lambda t: torch.cdist(t, c), x.detach())
    return x, torch.cdist(x, c), expected


# -- 1. a backward PyTorch batches wrongly ----------------------------------------------------

def test_differentiate_of_a_distance_matrix_is_right():
    x, y, expected = _distance_case()
    r = vjp_magic.differentiate(y, x, seed=0)
    torch.testing.assert_close(r.jacobian("x"), expected)


def test_sparse_jacobian_of_a_distance_matrix_is_right():
    x, y, expected = _distance_case()
    got = vjp_magic.sparse_jacobian(y, x, seed=0).to_dense()
    torch.testing.assert_close(got, expected.reshape(6, 6))


def test_dependency_of_a_distance_matrix_is_the_diagonal():
    x, y, expected = _distance_case()
    d = vjp_magic.dependency(y, x, 0, 0, seed=0)
    assert d.pattern.tolist() == torch.eye(3, dtype=torch.bool).tolist()
    assert d.kind != "lower-triangular"


def test_dependency_of_a_prototype_networks_losses_is_per_sample():
    torch.manual_seed(0)
    enc, prototypes = nn.Linear(4, 3), torch.randn(3, 3)
    x = torch.randn(2, 4, requires_grad=True)
    losses = F.cross_entropy(-torch.cdist(enc(x), prototypes), torch.tensor([0, 2]),
                             reduction="none")
    d = vjp_magic.dependency(losses, x, 0, 0, seed=0)
    assert d.pattern.tolist() == [[True, False], [False, True]]


# -- 2. a backward without double backward that raises NotImplementedError ------------------

def test_sparse_jacobian_of_a_distance_matrix_does_not_crash():
    x, y, expected = _distance_case()
    got = vjp_magic.sparse_jacobian(y, x, seed=2).to_dense()
    torch.testing.assert_close(got, expected.reshape(6, 6))


# -- 3. every column of J dense ---------------------------------------------------------------

def test_sparse_jacobian_where_every_column_is_dense():
    m = torch.randn(3, 3, generator=_generator(0))
    x = torch.randn(4, 3, generator=_generator(0)).requires_grad_()

    def f(t):  # y[i] = max_k ((t[i] + t[3 - i]) @ m)[k]: rows i and 3 - i of x, all columns
        return ((t + t.flip(0)) @ m).amax(1)

    expected = torch.autograd.functional.jacobian(f, x.detach()).reshape(4, 12)
    got = vjp_magic.sparse_jacobian(f(x), x, seed=7).to_dense()
    torch.testing.assert_close(got, expected)


# -- 4. a Hessian whose gradient D pairs only an axis of size 1 -----------------------------

def test_hessian_of_a_periodic_chain_with_a_batch_axis_of_one():
    x = torch.randn(1, 65, dtype=torch.float64, generator=_generator(0)).requires_grad_()

    def s(t):  # a periodic chain's energy: each x[0, j] meets its two neighbours
        return (t * t.roll(1, 1)).sum()

    expected = torch.autograd.functional.hessian(s, x.detach())
    h = vjp_magic.hessian(s(x), x, seed=0)
    torch.testing.assert_close(h.hessian("x"), expected)


def test_hessian_of_a_channel_softmax_with_a_leading_axis_of_one():
    x = torch.randn(1, 2, 49, dtype=torch.float64, generator=_generator(3)).requires_grad_()
    c = torch.randn(1, 2, 49, dtype=torch.float64, generator=_generator(103))

    def s(t):
        return (torch.sin(t.softmax(1)) * c).sum()

    expected = torch.autograd.functional.hessian(s, x.detach())
    h = vjp_magic.hessian(s(x), x, seed=0)
    torch.testing.assert_close(h.hessian("x"), expected)


def test_vector_hessian_of_differences_of_a_column_vector():
    x = torch.linspace(0, 1, 40, dtype=torch.float64).reshape(40, 1).requires_grad_()

    def f(t):
        return (t[1:] - t[:-1]) ** 2

    expected = torch.autograd.functional.jacobian(
        lambda t: torch.autograd.functional.jacobian(f, t, create_graph=True), x.detach())
    h = vjp_magic.hessian(f(x), x, seed=0)
    torch.testing.assert_close(h.hessian("x"), expected)
