"""The renderers: markdown, LaTeX and plain text spell the same document.

The markdown's maths is checked against the package's own list of what MathJax 3 and KaTeX
reject (:data:`render.latex.UNSAFE_TEX`); the LaTeX by compiling it; the three renderings of
the tutorial's cells by syrupy snapshots.
"""
from __future__ import annotations

import dataclasses
import math
import re
import shutil
import subprocess
import unicodedata

import cells
import pytest
import torch
from layouts import OPTIONS, TERMINAL, formula

from vjp_magic import differentiate
from vjp_magic.render import latex, markdown, plain
from vjp_magic.render.document import (
    Bullets,
    Code,
    CodeBlock,
    Document,
    Entry,
    Formula,
    Math,
    Section,
    Text,
    paragraph,
)
from vjp_magic.render.matrix import Block, layout, reserve, tensor_block
from vjp_magic.render.matrix import width as matrix_width
from vjp_magic.render.view import View


def result_of(cell: cells.Cell):
    """Differentiate a tutorial cell's ``y`` with respect to its ``x``."""
    namespace = {"torch": torch}
    exec(cell.short, namespace)
    return differentiate(namespace["y"], namespace["x"])


def bundle(result, **view) -> dict[str, str]:
    return View(OPTIONS, **view).bundle(result)


# -- the three renderers on a document with every node --------------------------------------------
GREEK = "".join(c for c in map(chr, [*range(0x391, 0x3AA), *range(0x3B1, 0x3CA)])
                if unicodedata.name(c, ""))  # every Greek letter, capital and small
GREEK_TEX = " ".join(m for m in map(latex.greek_macro, GREEK) if m)

SEEDED = torch.Generator().manual_seed(0)  # one fixed matrix: its format is part of the test
EVERY_NODE = Document((
    Section((
        paragraph("Greek as prose ", GREEK, ", as maths ", Math(GREEK_TEX, GREEK), "."),
        paragraph("From ", Math("x", "x"), " (5 × 5) to ", Code("y"), ": 100% of a_b * c $5 #1 "
                  "{~^\\} <one-hot> α–β", strong=True),
        paragraph("- not a list item, ", Math("x^{(i)}", "x^(i)"), "2 after maths"),
        Bullets((paragraph("first ", Code("x.grad")), paragraph("second"))),
        Bullets((paragraph("one"), paragraph("two")), numbered=True),
        CodeBlock("for k in range(2):\n    v = torch.zeros_like(y); v[k] = 1  # 100% _x_\n"),
    ), "Explained: f'(x), α"),
    Section((
        formula(layout(tensor_block(torch.randn(50, 40, dtype=torch.float64, generator=SEEDED)
                                   * 1e-5), OPTIONS,
                       torch.float64)),
        Formula(Math("J", "J"), layout(Block(lambda r, c: (r[:, None] == c[None, :]).double(),
                                             30, 30, "cpu", row_label=lambda i: Entry(
                                                 f"y_{{{i}}}", f"y_{i}"), col_label=lambda j:
                                             Entry(f"x_{{{j}}}", f"x_{j}")), OPTIONS,
                                       torch.float64),
                Math(r"\quad (30 \times 30)", "(30 × 30)"),
                (Text("A caption, shapes (30 × 30)."),)),
        formula(layout(tensor_block(torch.tensor(2.5)), OPTIONS, torch.float32), "f'(x)"),
    )),
))


def test_markdown_spells_each_node():
    md = markdown.render(EVERY_NODE)
    assert "**Explained: f'(x), α**" in md
    assert r"100% of a\_b \* c \$5 \#1 {\~^\\} \<one-hot\> α–β" in md
    assert "\\- not a list item, $x^{(i)}$ 2 after maths" in md
    assert "- first `x.grad`\n- second" in md and "1. one\n2. two" in md
    assert ("```python\nfor k in range(2):\n"
            "    v = torch.zeros_like(y); v[k] = 1  # 100% _x_\n```") in md
    assert re.search(r"^\$\$J = \\left\[\\begin\{array\}", md, flags=re.M)
    assert "$$\n\nA caption, shapes (30 × 30)." in md


def test_markdown_maths_are_mathjax_and_katex_safe():
    md = markdown.render(EVERY_NODE)
    found = markdown.maths(md)
    assert len(found) == 6  # three inline, three display
    for tex in found:
        assert latex.tex_problems(tex) == [], tex
        assert len(tex) < 4000  # far below MathJax's buffer


def test_greek_letters_are_macros_both_typesetters_know():
    assert [latex.greek_macro(c) for c in "αλΛΑοςω"] == [
        r"\alpha", r"\lambda", r"\Lambda", "A", "o", r"\varsigma", r"\omega"]
    assert latex.greek_macro("a") is None and latex.greek_macro("ϑ") == r"\vartheta"
    assert latex.tex_problems(GREEK_TEX) == []  # and the LaTeX test compiles every one


def test_tex_problems_finds_each_unsafe_construct():
    for construct in latex.UNSAFE_TEX:
        assert latex.tex_problems(construct + "{x}") != [], construct
    assert latex.tex_problems(r"\begin{cases}x\end{cases}") == ["environment cases"]
    assert latex.tex_problems(r"\frac{1}{2") == ["unbalanced braces"]
    assert latex.tex_problems("α") and latex.tex_problems(r"\alpha") == []
    assert latex.tex_problems(r"\default") == []  # \def only as a whole macro name


def test_plain_aligns_columns_and_marks_elisions():
    text = plain.render(EVERY_NODE)
    assert "    for k in range(2):" in text
    lines = plain.formula_lines(EVERY_NODE.sections[1].blocks[0])
    assert lines[0].startswith("f'(x) = 10^-")
    bracketed = [line for line in lines if "[" in line]
    assert len({len(line) for line in bracketed}) == 1  # right-aligned columns
    assert "..." in lines[0] and any(re.search(r"\[\s*:", line) for line in lines)


# -- LaTeX: compiles, and wide matrices stay on the page ----------------------------------------
PREAMBLE = r"""\documentclass[11pt]{article}
\usepackage{amsmath}\usepackage{amssymb}\usepackage{fontspec}\usepackage{unicode-math}
\usepackage{fancyvrb}
\usepackage{geometry}\geometry{tmargin=1in,bmargin=1in,lmargin=1in,rmargin=1in}
\begin{document}
"""  # the parts of nbconvert's LaTeX template (under xelatex) that outputs rely on


def compile_latex(bodies, tmp_path) -> str:
    source = PREAMBLE + "\n\n".join(bodies) + "\n\\end{document}\n"
    (tmp_path / "out.tex").write_text(source)
    run = subprocess.run(["xelatex", "-interaction=nonstopmode", "-halt-on-error", "out.tex"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    log = (tmp_path / "out.log").read_text(errors="replace")
    assert run.returncode == 0, log[-3000:]
    return log


@pytest.mark.skipif(shutil.which("xelatex") is None, reason="needs xelatex")
def test_latex_compiles_and_fits_the_page(tmp_path):
    documents = [EVERY_NODE] + [View(OPTIONS).document(result_of(c))
                                for c in (cells.MULTIPLE_POINTS, cells.STACK_AT_POINTS)]
    log = compile_latex([latex.render(d) for d in documents], tmp_path)
    overfull = re.findall(r"Overfull \\hbox \((\d+\.?\d*)pt too wide\)", log)
    # a paragraph of unbreakable symbols (the Greek line) may overhang by its indent, no more
    assert not [w for w in overfull if float(w) > 5.0], overfull
    assert "Missing character" not in log


def test_latex_escapes_prose_and_keeps_code_verbatim():
    tex = latex.render(EVERY_NODE)
    # escapes that markdown reads the same way; symbols markdown would act on as maths
    # (touching maths made one span: "$$" would open display maths)
    assert r"100\% of a\_b * c \$5 \#1 \{$\sim\wedge\backslash$\}" in tex
    assert not [line for line in tex.splitlines() if "$$" in line and not line.startswith("$$")]
    # fancyvrb's Verbatim, a fenced code block to markdown (VS Code) with no TeX line shown:
    # the fence's info string begins it, an HTML comment hides its end
    assert ("~~~" + latex._UNTIE + "\\begin{Verbatim}[lastline=2]\nfor k in range(2):\n"
            "    v = torch.zeros_like(y); v[k] = 1  # 100% _x_\n~~~\n<!--\n\\end{Verbatim}\n"
            "%-->") in tex
    assert r"$\texttt{x.grad}$" in tex and r"$$J = \left[\begin{array}" in tex
    # nothing outside maths that markdown would show as a macro or read as a list
    prose = re.sub(r"\$\$.*?\$\$|\$.*?\$|^~~~.*?^%-->$", "", tex, flags=re.S | re.M)
    assert not re.search(r"\\(begin|textbf|noindent|item|\[)", prose)
    assert not re.search(r"^(\d+[.)]|[-+*]) ", prose, flags=re.M)


# -- the tutorial's cells, through the view --------------------------------------------------
SNAPSHOT_CELLS = cells.USAGE + (cells.MATRIX_VALUED_UNIVARIATE, cells.REVISITED_COLUMN)


@pytest.mark.parametrize("cell", SNAPSHOT_CELLS, ids=cells.ids(SNAPSHOT_CELLS))
def test_tutorial_cell_renderings(cell, snapshot):
    rendered = bundle(result_of(cell))
    assert set(rendered) == {"text/markdown", "text/latex", "text/plain"}  # no text/html
    for tex in markdown.maths(rendered["text/markdown"]):
        assert latex.tex_problems(tex) == [], tex
    assert rendered == snapshot


def test_jacobian_view_renders_safely(snapshot):
    rendered = bundle(result_of(cells.VECTOR_MULTIVARIATE_SINGLE_POINT), jacobian=True)
    for tex in markdown.maths(rendered["text/markdown"]):
        assert latex.tex_problems(tex) == [], tex
    assert rendered == snapshot


def _large(case: str):
    gen = torch.Generator().manual_seed(2)
    if case == "1e6 points":
        x = torch.linspace(-1, 1, 1_000_000, requires_grad=True)
        return differentiate(torch.sin(x), x)
    if case == "1e5 rows, 8 -> 3":
        x = torch.randn(100_000, 8, generator=gen, dtype=torch.float64, requires_grad=True)
        return differentiate(torch.softmax(x, 1)[:, :3] * 1e-3, x)
    x = torch.randn(100_000, generator=gen, requires_grad=True)  # 1e5 points, 3 components
    return differentiate(torch.stack([x.exp() * 1e4, -x**3, x / 7]), x)


@pytest.mark.parametrize("case", ["1e6 points", "1e5 rows, 8 -> 3", "1e5 points, 3 components"])
def test_large_results_are_small_and_fit_the_width(case):
    """Rendering is O(1) in the tensor's size (a few KB), and every matrix line fits."""
    rendered = bundle(_large(case))
    for kind, text in rendered.items():
        assert len(text.encode()) < 20_000, kind
    assert r"\cdots" in rendered["text/markdown"] and "..." in rendered["text/plain"]
    for line in rendered["text/plain"].splitlines():
        if "[" in line:
            assert len(line) <= TERMINAL, line


def test_result_displays_through_its_view():
    """``_repr_mimebundle_``, ``repr`` and ``code`` are the view's; a result with none says so."""
    x = torch.linspace(-2, 2, 5, requires_grad=True)
    r = differentiate(x**2, x)
    assert r.view is not None
    assert r._repr_mimebundle_() == r.view.bundle(r)
    assert repr(r) == r.view.plain(r) and r.code == r.view.code(r)
    bare = dataclasses.replace(r, view=None)
    assert bare._repr_mimebundle_() == {"text/plain": repr(bare)}
    assert repr(bare) == "<VJPResult: y (5,) of x (5,)>"


def test_reserve_counts_the_whole_line():
    lhs, suffix = Math(r"f'(x)", "f'(x)"), Math(r"\in \mathbb{R}^{5}", "in R^5")
    m = layout(tensor_block(torch.randn(1000, dtype=torch.float64)), OPTIONS, torch.float64,
               reserved=reserve(lhs, suffix))
    assert reserve(lhs, suffix) + matrix_width(m) <= OPTIONS.width
    assert reserve(lhs, suffix) > reserve(lhs)  # the suffix is counted
    lines = plain.formula_lines(Formula(lhs, m, suffix))
    assert max(len(line) for line in lines) <= TERMINAL


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_result_renders_from_the_device():
    x = torch.linspace(-1, 1, 1_000_000, device="cuda", requires_grad=True)
    r = differentiate(torch.sin(x), x)
    asked = []
    block = tensor_block(r.derivatives["x"])
    get = block.get_block
    block.get_block = lambda rows, cols: asked.append(rows.device.type) or get(rows, cols)
    m = layout(block, OPTIONS, torch.float32)
    assert asked == ["cuda"]
    # the first derivative, cos(-1), to the digits the width budget left (at least 3)
    assert abs(float(m.rows[0][0].plain) - math.cos(-1.0)) < 5e-3
    assert len(bundle(r)["text/markdown"].encode()) < 20_000


def test_long_code_lines_break_between_tokens_into_the_same_program():
    import ast

    from vjp_magic.render.codelines import CODE_WIDTH, fit_code
    source = ("d_layer_weight = layer.weight.new_zeros(4, *layer.weight.shape)\n"
              "for k in range(4):\n"
              "    d_layer_weight[k] = layer.weight.grad; layer.weight.grad = None\n"
              "y.backward(gradient=torch.ones_like(y), retain_graph=True)  # keep it\n"
              "x = 'a string literal far too long to fit, with nowhere to break it at all'\n")
    fitted = fit_code(source)
    assert ast.dump(ast.parse(fitted)) == ast.dump(ast.parse(source))
    assert fitted.split("\n")[:2] == ["d_layer_weight = layer.weight.new_zeros(",
                                      "    4, *layer.weight.shape)"]
    assert "    layer.weight.grad = None" in fitted.split("\n")  # one statement a line
    assert "           retain_graph=True)  # keep it" in fitted  # under the bracket's content
    assert [len(line) for line in fitted.split("\n") if len(line) > CODE_WIDTH] == [75]
