"""Adversarial review, session 31 (issue 23, "Kinds a practitioner recognises"): the words of
dependency verdicts — kinds, block sizes, witnesses, the float32 underflow note — checked
against the Jacobian's own pattern from ``torch.autograd.functional.jacobian``.

Tests marked ``xfail(strict=True)`` are findings of this review.
"""
from __future__ import annotations

import torch

import vjp_magic


def _pattern(f, x: torch.Tensor) -> torch.Tensor:
    """The (rows of y) × (rows of x) dependence pattern of f at x, from torch's Jacobian."""
    j = torch.autograd.functional.jacobian(f, x.detach())
    m, n = j.shape[0], x.shape[0]
    return j.reshape(m, -1, n, x[0].numel()).ne(0).any(3).any(1)


def _pattern_1d(f, x: torch.Tensor) -> torch.Tensor:
    """The entry-by-entry dependence pattern of a 1-D f at a 1-D x, from torch's Jacobian."""
    return torch.autograd.functional.jacobian(f, x.detach()).ne(0)


def _groups(x: torch.Tensor, cross: bool) -> torch.Tensor:
    """Batches of 4 rows that see each other (graphs, packed sequences); with ``cross``, the
    last row also reads row 0 (one edge crossing the groups)."""
    g = x.reshape(16, 4, 3).sum(1, keepdim=True).expand(16, 4, 3).reshape(64, 3)
    if cross:
        g = g + torch.cat([torch.zeros(63, 3, dtype=x.dtype), x[:1] * 0.5])
    return g * x


def _rnn(x: torch.Tensor) -> torch.Tensor:
    h, out = torch.zeros((), dtype=x.dtype), []
    for t in range(x.shape[0]):
        h = 0.05 * torch.tanh(h) + x[t]
        out.append(h)
    return torch.stack(out)


def test_groups_are_block_diagonal_with_their_sizes():
    x = torch.randn(64, 3, dtype=torch.float64, requires_grad=True)
    d = vjp_magic.dependency(_groups(x, cross=False), x, seed=0)
    assert d.kind == "block-diagonal" and d.blocks == (4,) * 16
    assert d.summary() == "block-diagonal, 16 blocks of 4"
    assert torch.equal(d.pattern, _pattern(lambda t: _groups(t, False), x))


def test_the_crossing_edge_is_the_witness():
    x = torch.randn(64, 3, dtype=torch.float64, requires_grad=True)
    d = vjp_magic.dependency(_groups(x, cross=True), x, seed=0)
    expected = _pattern(lambda t: _groups(t, True), x)
    assert torch.equal(d.pattern, expected)
    assert d.kind == "block-diagonal" and d.witness == (63, 0)
    assert expected[63, 0] and "1 exception" in d.summary()


def test_unequal_blocks_are_counted():
    x = torch.randn(16, dtype=torch.float64, requires_grad=True)

    def f(t):
        return torch.cat([p.cumsum(0) for p in torch.split(t, [3, 5, 8])])

    d = vjp_magic.dependency(f(x), x, seed=0)
    assert d.kind == "block-lower-triangular" and d.blocks == (3, 5, 8)
    assert d.summary() == "block-lower-triangular, 3 blocks of 3, 5, 8"  # each size: few
    assert torch.equal(d.pattern, _pattern_1d(f, x))


def test_float32_zeros_carry_the_underflow_note_and_float64_is_triangular():
    torch.manual_seed(0)
    x = torch.randn(64, requires_grad=True)
    d32 = vjp_magic.dependency(_rnn(x), x, seed=0)
    assert d32.kind == "band" and d32.note is not None
    assert "float32 underflow" in d32.note and "x.double()" in d32.note
    x64 = x.detach().double().requires_grad_()
    d64 = vjp_magic.dependency(_rnn(x64), x64, seed=0)
    assert d64.kind == "lower-triangular" and d64.note is None
    assert torch.equal(d64.pattern, _pattern_1d(_rnn, x64))
    # the display carries the note too
    text = " ".join(vjp_magic.differentiate(_rnn(x), x, seed=0)
                    ._repr_mimebundle_()["text/plain"].split())
    assert "zeros may be float32 underflow: check in float64 with x.double()" in text


def test_a_band_is_named_with_its_offsets():
    x = torch.randn(50, dtype=torch.float64, requires_grad=True)

    def f(t):
        return torch.nn.functional.pad(t, (1, 1))[:-2] + t

    d = vjp_magic.dependency(f(x), x, seed=0)
    assert d.summary() == "band, offsets −1..0" and d.witness == (1, 0)
    assert torch.equal(d.pattern, _pattern_1d(f, x))


def _leak(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Every row t of the batch also reads row t - 1 (a shifted residual)."""
    z = (x @ w).tanh()
    return z + torch.cat([torch.zeros(1, 3, dtype=x.dtype), z[:-1]]) * 0.1


def test_the_dense_display_states_a_causal_kind():
    torch.manual_seed(0)
    x, w = torch.randn(64, 8, requires_grad=True), torch.randn(8, 3)
    r = vjp_magic.differentiate((x @ w).tanh().cumsum(0), x, seed=0)
    text = " ".join(r._repr_mimebundle_()["text/plain"].split())
    assert "y[t] reads x[s] for s ≤ t only (causal: lower-triangular" in text


def test_the_sparse_display_states_the_band_of_a_leak():
    torch.manual_seed(0)
    x, w = torch.randn(64, 8, requires_grad=True), torch.randn(8, 3)
    r = vjp_magic.differentiate(_leak(x, w), x, seed=0)
    expected = _pattern(lambda t: _leak(t, w), x)
    assert torch.equal(expected, torch.ones(64, 64).tril().triu(-1).bool())
    assert r.dependency("x").summary() == "band, offsets −1..0"
    text = " ".join(r._repr_mimebundle_()["text/plain"].split())
    assert "y[1] ← x[0]" in text
    assert "band" in text or "x[t-1]" in text or "x[t - 1]" in text, text[:700]


def test_the_display_names_the_blocks_when_an_edge_crosses_them():
    torch.manual_seed(0)
    x = torch.randn(64, 3, requires_grad=True)
    r = vjp_magic.differentiate(_groups(x, cross=True), x, seed=0)
    text = " ".join(r._repr_mimebundle_()["text/plain"].split())
    assert "y[63] ← x[0]" in text
    assert "the pattern is block-diagonal, 16 blocks of 4 with 1 exception" in text


def test_the_display_names_the_blocks_of_a_clean_batch_of_groups():
    torch.manual_seed(0)
    x = torch.randn(64, 3, requires_grad=True)
    r = vjp_magic.differentiate(_groups(x, cross=False), x, seed=0)
    assert r.dependency("x").summary() == "block-diagonal, 16 blocks of 4"
    text = " ".join(r._repr_mimebundle_()["text/plain"].split())
    assert "y[0] ← x[1]" in text
    assert "block-diagonal" in text and "blocks of 4" in text, text[:600]
