"""Sparse results of differentiate (issue 20): r.jacobian(name, layout=torch.sparse_csr) for
points, dense and sparse results; the coloured gradient vectors; the fallbacks."""
import pytest
import torch
import torch.nn.functional as F

import vjp_magic
from vjp_magic.core.compressed import SPARSE_MIN_OUTPUT, SparseJacobian
from vjp_magic.core.pairing import Evidence


def stencil(x):
    p = F.pad(x, (1, 1))
    return p[2:] + p[:-2] - 2 * x + x ** 3


def _reference(f, x):
    y = f(x.detach())
    return torch.autograd.functional.jacobian(f, x.detach()).reshape(y.numel(), x.numel())


def _roll_mix(x):  # periodic neighbours, 2-D: a pattern that is no pairing of axes
    return x.roll(1, 0) * x + x.roll(-1, 1).sin()


CASES = {
    "points": (lambda x: x.sin() * 3, (60,)),
    "rows": (lambda x: x.softmax(-1), (6, 8)),
    "dense": (lambda x: torch.outer(x, x).sum(0).tanh() * x.sum(), (40,)),
    "small": (lambda x: x.cumsum(0) * x, (5,)),
    "stencil": (stencil, (96,)),  # over SPARSE_MIN_ENTRIES: smaller ones are shown whole
    "periodic 2-D": (_roll_mix, (9, 10)),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("exact_up_to", [0, 2**18])  # the per-pairing and the exact path
def test_csr_layout_equals_autograd_jacobian(case, exact_up_to):
    f, shape = CASES[case]
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    y = f(x)
    r = vjp_magic.differentiate(y, x, seed=1, exact_up_to=exact_up_to)
    csr = r.jacobian("x", layout=torch.sparse_csr)
    expected = _reference(f, x)
    assert csr.layout == torch.sparse_csr and csr.shape == expected.shape
    torch.testing.assert_close(csr.to_dense(), expected)
    torch.testing.assert_close(r.jacobian("x"), expected.reshape(y.shape + x.shape))
    rows, cols = torch.tensor([0, 3, y.numel() - 1, 3]), torch.tensor([2, 0, x.numel() - 1])
    torch.testing.assert_close(r.jacobian_block("x", rows, cols), expected[rows][:, cols])
    assert x.grad is None


def test_which_results_are_sparse():
    got = {}
    for case, (f, shape) in CASES.items():
        x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
        got[case] = vjp_magic.differentiate(f(x), x, seed=2).inputs["x"].sparse is not None
    # points stay points, dense stays dense, a small output keeps its full Jacobian
    assert got == {"points": False, "rows": False, "dense": False, "small": False,
                   "stencil": True, "periodic 2-D": True}


def test_coloured_gradients_cover_each_entry_once_and_give_every_nonzero():
    x = torch.randn(9, 11, dtype=torch.float64, requires_grad=True)
    y = _roll_mix(x)
    r = vjp_magic.differentiate(y, x, seed=3)
    sparse = r.inputs["x"].sparse
    assert isinstance(sparse, SparseJacobian) and sparse.evidence in tuple(Evidence)
    vectors = list(r.gradients["x"])
    assert len(vectors) == sparse.count == len(r.gradients["x"]) < y.numel() / 4
    for v in vectors:
        assert v.shape == y.shape and v.dtype == y.dtype
        assert bool(((v == 0) | (v == 1)).all())
    assert torch.equal(sum(vectors), torch.ones_like(y))  # every entry exactly once
    J = _reference(_roll_mix, x)  # (99 × 99)
    products = torch.stack([torch.autograd.grad(y, x, v, retain_graph=True)[0].reshape(-1)
                            for v in vectors])
    colour = sparse.colours
    rows, cols = J.nonzero(as_tuple=True)
    torch.testing.assert_close(products[colour[rows], cols], J[rows, cols])
    assert sparse.nnz == len(rows) and sparse.matrix.shape == J.shape
    assert r.derivatives["x"].layout == torch.sparse_coo
    assert r.derivatives["x"].shape == y.shape + x.shape
    torch.testing.assert_close(r.derivatives["x"].to_dense().reshape(J.shape), J)


def test_points_csr_is_built_without_densifying_and_keeps_the_nonzeros():
    x = torch.randn(200, 3, dtype=torch.float64, requires_grad=True)
    y = x.softmax(-1) * 2  # rows are points: (200 × 3) blocks of 3 × 3
    r = vjp_magic.differentiate(y, x, seed=4)
    csr = r.jacobian("x", layout=torch.sparse_csr)
    assert r.inputs["x"].sparse is None and csr._nnz() == 200 * 9
    torch.testing.assert_close(csr.to_dense(), _reference(lambda t: t.softmax(-1) * 2, x))


def test_other_layouts_are_refused():
    x = torch.randn(40, requires_grad=True)
    r = vjp_magic.differentiate(stencil(x), x)
    with pytest.raises(vjp_magic.VJPUsageError, match="sparse_csr"):
        r.jacobian("x", layout=torch.sparse_coo)


def test_strided_jacobian_of_a_sparse_result_over_the_budget_says_use_csr():
    x = torch.randn(3000, requires_grad=True)
    r = vjp_magic.differentiate(stencil(x), x, memory_budget=10**6)
    assert r.inputs["x"].sparse is not None
    with pytest.raises(vjp_magic.VJPUsageError, match=r"layout=torch\.sparse_csr"):
        r.jacobian("x")
    assert r.jacobian("x", layout=torch.sparse_csr)._nnz() == 3 * 3000 - 2


def test_full_keeps_the_dense_jacobian():
    x = torch.randn(64, dtype=torch.float64, requires_grad=True)
    r = vjp_magic.differentiate(stencil(x), x, full=True)
    assert r.inputs["x"].sparse is None and r.derivatives["x"].layout == torch.strided
    torch.testing.assert_close(r.derivatives["x"], _reference(stencil, x))


def test_below_the_output_threshold_the_display_keeps_its_full_jacobian():
    x = torch.randn(SPARSE_MIN_OUTPUT - 1, dtype=torch.float64, requires_grad=True)
    r = vjp_magic.differentiate(stencil(x), x)
    assert r.inputs["x"].sparse is None and r.derivatives["x"].layout == torch.strided
    assert len(r.gradients["x"]) == SPARSE_MIN_OUTPUT - 1  # one-hot rows, as before


class _HiddenCoupling(torch.autograd.Function):
    """Identity forward; its backward adds the neighbour's gradient only when every entry of
    the incoming gradient is non-zero: 0/1 and set probes see a diagonal."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        if bool((grad != 0).all()):
            return grad + grad.roll(1)
        return grad


@pytest.mark.parametrize("exact_up_to", [0, 2**18])
def test_hidden_coupling_falls_back_to_a_correct_result(exact_up_to):
    n = 48
    x = torch.randn(n, dtype=torch.float64, requires_grad=True)
    y = stencil(_HiddenCoupling.apply(x))
    r = vjp_magic.differentiate(y, x, seed=5, exact_up_to=exact_up_to)
    expected = torch.stack([torch.autograd.grad(y, x, torch.eye(n, dtype=x.dtype)[i] + 0,
                                                retain_graph=True)[0] for i in range(n)])
    torch.testing.assert_close(r.jacobian("x"), expected)
    torch.testing.assert_close(r.jacobian("x", layout=torch.sparse_csr).to_dense(), expected)
    assert x.grad is None


def test_a_sparse_pattern_over_the_budget_is_refused_with_its_nonzero_count():
    x = torch.randn(20_000, requires_grad=True)
    with pytest.raises(vjp_magic.VJPUsageError, match=r"59,998 nonzeros that would need"):
        vjp_magic.differentiate(stencil(x), x, memory_budget=200_000)


@pytest.mark.parametrize("exact_up_to", [0, 2**18])
def test_a_small_input_beside_a_sparse_one_keeps_its_full_jacobian_without_a_note(exact_up_to):
    x = torch.randn(96, dtype=torch.float64, requires_grad=True)
    w = torch.tensor([1.0, 0.5], dtype=torch.float64, requires_grad=True)

    def f(x, w):
        return stencil(x) * w[0] + x * w[1]

    r = vjp_magic.differentiate(f(x, w), {"x": x, "w": w}, seed=6, exact_up_to=exact_up_to)
    assert r.inputs["x"].sparse is not None and r.inputs["w"].sparse is None
    assert not [note for note in r.notes if "sparsity" in note]
    jx, jw = torch.autograd.functional.jacobian(f, (x.detach(), w.detach()))
    torch.testing.assert_close(r.jacobian("x", layout=torch.sparse_csr).to_dense(), jx)
    torch.testing.assert_close(r.derivatives["w"], jw)
