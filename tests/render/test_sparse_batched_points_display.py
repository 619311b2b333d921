"""The display of a large batch of stencils computed by colours, its points kept
(tests/core/test_sparse_batched_points.py): per-row words first, the coloured loop, --explain
saying why one colouring serves every row, --picture of the pattern and its colours, all
naming the same 3 passes."""
from __future__ import annotations

import torch
import torch.nn.functional as F

import vjp_magic

CELL = ("torch.manual_seed(0)\n"
        "x = torch.randn(64, 300, dtype=torch.float64, requires_grad=True)\n"
        "y = F.pad(x, (1, 0))[:, :-1] + x ** 3 + F.pad(x, (0, 1))[:, 1:]\n")


def _plain(r) -> str:
    """The plain display, its lines joined (sentences wrap at any word)."""
    return " ".join(r._repr_mimebundle_()["text/plain"].split())


def test_the_magic_shows_the_rows_as_points_then_the_coloured_loop(ip, run_vjp):
    ip.run_cell("import torch.nn.functional as F")
    r = run_vjp(CELL, "")
    assert r.point_axes["x"] == ((0, 0),) and r.inputs["x"].sparse.count == 3
    text = _plain(r)
    rows = text.index("row i of y uses row i of x only")
    pattern = text.index("3-point stencil")
    loop = text.index("for c in range(3)")
    assert rows < pattern < loop  # the points first, then the stencil, then the passes
    assert "3 backward passes give all" in text
    assert "one backward per component" not in text  # the passes are the colours', not 300


def test_explain_says_why_one_colouring_serves_every_row(ip, run_vjp):
    ip.run_cell("import torch.nn.functional as F")
    r = run_vjp(CELL, "--explain")
    text = _plain(r)
    assert "The 64 points never share an entry of x" in text
    assert "3 passes instead of one per component (300)" in text


def test_the_picture_draws_the_pattern_beside_its_three_colours():
    torch.manual_seed(0)
    x = torch.randn(64, 300, requires_grad=True)
    y = F.pad(x, (1, 0))[:, :-1] + x ** 3 + F.pad(x, (0, 1))[:, 1:]
    r = vjp_magic.differentiate(y, x, seed=1)
    picture = r.picture()
    assert picture.png.startswith(b"\x89PNG")
    assert "compressed 3 × 19,200 matrix" in picture.alt
