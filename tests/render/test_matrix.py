"""Matrix layout (``render/matrix.py``): which entries are shown, dots for the rest, and no
display line wider than the width budget."""
from __future__ import annotations

import pytest
import torch
from layouts import OPTIONS, TERMINAL, formula

from vjp_magic.render import plain
from vjp_magic.render.document import Entry, Math
from vjp_magic.render.matrix import (
    LHS_RESERVE,
    Block,
    layout,
    reserve,
    summary_indices,
    tensor_block,
)
from vjp_magic.render.matrix import width as matrix_width
from vjp_magic.render.options import DISPLAY_WIDTH, RenderOptions


# -- layout -------------------------------------------------------------------------------------
def test_summary_indices():
    assert summary_indices(5, 10, 3) == [0, 1, 2, 3, 4]
    assert summary_indices(100, 10, 3) == [0, 1, 2, None, 97, 98, 99]


def test_count_summary_uses_every_dots():
    m = layout(tensor_block(torch.ones(50, 40)), OPTIONS, torch.float32)
    assert len(m.rows) == 7 and len(m.rows[0]) == 7
    assert m.rows[3][3].tex == r"\ddots" and m.rows[3][0].tex == r"\vdots"
    assert m.rows[0][3].tex == r"\cdots"


def test_only_shown_entries_leave_the_device():
    asked = []
    t = torch.randn(1000, 1000)

    def get(rows, cols):
        asked.append(len(rows) * len(cols))
        return t[rows][:, cols]

    layout(Block(get, 1000, 1000, "cpu"), OPTIONS, torch.float32)
    assert sum(asked) <= 49


def _wide_blocks():
    """Blocks whose entries or labels are as wide as they come."""
    gen = torch.Generator().manual_seed(1)
    wide = torch.randn(100_000, generator=gen, dtype=torch.float64) * torch.logspace(
        -12, 12, 100_000, dtype=torch.float64)
    row = tensor_block(wide.reshape(1, -1))
    rows = tensor_block(torch.randn(100_000, 8, generator=gen, dtype=torch.float64) * 1e-3,
                        row_label=lambda i: Entry(f"[{i}, :]", f"[{i}, :]"))
    million = tensor_block(-torch.rand(1_000_000, generator=gen) * 1e5)
    label = lambda prefix: lambda i: Entry(f"{prefix}_{{{i + 1}}}", f"{prefix}_{i + 1}")  # noqa
    jac = Block(lambda r, c: (r[:, None] * 1e-7 - c[None, :] * 3.3).double(), 100_000,
                1_000_000, "cpu", row_label=label("y"), col_label=label("x"))
    return {"row of 1e5 wide entries": row, "1e5 labelled rows": rows, "1e6 entries": million,
            "1e5 x 1e6 labelled Jacobian": jac}


@pytest.mark.parametrize("name", list(_wide_blocks()))
@pytest.mark.parametrize("width", [DISPLAY_WIDTH, 48])
def test_no_display_line_wider_than_the_budget(name, width):
    options = RenderOptions(width=width)
    m = layout(_wide_blocks()[name], options, torch.float64)
    lhs = "f'(x)"
    assert len(lhs) + 3 <= LHS_RESERVE
    lines = plain.formula_lines(formula(m, lhs))
    # the typeset line (estimated as MathJax sets it) fits; the plain spelling fits a terminal
    assert reserve(Math(lhs, lhs)) + matrix_width(m) <= width, "\n".join(lines)
    assert max(len(line) for line in lines) <= TERMINAL, "\n".join(lines)
    assert len(m.rows[0]) >= 3  # first, dots, last at least


def test_narrow_entries_keep_the_count_summary():
    m = layout(tensor_block(torch.arange(100.0)), OPTIONS, torch.float32)
    assert [e.plain for e in m.rows[0]] == ["0", "1", "2", "...", "97", "98", "99"]
