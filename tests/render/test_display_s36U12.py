"""s36 U12: the display keeps what it is read for and says what it cut (G18's class).

- a table of sensitivities of at most ``threshold`` features is never cut by the height
  budget; a longer one keeps the features it is read for (the most sensitive, the exactly
  insensitive) beside its edges; its columns line up at the decimal point;
- digits the width cut below a precision the user asked for are said to be, with where the
  rest are; at the default precision nothing is said.

Expected numbers come from the derivative written by hand (tanh' = 1 - tanh²)."""
from __future__ import annotations

import torch


def _plain(result) -> str:
    shown = result._repr_mimebundle_()
    shown = shown[0] if isinstance(shown, tuple) else shown
    return shown["text/plain"]


def test_a_long_table_keeps_the_insensitive_and_the_most_sensitive_feature():
    from vjp_magic.render.budget import Fit
    from vjp_magic.render.findings import _table_rows
    from vjp_magic.render.options import RenderOptions
    mean = torch.full((14,), 0.5, dtype=torch.float64)
    largest = torch.full((14,), 1.0)
    mean[6], largest[6] = 0.0, 0.0  # feature 6 (from 0) never read
    mean[8] = 3.0  # feature 8 the most sensitive
    for fit in (None, Fit(rows=1)):
        shown = _table_rows(mean, largest, RenderOptions(fit=fit))
        assert 6 in shown and 8 in shown and shown[0] == 0 and shown[-1] == 13, shown
        assert 4 not in shown and None in shown  # a plain middle feature: summarised
    assert _table_rows(mean, largest, RenderOptions(fit=Fit(rows=1))) == \
        [0, None, 6, None, 8, None, 13]
    short = _table_rows(mean[:5], largest[:5], RenderOptions(fit=Fit(rows=1)))
    assert short == [0, 1, 2, 3, 4]  # at most threshold rows: never cut


def test_a_short_tables_means_line_up_at_the_point(run_vjp):
    r = run_vjp("torch.manual_seed(0)\nfeatures = torch.randn(10_000, 5, requires_grad=True)\n"
                "scale = torch.tensor([3.0, 0.0, 1.0, 0.1, 2.0])\n"
                "score = torch.tanh(features * scale).sum(dim=1)", "--wrt features")
    lines = [line for line in _plain(r).splitlines() if "∂f/∂features_" in line]
    assert len(lines) == 5, lines
    points = {line.index(".", line.index("[")) for line in lines if "[0 " not in line}
    assert len(points) == 1, lines  # every mean's decimal point in one column


def test_digits_cut_below_the_precision_asked_are_said_to_be(run_vjp):
    r = run_vjp("x = torch.linspace(0.1, 1, 5, dtype=torch.float64, requires_grad=True)\n"
                "y = torch.sin(x)", "-p 12")
    text = " ".join(_plain(r).split())
    assert "of the 12 asked" in text and "--full-matrix shows all 12" in text, text[-400:]
    full = run_vjp("x = torch.linspace(0.1, 1, 5, dtype=torch.float64, requires_grad=True)\n"
                   "y = torch.sin(x)", "-p 12 --full-matrix")
    shown = " ".join(_plain(full).split())
    assert "0.995004165278" in shown and "asked" not in shown  # cos(0.1), 12 digits


def test_digits_that_fit_or_the_default_precision_say_nothing(run_vjp):
    fits = run_vjp("x = torch.linspace(0.1, 1, 3, dtype=torch.float64, requires_grad=True)\n"
                   "y = torch.sin(x)", "-p 8")
    assert "0.99500417" in _plain(fits) and "asked" not in _plain(fits)
    default = run_vjp("x = torch.linspace(0.1, 1, 40, dtype=torch.float64, "
                      "requires_grad=True)\ny = torch.sin(x) * x.sum()")
    assert "asked" not in _plain(default)
