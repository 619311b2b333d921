"""Plain text wraps prose at spaces outside code, brackets, short parentheses and shapes: a
terminal never shows half an index (``u[i,`` / ``j-1]``) or half a shape (``(3`` / ``× 8)``)."""
import re

import pytest

from vjp_magic.render import plain
from vjp_magic.render.document import Code, Paragraph, Text


def _lines(*spans) -> list[str]:
    return plain._block(Paragraph(list(spans))).splitlines()


@pytest.mark.parametrize("pad", range(0, 40, 3))
def test_an_index_a_shape_and_code_stay_on_one_line(pad):
    text = ("x" * pad + " the stencil reads u[i-1, j], u[i, j-1], u[i, j], u[i, j+1] and the "
            "weight net[2].weight (3 × 8) of 10 × 512 entries, as ")
    lines = _lines(Text(text * 2), Code("r.derivatives['net.0.weight'] for net[0].weight"))
    joined = " ".join(lines)
    assert joined == text * 2 + "r.derivatives['net.0.weight'] for net[0].weight"
    for line in lines:
        assert len(line) <= plain.WRAP, line
        assert line.count("[") == line.count("]") and line.count("(") == line.count(")"), line
        assert not line.startswith("×") and not line.endswith("×"), line
    assert any("r.derivatives['net.0.weight'] for net[0].weight" in line for line in lines)


def test_long_prose_in_parentheses_still_wraps_at_its_spaces():
    words = "a few words of prose " * 4
    lines = _lines(Text("x" * 50 + f" before ({words}) after."))
    assert len(lines) == 2 and "(" in lines[0] and ")" not in lines[0], lines  # it wraps
    assert all(len(line) <= plain.WRAP for line in lines)


def test_a_piece_longer_than_a_line_breaks_at_its_spaces():
    index = "x[" + ", ".join(str(k) for k in range(40)) + "]"
    lines = _lines(Text(f"It reads {index}."))
    assert all(len(line) <= plain.WRAP for line in lines)
    assert re.sub(r"\s+", " ", " ".join(lines)) == f"It reads {index}."
