"""Adversary s31b: a WRONG compressed answer (one row per colour) is never called correct, and
the compressed verdict agrees with the dense one for the same mistake. Expected rows from
torch.func.jacrev summed over the stencil's own colouring (mathematics)."""
from __future__ import annotations

import torch

import vjp_magic

N = 300
COLOUR = torch.arange(N) % 3


def f(x):
    return 1e-6 * x.roll(1) + x ** 3 + x.roll(-1)


def f_without_small(x):
    return x ** 3 + x.roll(-1)


def _rows(fn, x):
    j = torch.func.jacrev(fn)(x.detach()).reshape(-1, x.numel())
    return torch.zeros(3, x.numel(), dtype=j.dtype).index_add_(0, COLOUR, j), j


def _x(dtype=torch.float64):
    return torch.linspace(-1, 1, N, dtype=dtype, requires_grad=True)


def test_the_right_rows_are_correct_guard():
    x = _x()
    assert vjp_magic.check(_rows(f, x)[0], f(x), x).correct


def test_an_entry_swapped_between_two_colours_is_wrong():
    x = _x()
    g = _rows(f, x)[0]
    w = g.clone()
    w[0, 10], w[1, 10] = g[1, 10], g[0, 10]
    assert not vjp_magic.check(w, f(x), x).correct


def test_a_zero_row_and_two_colours_summed_are_wrong():
    x = _x()
    g = _rows(f, x)[0]
    z = g.clone()
    z[2] = 0
    assert not vjp_magic.check(z, f(x), x).correct
    merged = torch.stack([g[0] + g[2], g[1], torch.zeros_like(g[2])])
    assert not vjp_magic.check(merged, f(x), x).correct


def test_the_rows_at_another_x_are_wrong():
    x = _x()
    g2 = _rows(f, x.detach() + 1e-3)[0]
    assert not vjp_magic.check(g2, f(x), x).correct
    assert not vjp_magic.check(g2[[2, 0, 1]], f(x), x).correct


def test_small_entries_left_out_are_judged_as_the_dense_answer_is():
    """1e-6 entries dropped: the compressed verdict equals the dense Jacobian's verdict (in
    float64 both wrong; in float32 the same, whatever it is)."""
    for dtype in (torch.float64, torch.float32):
        x = _x(dtype)
        y = f(x)
        g, j = _rows(f_without_small, x)
        compressed, dense = vjp_magic.check(g, y, x), vjp_magic.check(j, y, x)
        assert compressed.correct == dense.correct, (dtype, compressed.kind, dense.kind)
        if dtype == torch.float64:
            assert not compressed.correct
