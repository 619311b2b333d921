"""Small dense matrices in full on request (issue 21, item 6): ``--full-matrix`` shows every
entry of a matrix up to 400 entries; wider than the line, in labelled column blocks stacked
vertically ("columns 1–4 of 12", ...), each within the width budget, so it still fits a
1024-px screen. Larger matrices are summarised as always.

Expected numbers come from ``torch.func.jacrev``."""
from __future__ import annotations

import re

import torch
from torch.func import jacrev

import vjp_magic
from vjp_magic.render import latex, markdown, plain
from vjp_magic.render.document import Formula, Text
from vjp_magic.render.matrix import column_blocks, reserve, tensor_block, width
from vjp_magic.render.options import FULL_MATRIX_ENTRIES, RenderOptions

SOFTMAX = """torch.manual_seed(0)
x = torch.randn(12, requires_grad=True)
s = torch.softmax(x, 0)"""
DOTS = {r"\cdots", r"\vdots", r"\ddots"}


def formulas(r) -> list[Formula]:
    return [b for s in r.view.document(r).sections for b in s.blocks
            if isinstance(b, Formula) and b.matrix is not None]


def blocks_of(r) -> list[Formula]:
    """The formulas of the derivatives (after v and the findings): the column blocks."""
    return [f for f in formulas(r) if f.caption and isinstance(f.caption[0], Text)
            and f.caption[0].text.startswith("columns ")]


def stitched(parts: list[Formula]) -> torch.Tensor:
    """The blocks' entries side by side, their common powers of ten put back."""
    return torch.cat([torch.tensor([[float(e.plain) for e in row] for row in f.matrix.rows],
                                   dtype=torch.float64) * 10.0 ** (f.matrix.factor or 0)
                      for f in parts], dim=1)


def test_a_12_by_12_jacobian_in_full(ip, run_vjp):
    r = run_vjp(SOFTMAX, "--full-matrix -p 3")
    parts = blocks_of(r)
    assert len(parts) >= 2
    spans = [re.match(r"columns (\d+)–(\d+) of 12", f.caption[0].text).groups() for f in parts]
    assert int(spans[0][0]) == 1 and int(spans[-1][1]) == 12
    assert all(int(b[0]) == int(a[1]) + 1 for a, b in zip(spans, spans[1:]))  # contiguous
    for f in parts:
        assert not any(e.tex in DOTS for row in f.matrix.rows for e in row)
        assert reserve(parts[0].lhs) + width(f.matrix) <= r.view.options.width
    expected = jacrev(lambda t: torch.softmax(t, 0))(ip.user_ns["x"].detach())
    torch.testing.assert_close(stitched(parts), expected.double(), rtol=5e-3, atol=1e-6)
    bundle = r._repr_mimebundle_()
    for tex in markdown.maths(bundle["text/markdown"]):
        assert latex.tex_problems(tex) == [], tex
    assert r"\phantom{" in bundle["text/latex"]  # the later blocks line up under the first
    assert "columns 1–" in bundle["text/plain"] and "of 12" in bundle["text/plain"]


def test_without_the_flag_the_12_by_12_is_summarised(run_vjp):
    r = run_vjp(SOFTMAX)
    assert not blocks_of(r)
    assert any(e.tex in DOTS for f in formulas(r) for row in f.matrix.rows for e in row)


def test_jacobian_magic_takes_the_flag(ip, run_ok):
    run_ok(SOFTMAX)
    r = run_ok("%jacobian --full-matrix s x")
    parts = blocks_of(r)
    assert parts and sum(len(f.matrix.rows[0]) for f in parts) == 12
    expected = jacrev(lambda t: torch.softmax(t, 0))(ip.user_ns["x"].detach())
    torch.testing.assert_close(stitched(parts), expected.double(), rtol=2e-3, atol=1e-6)


def test_a_matrix_over_the_limit_is_summarised(run_vjp):
    r = run_vjp("torch.manual_seed(0)\nx = torch.randn(30, requires_grad=True)\n"
                "s = torch.softmax(x, 0)", "--full-matrix")
    assert 30 * 30 > FULL_MATRIX_ENTRIES
    assert not blocks_of(r)
    assert any(e.tex in DOTS for f in formulas(r) for row in f.matrix.rows for e in row)


def test_column_blocks_fit_and_cover_every_column():
    gen = torch.Generator().manual_seed(3)
    t = torch.randn(9, 20, generator=gen, dtype=torch.float64) * 1e-3
    options = RenderOptions(full_matrix=True)
    parts = column_blocks(tensor_block(t), options, torch.float64, reserved=12)
    assert [c for cols, _ in parts for c in cols] == list(range(20))
    sizes = [len(cols) for cols, _ in parts]
    assert max(sizes) - min(sizes) <= 1  # about equal blocks
    for _, m in parts:
        assert width(m) + 12 <= options.width
        assert len(m.rows) == 9
    assert len({m.factor for _, m in parts}) == 1  # one format for all


def test_small_matrix_fits_in_one_block():
    r = vjp_magic.differentiate(*_small(), options=RenderOptions(full_matrix=True))
    assert not blocks_of(r)  # whole on one line: no column captions
    (f,) = [f for f in formulas(r) if len(f.matrix.rows) == 3]
    assert len(f.matrix.rows[0]) == 3
    assert "columns" not in plain.render(r.view.document(r))


def _small():
    x = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    return torch.stack([x[0] * x[1], x[1] * x[2], x[0] + x[2]]), x
