"""Where only the graph lacks a path from an output to an input (a ``.detach()``, ``.data``,
``torch.no_grad``, an integer op), the messages say what is known: "in the graph as
computed, y does not reach x", never "y does not depend on x" (false of the formula that
uses x). One sentence (``core.errors.unreached``) for the usage error, the symbolic replay
and the grading against f (s43 F2; s42 wrote the cut notes so)."""
from __future__ import annotations

import pytest
import torch

import vjp_magic
from vjp_magic.core.errors import VJPUsageError
from vjp_magic.core.tagging import find_inputs


@pytest.mark.parametrize("build", [
    lambda x: x.detach() ** 2,
    lambda x: (x > 0).to(torch.float32) * 3,  # an integer op on the way
    lambda x: x.data * 2,
])
def test_an_output_cut_off_from_every_leaf_is_told_so(build):
    x = torch.linspace(-1, 1, 3, requires_grad=True)
    with pytest.raises(VJPUsageError) as caught:
        find_inputs(build(x), {"x": x}, output_name="y")
    message = str(caught.value)
    assert message.startswith("In the graph as computed, y does not reach any tensor with "
                              "requires_grad=True."), message
    assert "does not depend" not in message


def test_grading_against_f_says_the_graph_not_the_formula():
    """y = x.detach()³ − 2x equals f = x³ − 2x; its graph's derivative is −2, f's 3x² − 2."""
    x = torch.linspace(-2, 2, 5, requires_grad=True)
    cut = vjp_magic.check(torch.full((5,), -2.0), lambda x: x ** 3 - 2 * x, x,
                          y=x.detach() ** 3 - 2 * x)
    assert (cut.correct, cut.kind) == (False, "graph-cut")
    assert "in the graph as computed, y does not reach x through all of it" in cut.hint
    assert "does not depend" not in cut.hint
