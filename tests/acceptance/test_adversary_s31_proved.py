"""Adversarial review, session 31 (issue 20): a pattern called "proved" must hold for every x.

The index-map rules read index tensors, masks and conditions the graph saved (gather / index /
take / index_select / scatter indices, ``torch.where``'s condition, ``masked_fill``'s mask).
Where those tensors are constants the proved pattern holds at every x. Where they were
computed from x itself (``x.argsort()``, ``x > 0``), the pattern holds only at this x, yet
the result says "Proved from the autograd graph: the pattern holds for every x" (evidence
``proved``). Each case evaluates the claimed pattern at a second x with ``torch.func.jacrev``
/ ``torch.func.hessian``.

Owner's decision (s31, T1): a proof that read saved selections is a proof for THIS graph's
selections. Evidence stays ``proved``, the result names the ops whose selections it read
(``conditional_on``) and the display says "Proved from the autograd graph, given the indices
and masks it saved (…): the pattern holds for every x that gives the same ones". The tests
below assert that: proved ⇒ the pattern holds at another x, or the proof is conditional and
its words say so.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import vjp_magic

N = 96
HN = 2100  # a scalar of 2,048 entries or more is tried sparse
_G = torch.Generator().manual_seed(5)
INDEX = torch.randint(0, N, (N,), generator=_G)  # a constant index, with repeats
MASK = torch.rand(N, generator=_G) > 0.5  # a constant mask


def _support(matrix: torch.Tensor) -> torch.Tensor:
    """The claimed pattern: the stored entries of a CSR matrix, as a dense bool matrix."""
    crow, col = matrix.crow_indices(), matrix.col_indices()
    rows = torch.repeat_interleave(torch.arange(matrix.shape[0]), crow.diff())
    support = torch.zeros(matrix.shape, dtype=torch.bool)
    support[rows, col] = True
    return support


def _claimed(f, shape, seed=1, words=False):
    x = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    x.requires_grad_()
    r = vjp_magic.differentiate(f(x), x, seed=0, exact_up_to=0)
    if words:
        return r.inputs["x"].sparse, x, " ".join(repr(r).split())
    return r.inputs["x"].sparse, x


GIVEN = "Proved from the autograd graph, given the indices and masks it saved ("
EVERY_SAME = "the pattern holds for every x that gives the same ones."


def _says_conditional(sparse, text: str) -> bool:
    """The proof names the saved selections it read, and the display says so in words."""
    given = tuple(getattr(sparse, "conditional_on", ()))
    return bool(given) and f"{GIVEN}{', '.join(given)}): {EVERY_SAME}" in text


def _missed_elsewhere(f, shape, matrix) -> int:
    """Nonzeros of the Jacobian at another x that the claimed pattern leaves out."""
    other = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    jacobian = torch.func.jacrev(f)(other).reshape(matrix.shape)
    return int(((jacobian != 0) & ~_support(matrix)).sum())


CONSTANT = {
    "gather by a constant index": (lambda x: x[INDEX] * x.roll(1), (N,)),
    "where by a constant mask": (lambda x: torch.where(MASK, x.roll(1), x.roll(-1)) * x, (N,)),
    "masked_fill by a constant mask": (lambda x: x.roll(2).masked_fill(MASK, 0.) * x, (N,)),
    "take by a constant index": (lambda x: x.take(INDEX) ** 2, (N,)),
    "scatter by a constant index": (
        lambda x: torch.zeros(N, dtype=x.dtype).scatter(0, INDEX.argsort(), x ** 2), (N,)),
}

FROM_X = {
    "x[x.argsort()]": (lambda x: x[x.argsort()] * x, (N,)),
    "index_select by x.argsort()": (lambda x: x.index_select(0, x.argsort()) * x, (N,)),
    "take by x.argsort()": (lambda x: x.take(x.argsort()) * x, (N,)),
    "scatter by x.argsort()": (
        lambda x: torch.zeros(N, dtype=x.dtype).scatter(0, x.argsort(), x ** 2), (N,)),
    "gather by x.argmax()": (
        lambda x: x.roll(1).gather(0, x.argmax().reshape(1).expand(N)) * x, (N,)),
    "torch.where(x > 0, ...)": (lambda x: torch.where(x > 0, x.roll(1), x.roll(-1)), (N,)),
    "masked_fill(x > 0, 0)": (lambda x: x.roll(1).masked_fill(x > 0, 0.) * x, (N,)),
    # the saved argmax of max pooling and of max / kthvalue / median along a dim
    "max_pool1d": (lambda x: F.max_pool1d(x[None, None], 3, 1, padding=1)[0, 0] * x.roll(1),
                   (N,)),
    "max_pool2d": (lambda x: F.max_pool2d(x[None, None], 3, 1, padding=1)[0, 0]
                   * x.roll(1, 0), (8, 12)),
    "max over windows": (lambda x: x.unfold(0, 3, 1).max(1).values * x[:-2], (N,)),
    "kthvalue over windows": (lambda x: x.unfold(0, 3, 1).kthvalue(2, 1).values * x[:-2],
                              (N,)),
    "median over shifts": (
        lambda x: torch.stack([x, x.roll(1), x.roll(-1)]).median(0).values * x, (N,)),
}


@pytest.mark.parametrize("case", list(CONSTANT))
def test_a_pattern_proved_from_constant_indices_holds_at_another_x(case):
    f, shape = CONSTANT[case]
    sparse, x, text = _claimed(f, shape, words=True)
    assert sparse is not None and str(sparse.evidence) == "proved"
    assert _missed_elsewhere(f, shape, sparse.matrix) == 0
    assert _says_conditional(sparse, text)  # a bare graph cannot tell a constant index
    assert "the pattern holds for every x." not in text
    assert x.grad is None


@pytest.mark.parametrize("case", list(FROM_X))
def test_a_pattern_called_proved_holds_at_another_x(case):
    f, shape = FROM_X[case]
    sparse, _, text = _claimed(f, shape, words=True)
    assert sparse is not None  # values at this x are right: the claim is what is checked
    if str(sparse.evidence) == "proved":
        assert _missed_elsewhere(f, shape, sparse.matrix) == 0 or _says_conditional(sparse, text)


def test_values_at_this_x_are_still_right_where_the_index_comes_from_x():
    """The finding above is about the claim, not the numbers."""
    for f, shape in FROM_X.values():
        x = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        expected = torch.func.jacrev(f)(x)
        expected = expected.reshape(f(x).numel(), x.numel())
        x.requires_grad_()
        got = vjp_magic.sparse_jacobian(f(x), x, seed=2).to_dense()
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


HESSIANS = {
    "torch.where(x > 0, ...)": lambda x: torch.where(x > 0, x * x.roll(1), x * x.roll(-1)).sum(),
    "x[x.argsort()]": lambda x: (x[x.argsort()] * x.roll(1)).pow(2).sum(),
}


@pytest.mark.parametrize("case", list(HESSIANS))
def test_a_hessian_pattern_called_proved_holds_at_another_x(case):
    f = HESSIANS[case]
    x = torch.randn(HN, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    expected = torch.func.hessian(f)(x)
    x.requires_grad_()
    h = vjp_magic.hessian(f(x), x, seed=0)
    matrix = h.hessian("x", layout=torch.sparse_csr)
    torch.testing.assert_close(matrix.to_dense(), expected)  # right here
    sparse = h.inputs["x"].sparse
    if str(sparse.evidence) == "proved":
        other = torch.randn(HN, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
        missed = int(((torch.func.hessian(f)(other) != 0) & ~_support(matrix)).sum())
        given = ", ".join(getattr(sparse, "conditional_on", ()))
        text = " ".join(repr(h).split())
        assert missed == 0 or (given and f"that gives the same indices and masks it saved "
                                         f"({given})" in text
                               and "for every x;" not in text), (missed, given)
