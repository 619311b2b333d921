"""A structure plus a few exceptions (issue 23 item 3, adversary s28): the verdict names the
structure the bulk follows and the witness is the first exception, the dependence that
structure forbids (a future leak inside a packed causal sequence, a distant leak beside a band
or a band with wrap-around); genuinely unstructured patterns stay "sparse".

Functions are built from explicit patterns (index_add over chosen rows and columns); the
expected pattern comes from ``torch.autograd.functional.jacobian``, the expected exceptions
from the construction.
"""
from __future__ import annotations

import pytest
import torch

import vjp_magic
from vjp_magic.core.dependency import Kind, few, full_verdict, verdict


def reading(pattern: torch.Tensor):
    """y[i] = Σ_j tanh(w_ij·x[j] + 0.3) over the j that row i of ``pattern`` holds."""
    rows, cols = pattern.nonzero(as_tuple=True)
    w = torch.rand(rows.numel(), dtype=torch.float64,
                   generator=torch.Generator().manual_seed(2)) + 0.5

    def f(x):
        terms = torch.tanh(x[cols] * w[:, None] + 0.3)
        return torch.zeros(pattern.shape[0], x.shape[1], dtype=x.dtype).index_add(0, rows, terms)
    return f


def truth(f, x) -> torch.Tensor:
    return (torch.autograd.functional.jacobian(f, x.detach()) != 0).any(3).any(1)


def live(pattern: torch.Tensor, seed: int = 0):
    """dependency() on the live graph of ``reading(pattern)``, checked against the Jacobian."""
    f = reading(pattern)
    x = torch.randn(pattern.shape[1], 2, dtype=torch.float64,
                    generator=torch.Generator().manual_seed(seed)).requires_grad_()
    d = vjp_magic.dependency(f(x), x, seed=seed)
    assert torch.equal(d.pattern, truth(f, x))
    return d


def offsets_of(n: int) -> torch.Tensor:
    index = torch.arange(n)
    return index[None, :] - index[:, None]


def band(n: int, lo: int, hi: int) -> torch.Tensor:
    offset = offsets_of(n)
    return (offset >= lo) & (offset <= hi)


def cyclic(n: int, lo: int, hi: int) -> torch.Tensor:
    offset = (offsets_of(n) + n // 2) % n - n // 2
    return (offset >= lo) & (offset <= hi)


def packed_causal(sizes) -> torch.Tensor:
    block = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    return (block[:, None] == block[None, :]) & (offsets_of(sum(sizes)) <= 0)


def with_leaks(pattern: torch.Tensor, leaks) -> torch.Tensor:
    pattern = pattern.clone()
    for leak in leaks:
        pattern[leak] = True
    return pattern


def consistent(d) -> None:
    """kind, witness, offsets, blocks and exceptions agree with each other and the pattern."""
    exceptions = d.exceptions()
    assert all(bool(d.pattern[e]) for e in exceptions)
    assert len(exceptions) <= few(int(d.pattern.sum()))
    assert exceptions == sorted(exceptions)
    if exceptions:
        assert d.witness == exceptions[0]
        assert f"with {len(exceptions)} exception" in d.summary()
    if d.witness is not None:
        assert bool(d.pattern[d.witness])


# -- a band with a distant leak --------------------------------------------------------------
@pytest.mark.parametrize("n, leaks", [(100, [(60, 20)]), (300, [(150, 30), (7, 250)])])
def test_a_band_with_distant_leaks_names_the_band_and_the_first_leak(n, leaks):
    d = live(with_leaks(band(n, -1, 1), leaks))
    assert (d.kind, d.offsets) == ("sparse", (-1, 1))  # the band −1..1 the bulk follows
    assert d.exceptions() == sorted(leaks) and d.witness == min(leaks)
    assert "sparse: band −1..1 with" in d.summary()
    consistent(d)


def test_the_issues_distant_leak_beside_a_band_at_4096():
    n = 4096
    pattern = with_leaks(band(n, -1, 1), [(2048, 1365)])
    found = full_verdict(pattern)
    assert (found.kind, found.witness, found.offsets) == ("sparse", (2048, 1365), (-1, 1))


def test_a_distant_leak_alone_stays_sparse_with_no_band():
    """The diagonal alone is no band to follow: "sparse", the leak its witness (as before)."""
    pattern = with_leaks(torch.eye(300, dtype=torch.bool), [(200, 20)])
    d = live(pattern)
    assert (d.kind, d.witness, d.offsets) == ("sparse", (200, 20), None)
    assert d.exceptions() == []


def test_many_leaks_are_not_a_few_exceptions():
    n = 100
    g = torch.Generator().manual_seed(4)
    rows, cols = torch.randint(0, n, (12,), generator=g), torch.randint(0, n, (12,), generator=g)
    pattern = band(n, -1, 1)
    pattern[rows, cols] = True
    outside = int((pattern & ~band(n, -1, 1)).sum())
    assert outside > few(int(pattern.sum()))  # more than a few (4 of some 300)
    d = live(pattern)
    assert (d.kind, d.offsets) == ("sparse", None)
    off = pattern & ~torch.eye(n, dtype=torch.bool)
    assert d.witness == tuple(off.nonzero()[0].tolist())  # the first off the diagonal


def test_a_near_leak_beside_a_band_is_an_exception_not_a_wider_band():
    """Band −3..1 and y[19] ← x[3] (offset −16): not the band −16..1, which would read as a
    receptive field of 16, but the band −3..1 with the leak as witness."""
    pattern = with_leaks(band(120, -3, 1), [(19, 3)])
    d = live(pattern)
    assert (d.kind, d.witness, d.offsets) == ("sparse", (19, 3), (-3, 1))
    consistent(d)


def test_a_ragged_edge_is_no_exception():
    """A band whose last diagonal is partly filled (as float32 underflow leaves one) is the
    band, not a narrower band with exceptions."""
    n = 200
    pattern = band(n, -4, 0) | ((offsets_of(n) == -5) & (torch.arange(n)[:, None] % 4 == 0))
    assert verdict(pattern) == ("band", (1, 0), (-5, 0))


def test_a_whole_extra_diagonal_widens_the_band():
    """A mask that also lets every t see t − 5 is the band −5..1 (fewer entries than the band
    −1..1 and n − 5 exceptions, and far more than a few)."""
    pattern = band(100, -1, 1) | (offsets_of(100) == -5)
    assert verdict(pattern) == ("band", (0, 1), (-5, 1))


# -- a band with wrap-around and a leak ------------------------------------------------------
def test_a_band_with_wrap_around_and_a_leak_keeps_its_band():
    pattern = with_leaks(cyclic(200, -2, 1), [(151, 54)])
    d = live(pattern)
    assert (d.kind, d.offsets, d.witness) == ("band with wrap-around", (-2, 1), (151, 54))
    assert d.exceptions() == [(151, 54)] and not d.fills_band()
    assert "offsets −2..1 modulo 200 with 1 exception" in d.summary()
    consistent(d)
    clean = live(cyclic(200, -2, 1))
    assert (clean.kind, clean.offsets, clean.witness) == ("band with wrap-around", (-2, 1),
                                                          (0, 1))
    assert clean.exceptions() == [] and clean.fills_band()


# -- packed causal sequences with a future leak inside one -------------------------------------
def packed_attention(x, allowed):
    scores = (x @ x.t()).masked_fill(~allowed, float("-inf"))
    return scores.softmax(1) @ x


@pytest.mark.parametrize("leaks", [[(3, 5)], [(20, 22)], [(3, 5), (12, 14), (17, 9)]])
def test_a_future_leak_inside_a_packed_causal_sequence_is_the_witness(leaks):
    allowed = with_leaks(packed_causal([8] * 8), leaks)
    x = torch.randn(64, 4, dtype=torch.float64, requires_grad=True)
    d = vjp_magic.dependency(packed_attention(x, allowed), x, seed=1)
    assert torch.equal(d.pattern, truth(lambda t: packed_attention(t, allowed), x))
    assert (d.kind, d.blocks) == ("block-lower-triangular", (8,) * 8)
    assert d.exceptions() == sorted(leaks) and d.witness == min(leaks)
    consistent(d)


def test_many_future_reads_inside_blocks_are_block_diagonal():
    """Every block reading its own future (not causal at all) is block-diagonal, as before."""
    allowed = with_leaks(packed_causal([8] * 8), [(8 * k, 8 * k + 1) for k in range(8)])
    found = full_verdict(allowed)
    assert (found.kind, found.blocks, found.witness) == ("block-diagonal", (8,) * 8, (0, 1))


def test_clean_kinds_have_no_exceptions():
    for pattern in (band(50, -2, 1), packed_causal([5, 7, 4, 6]), cyclic(30, -1, 1),
                    torch.ones(6, 6, dtype=torch.bool), torch.eye(6, dtype=torch.bool)):
        f = reading(pattern)
        x = torch.randn(pattern.shape[0], 2, dtype=torch.float64, requires_grad=True)
        d = vjp_magic.dependency(f(x), x, seed=0)
        assert d.exceptions() == [] and d.fills_band(), d.kind
        assert "exception" not in d.summary()


@pytest.mark.parametrize("name", ["gather", "mixup"])
def test_unstructured_patterns_stay_sparse_with_no_band(name):
    n = 300
    g = torch.Generator().manual_seed(11)
    index, perm = torch.randint(0, n, (n,), generator=g), torch.randperm(n, generator=g)
    f = {"gather": lambda x: x[index] * 2, "mixup": lambda x: 0.7 * x + 0.3 * x[perm]}[name]
    x = torch.randn(n, 2, dtype=torch.float64, requires_grad=True)
    d = vjp_magic.dependency(f(x), x, seed=0)
    assert torch.equal(d.pattern, truth(f, x))
    assert (d.kind, d.offsets) == (Kind.SPARSE, None) and d.exceptions() == []


def test_a_causal_future_leak_stays_the_band_that_names_it():
    """A triangle's offsets hold every dependence: a future leak widens it to a band reaching
    the lower corner, and the leak, the first above the diagonal, is the witness."""
    pattern = with_leaks(band(64, -63, 0), [(3, 5)])
    assert verdict(pattern) == ("band", (3, 5), (-63, 2))


# -- many structures, one or two leaks each: the verdict names them ---------------------------
def structure(k: int, g: torch.Generator):
    """A clean band, band with wrap-around, block-diagonal or packed causal pattern."""
    n = int(torch.randint(40, 300, (1,), generator=g))
    lo, hi = (int(v) for v in torch.randint(0, 4, (2,), generator=g))
    if k % 4 == 0:
        return band(n, -lo, hi)
    if k % 4 == 1:
        return cyclic(n, -lo, hi)
    sizes, left = [], n
    while left:
        sizes.append(min(left, int(torch.randint(3, 12, (1,), generator=g))))
        left -= sizes[-1]
    if sizes[-1] < 2:
        sizes[-2] += sizes.pop()
    if k % 4 == 3:
        return packed_causal(sizes)
    block = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    return block[:, None] == block[None, :]


def check_named(k: int) -> None:
    """One or two dependences outside a clean structure (which fills its region): the
    verdict's witness is the first of them."""
    g = torch.Generator().manual_seed(k)
    base = structure(k, g)
    n = base.shape[0]
    leaks = []
    for _ in range(1 + k % 2):
        i, j = (int(v) for v in torch.randint(0, n, (2,), generator=g))
        if not bool(base[i, j]):
            leaks.append((i, j))
    found = full_verdict(with_leaks(base, leaks))
    if leaks:
        assert found.witness == min(leaks), (k, found.kind, leaks)


@pytest.mark.parametrize("k", range(0, 80, 8))
def test_one_or_two_leaks_in_a_structure_are_the_witness(k):
    for j in range(k, k + 8):
        check_named(j)


@pytest.mark.slow
def test_one_or_two_leaks_in_a_structure_are_the_witness_many():
    for k in range(80, 1000):
        check_named(k)


# -- the display -----------------------------------------------------------------------------
def said(pattern: torch.Tensor) -> str:
    f = reading(pattern)
    x = torch.randn(pattern.shape[0], 2, dtype=torch.float64, requires_grad=True)
    return " ".join(repr(vjp_magic.differentiate(f(x), x, seed=0)).split())


def test_the_display_names_the_exception_and_the_structure():
    text = said(with_leaks(band(100, -1, 1), [(60, 20)]))
    assert "y[60] ← x[20]" in text and "band −1..1 with 1 exception" in text
    text = said(with_leaks(packed_causal([8] * 8), [(3, 5)]))
    assert "y[3] ← x[5]" in text and "block-lower-triangular, 8 blocks of 8 with 1 exception" \
        in text


def verdict_line(pattern: torch.Tensor) -> str:
    """The display's verdict line for y = A·tanh(x), A non-zero on ``pattern`` (a full
    Jacobian, no pairing tried)."""
    n = pattern.shape[0]
    a = pattern.double() * (torch.rand(n, n, dtype=torch.float64,
                                       generator=torch.Generator().manual_seed(0)) + 0.5)
    x = torch.randn(n, dtype=torch.float64, requires_grad=True)
    r = vjp_magic.differentiate(a @ torch.tanh(x), x, seed=0,
                                options=vjp_magic.RenderOptions(threshold=5))
    text = " ".join(repr(r).split())
    return text[text.index("Along"):].split(". ")[0]


def test_the_verdict_line_states_the_structure_then_the_exception():
    line = verdict_line(with_leaks(band(40, -1, 1), [(35, 2)]))
    assert "y[t] reads x[s] for t − 1 ≤ s ≤ t + 1, with one exception: y[35] ← x[2]" in line
    line = verdict_line(with_leaks(cyclic(40, -2, 1), [(25, 10), (30, 3)]))
    assert "t − 2 ≤ s ≤ t + 1 (mod 40), with 2 exceptions, the first: y[25] ← x[10]" in line
    line = verdict_line(with_leaks(packed_causal([8] * 5), [(3, 5)]))
    assert "(block-lower-triangular, 5 blocks of 8), with one exception, a later index read " \
        "inside a block: y[3] ← x[5]" in line
