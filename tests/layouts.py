"""What the rendering tests share: the default render options, the width of a terminal, a
matrix as a formula, and the plain entries a layout shows."""
from __future__ import annotations

from vjp_magic.render.document import Formula, Math
from vjp_magic.render.matrix import HDOTS, VDOTS
from vjp_magic.render.options import RenderOptions

TERMINAL = 100  # columns of a terminal the plain rendering may fill

OPTIONS = RenderOptions()


def formula(matrix, lhs: str = "f'(x)") -> Formula:
    return Formula(Math(lhs, lhs), matrix)


def plain_entries(matrix) -> list[str]:
    return [e.plain for row in matrix.rows for e in row if e not in (HDOTS, VDOTS)
            and e.plain != "..."]
