"""LaTeX and text rendering: snapshots, MathJax/KaTeX safety, number formatting, summaries."""
from __future__ import annotations

import re

import pytest
import torch

from vjp_magic import differentiate
from vjp_magic.render.formatting import format_number, summary_indices


def latex_of(y, x, **kw):
    return differentiate(y, x, **kw)._repr_latex_()


def assert_safe(latex: str):
    """Only constructs that MathJax 3 and KaTeX both render; every display $$-delimited."""
    for forbidden in (r"\newcommand", r"\boxed", r"\def", r"\verb", r"\texttt", r"\begin{tabular}"):
        assert forbidden not in latex
    displays = re.findall(r"\$\$(.*?)\$\$", latex, flags=re.S)
    assert displays and "".join(f"$${d}$$" for d in displays).replace("\n", "") == latex.replace("\n", "")
    for display in displays:
        assert display.count("{") - display.count(r"\{") == display.count("}") - display.count(r"\}")
        assert len(display) < 4000  # well under MathJax's 5 KB buffer
        envs = re.findall(r"\\begin\{(\w+)\}", display)
        assert set(envs) <= {"array", "bmatrix", "matrix"}


def test_snapshot_points(snapshot):
    x = torch.linspace(-2, 2, 5, requires_grad=True)
    latex = latex_of(x**2, x)
    assert_safe(latex)
    assert latex == snapshot


def test_snapshot_components_at_points(snapshot):
    x = torch.arange(3, dtype=float, requires_grad=True)
    latex = latex_of(torch.stack([-x**3, 5 * x]), x)
    assert_safe(latex)
    assert r"f_{1}'" in latex and r"f_{2}'" in latex
    assert latex == snapshot


def test_snapshot_matrix_valued(snapshot):
    x = torch.tensor(1.0, requires_grad=True)
    latex = latex_of(torch.stack([x**i for i in range(6)]).view(3, 2), x)
    assert_safe(latex)
    assert latex == snapshot


def test_snapshot_text(snapshot):
    x = torch.arange(4 * 3, dtype=float).view(-1, 4).requires_grad_(True)
    r = differentiate(torch.stack([x.sum(1), (x**2).sum(1)]), x)
    assert repr(r) == snapshot


def test_mimebundle_has_latex_and_plain_only():
    x = torch.linspace(-2, 2, 5, requires_grad=True)
    bundle = differentiate(x**2, x)._repr_mimebundle_()
    assert set(bundle) == {"text/latex", "text/plain"}
    assert bundle["text/latex"].startswith("$$")


def test_structure_words_and_code_line():
    x = torch.linspace(-2, 2, 5, requires_grad=True)
    latex = latex_of(x**2, x)
    assert "f applied at 5 points" in latex
    assert r"\mathtt{y{.}backward(gradient{=}torch{.}ones\_like(y))}" in latex
    x2 = torch.tensor([-1.0, 2.0], requires_grad=True)
    assert "gradient of a scalar function" in latex_of((x2 * x2).sum(), x2)
    x3 = torch.randn(4, requires_grad=True)
    assert "Jacobian of a vector-valued function" in latex_of(torch.softmax(x3, 0), x3)


def test_large_result_is_summarised_and_small():
    x = torch.linspace(-1, 1, 1_000_000, requires_grad=True)
    latex = latex_of(torch.sin(x), x)
    assert_safe(latex)
    assert len(latex.encode()) < 20_000
    assert r"\cdots" in latex
    text = repr(differentiate(torch.sin(x), x))
    assert "..." in text and len(text) < 5000


def test_big_matrix_summary_uses_all_dots():
    x = torch.randn(50, 40, requires_grad=True)
    latex = latex_of(x.exp(), x)
    assert r"\vdots" in latex and r"\cdots" in latex and r"\ddots" in latex
    assert_safe(latex)


@pytest.mark.parametrize(
    "value, digits, expected",
    [
        (2.0, 4, "2"),
        (-0.0, 4, "0"),
        (1.9999999, 4, "2"),
        (0.30000001192092896, 4, "0.3"),
        (-0.4344, 4, "-0.4344"),
        (1.5e-7, 4, r"1.5 \times 10^{-7}"),
        (float("nan"), 4, r"\mathrm{NaN}"),
        (float("-inf"), 4, r"-\infty"),
    ],
)
def test_format_number(value, digits, expected):
    assert format_number(value, digits) == expected


def test_float32_noise_hidden():
    x = torch.tensor([0.1, 0.2], requires_grad=True)
    latex = differentiate((x * 3), x, full=True)._repr_latex_()
    assert "3" in latex and "2.9999" not in latex and "3.0000" not in latex


def test_summary_indices():
    assert summary_indices(5, 10, 3) == [0, 1, 2, 3, 4]
    assert summary_indices(100, 10, 3) == [0, 1, 2, None, 97, 98, 99]
