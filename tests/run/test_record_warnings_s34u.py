"""A %%vjp cell's warnings are reported as a plain cell's (s34 U9): at the cell's own line, each
line once under the "default" filter, raised under "error", the cell's own ones untouched. The
reference is the same cell run without the magic."""
from __future__ import annotations

import warnings

import pytest

SOFTMAX = """import torch.nn.functional as F
x = torch.tensor([1., 2.], requires_grad=True)
y = F.softmax(x)"""  # PyTorch: "Implicit dimension choice for softmax has been deprecated"

OWN = """import warnings
x = torch.tensor([1., 2.], requires_grad=True)
warnings.warn("the cell's own")
y = x**2"""


def _caught(ip, source: str, match: str) -> list:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert ip.run_cell(source).success
    # (the analysis' float64 replay warns again from run/steps.py: another matter)
    return [(w.filename.startswith("<ipython-input"), w.lineno, w.category)
            for w in caught if match in str(w.message) and "steps.py" not in w.filename]


@pytest.mark.parametrize("source, match", [(SOFTMAX, "Implicit dimension"),
                                           (OWN, "the cell's own")], ids=["torch", "own"])
def test_a_warning_is_where_a_plain_cell_has_it(ip, source, match):
    plain = _caught(ip, source, match)
    assert plain and plain[0][0]  # the reference names the cell
    assert _caught(ip, "%%vjp\n" + source, match) == plain


NON_LEAF = """x = torch.tensor([1., 2.], requires_grad=True)
h = x * 2
y = (h**2).sum()
seen = h.grad"""


def test_an_error_filter_stops_the_cell_as_a_plain_one(ip):
    results = []
    for source in (NON_LEAF, "%%vjp\n" + NON_LEAF):
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message=".*not a leaf Tensor")
            run = ip.run_cell(source)
        results.append((run.success, type(run.error_in_exec)))
    assert results[0] == (False, UserWarning)
    assert results[1] == results[0]


def test_a_warning_once_a_line_is_once_a_line(ip):
    twice = NON_LEAF + "\nagain = h.grad"  # two lines: two warnings; one line run twice: one
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        assert ip.run_cell("%%vjp\n" + twice).success
        assert ip.run_cell("%%vjp\nfor i in range(2):\n    seen = h.grad\n"
                           "y = (h**2).sum()").success
    lines = [w.lineno for w in caught if "not a leaf Tensor" in str(w.message)]
    assert lines == [4, 5, 2], lines
