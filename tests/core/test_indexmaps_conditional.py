"""A pattern proved from the graph is conditional exactly where a rule read the VALUES of a saved
selection (issue 20, s31 T1): gather / index / take / index_select / scatter / index_add
indices, ``torch.where``'s condition, ``masked_fill``'s mask, the argmax max pooling and max /
kthvalue / median keep. Those may be computed from x (``x.argsort()``, ``x > 0``), so such a
proof holds for every x that gives the same selections, and ``conditional_on`` names the ops.
Rules that read no selection values (pads, roll, convolutions, slices, cumsum, tril, …) keep the
unconditional claim. Each conditional case also shows, with ``torch.func.jacrev`` at a second
x, why the condition is needed where the selection comes from x."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import vjp_magic
from vjp_magic.core.indexmaps import proved_pattern
from vjp_magic.core.indexmaps.summed import summed_hessian_pattern

N = 40
_G = torch.Generator().manual_seed(3)
INDEX = torch.randint(0, N, (N,), generator=_G)
MASK = torch.rand(N, generator=_G) > 0.5
KERNEL = torch.randn(1, 1, 3, dtype=torch.float64, generator=_G)


def _x(shape=(N,), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, dtype=torch.float64, generator=g).requires_grad_(True)


def _proved(f, shape=(N,)):
    x = _x(shape)
    pattern = proved_pattern(f(x), x, 2**30)
    assert pattern is not None and str(pattern.evidence) == "proved"
    assert x.grad is None
    return pattern


# rule family → cases whose rule reads saved selection values, and the op it names
VALUE_READING = {
    "moves: where": (lambda x: torch.where(MASK, x, x.roll(1)), (N,), "where"),
    "moves: masked_fill": (lambda x: x.masked_fill(MASK, 0.0), (N,), "masked_fill"),
    "moves: gather": (lambda x: x.gather(0, INDEX), (N,), "gather"),
    "moves: index_select": (lambda x: x.index_select(0, INDEX), (N,), "index_select"),
    "moves: indexing": (lambda x: x[INDEX], (N,), "indexing"),
    "moves: take": (lambda x: x.take(INDEX), (N,), "take"),
    "scatters: scatter": (lambda x: torch.zeros_like(x).scatter(0, INDEX.argsort(), x), (N,),
                          "scatter"),
    "scatters: scatter_add": (lambda x: torch.zeros_like(x).scatter_add(0, INDEX, x), (N,),
                              "scatter_add"),
    "scatters: index_add": (lambda x: torch.zeros_like(x).index_add(0, INDEX, x), (N,),
                            "index_add"),
    "pooling: max_pool2d": (lambda x: F.max_pool2d(x[None, None], 2)[0, 0], (6, 8),
                            "max_pool2d"),
    "pooling: max along a dim": (lambda x: x.reshape(8, 5).max(1).values, (N,), "max"),
    "pooling: kthvalue": (lambda x: x.reshape(8, 5).kthvalue(2, 1).values, (N,), "kthvalue"),
    "pooling: median": (lambda x: x.reshape(8, 5).median(1).values, (N,), "median"),
}

STRUCTURAL = {
    "moves: constant pad": lambda x: F.pad(x[:-2], (2, 0)),
    "moves: reflect pad": lambda x: F.pad(x[None, None], (2, 2), mode="reflect")[0, 0],
    "moves: replicate pad": lambda x: F.pad(x[None, None], (3, 0), mode="replicate")[0, 0],
    "moves: roll": lambda x: x.roll(3) * x,
    "moves: flip": lambda x: x.flip(0),
    "moves: slice": lambda x: x[1:] - x[:-1],
    "moves: cat": lambda x: torch.cat([x[5:], x[:5]]),
    "moves: unfold": lambda x: x.unfold(0, 3, 1).sum(1),
    "moves: tril": lambda x: torch.tril(x.reshape(8, 5)).reshape(-1),
    "reductions: cumsum": lambda x: torch.cumsum(x.reshape(8, 5), 1).reshape(-1),
    "reductions: sum along a dim": lambda x: x.reshape(8, 5).sum(1),
    "reductions: prod along a dim": lambda x: x.reshape(8, 5).prod(1),
    "linalg: conv1d": lambda x: F.conv1d(x[None, None], KERNEL, padding=1)[0, 0],
    "linalg: matmul blocks": lambda x: (x.reshape(8, 5) @ torch.ones(5, 2, dtype=x.dtype)
                                        ).reshape(-1),
    "pooling: avg_pool1d": lambda x: F.avg_pool1d(x[None, None], 3, 1, padding=1)[0, 0],
    "copies: circular pad": lambda x: F.pad(x[None, None], (0, 4), mode="circular")[0, 0],
}


@pytest.mark.parametrize("case", list(VALUE_READING))
def test_a_rule_that_reads_saved_selection_values_is_conditional(case):
    f, shape, op = VALUE_READING[case]
    assert _proved(f, shape).conditional_on == (op,)


@pytest.mark.parametrize("case", list(STRUCTURAL))
def test_a_structural_rule_is_unconditional(case):
    assert _proved(STRUCTURAL[case]).conditional_on == ()


def test_every_selection_read_is_named_once():
    def f(x):
        return torch.where(MASK, x[INDEX], x.gather(0, INDEX)).masked_fill(~MASK, 1.0) * x[INDEX]
    given = _proved(f).conditional_on
    assert sorted(given) == ["gather", "indexing", "masked_fill", "where"]


def _support(pattern) -> torch.Tensor:
    rows = torch.repeat_interleave(torch.arange(pattern.shape[0]), pattern.crow.diff())
    support = torch.zeros(pattern.shape, dtype=torch.bool)
    support[rows, pattern.col] = True
    return support


@pytest.mark.parametrize("f", [lambda x: x[x.argsort()] * x,
                               lambda x: torch.where(x > 0, x.roll(1), x.roll(-1)),
                               lambda x: x.roll(1).masked_fill(x > 0, 0.0) * x],
                         ids=["argsort index", "where on x > 0", "masked_fill on x > 0"])
def test_why_the_condition_is_needed(f):
    """A selection computed from x: the pattern proved at this x misses nonzeros at another."""
    pattern = _proved(f)
    assert pattern.conditional_on
    other = _x(seed=9).detach()
    jacobian = torch.func.jacrev(f)(other)
    assert bool(((jacobian != 0) & ~_support(pattern)).any())


def test_the_hessian_pattern_of_a_sum_carries_the_condition():
    x = _x((N,))
    summed = summed_hessian_pattern(torch.where(x > 0, x * x.roll(1), x ** 3).sum(), x, 2**30)
    assert summed is not None and summed.pattern.conditional_on == ("where",)
    plain = summed_hessian_pattern((x * x.roll(1)).sum(), x, 2**30)
    assert plain is not None and plain.pattern.conditional_on == ()


def test_the_jacobian_and_its_words_carry_the_condition():
    x = _x((96,))
    r = vjp_magic.differentiate(x[x.argsort()] * x.roll(1), x, seed=0, exact_up_to=0)
    sparse = r.inputs["x"].sparse
    assert str(sparse.evidence) == "proved" and sparse.conditional_on == ("indexing",)
    text = " ".join(repr(r).split())
    assert "Proved from the autograd graph, given the indices and masks it saved (indexing): " \
           "the pattern holds for every x that gives the same ones." in text
    plain = vjp_magic.differentiate(x * x.roll(1), x, seed=0, exact_up_to=0)
    assert plain.inputs["x"].sparse.conditional_on == ()
    assert "Proved from the autograd graph: the pattern holds for every x." in \
        " ".join(repr(plain).split())


def test_a_sparse_hessian_and_its_words_carry_the_condition():
    x = _x((2100,))
    h = vjp_magic.hessian(torch.where(x > 0, x * x.roll(1), x ** 3).sum(), x, seed=0)
    item = h.inputs["x"]
    assert str(item.sparse.evidence) == "proved" and item.sparse.conditional_on == ("where",)
    assert item.conditional_on == ("where",)
    text = " ".join(repr(h).split())
    assert "(proved for every x that gives the same indices and masks (where))" in text
    assert "the pattern proved from the graph for every x that gives the same indices and " \
           "masks it saved (where);" in text
    plain = vjp_magic.hessian((x * x.roll(1)).sum(), x, seed=0)
    assert plain.inputs["x"].sparse.conditional_on == () == plain.inputs["x"].conditional_on


def test_a_vector_hessian_through_a_conditional_sparse_jacobian():
    """A vector output whose first-order Jacobian is proved sparse given a saved condition:
    the Hessian's item carries it; its values equal torch.func's."""
    x = _x((80,))

    def f(t):
        return torch.where(t > 0, t * t.roll(1), t.roll(-1) ** 2)
    h = vjp_magic.hessian(f(x), x, seed=0)
    expected = torch.func.jacfwd(torch.func.jacrev(f))(x.detach())
    torch.testing.assert_close(h.hessian("x"), expected)
    assert h.inputs["x"].conditional_on == ("where",)
    assert str(h.inputs["x"].evidence) == "proved"
    assert "that gives the same indices and masks (where)" in " ".join(repr(h).split())


def _masked_write(x):
    u = x.clone()
    u.reshape(8, 5)[:, 0].masked_fill_(x.reshape(8, 5)[:, 1] > 0, 0.0)
    return u * x.roll(1)


def _slice_copy(x):
    u = x.clone()
    u[2:7] = x[10:15] * 2
    return u


def _transposed_copy(x):
    u = x.clone()
    u.reshape(8, 5)[:5, :5].t().copy_(x.reshape(8, 5)[3:, :])
    return u


def _strided_fill(x):
    u = x.clone()
    u[::3] = 0.0
    return u * x


def _diagonal_copy(x):
    u = x.clone()
    u.reshape(8, 5)[:5].diagonal().copy_(x[-5:])
    return u


@pytest.mark.parametrize("f", [_slice_copy, _transposed_copy, _strided_fill, _diagonal_copy])
def test_copies_a_copy_into_a_strided_view_is_unconditional(f):
    assert _proved(f).conditional_on == ()


def _clamped_view(x):
    u = x * 1
    u[5:30].clamp_(min=0)
    return u * x.roll(1)


def _index_copied(x):
    u = x * 1
    u[2:12].index_copy_(0, x[:3].detach().argsort(), x[20:23] * 2)
    return u


@pytest.mark.parametrize("f", [_masked_write, _clamped_view, _index_copied])
def test_copies_a_write_into_a_view_that_x_steers_is_conditional(f):
    """The CopySlices replies of a masked, clamped or indexed write look like a copy's; where
    it lands depends on x, so the pattern misses nonzeros at another x."""
    pattern = _proved(f)
    assert pattern.conditional_on == ("an in-place write into a view",)
    misses = [((torch.func.jacrev(f)(_x(seed=s).detach()) != 0) & ~_support(pattern)).any()
              for s in range(9, 15)]
    assert any(bool(m) for m in misses)
