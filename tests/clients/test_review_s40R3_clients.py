"""Review, session 40 (R3): the sparse and per-sample displays in the clients people read them in.

The displays (a tridiagonal Jacobian at 10^5, the 5-point Laplacian with --explain, a conv stack,
a banded Hessian at 10^5 and the gradient's Jacobian with --picture --explain, per-sample results
of nets with 8, 14 and 42 parameter tensors) are made once by the test shell and put into a
notebook of one cell each (``test_clients.fake_notebook``); then VS Code's KaTeX renderer,
nbconvert's HTML (MathJax 2.7, Chromium at 1024 × 768) and nbconvert's LaTeX (xelatex) read them
with the same checks as the demo notebooks. Strict xfails are findings (``R3-n``).
"""
from __future__ import annotations

import html
import re

import pytest

from jupyter_harness import block_network, render_vscode
from test_clients import (
    _MATHJAX_HOOKS, ARTIFACTS, chromium, export_html, fake_notebook, html_problems, html_server,
    latex_problems, node_missing, require, summarise, tex_missing, vscode_problems,
)

_FIXTURES = (chromium, html_server)  # used as fixtures below (imported for pytest to find)

SETUP = """import torch, torch.nn.functional as F
from torch import nn
torch.manual_seed(0)
"""
MLP = ("torch.manual_seed(0)\nnet = nn.Sequential(*[m for _ in range({}) for m in "
       "(nn.Linear(8, 8), nn.Tanh())], nn.Linear(8, 3))\n"
       "data = torch.randn(16, 8)\ntargets = torch.randint(0, 3, (16,))")
PER_SAMPLE = "%%vjp --wrt net\nlosses = F.cross_entropy(net(data), targets, reduction='none')"
CELLS = {
    "tridiagonal": (None, "%%vjp\nx = torch.linspace(-1, 1, 100_000, requires_grad=True)\n"
                          "p = F.pad(x, (1, 1))\ny = p[:-2] - 2 * p[1:-1] ** 3 + p[2:]"),
    "laplacian": (None, "%%vjp --explain\nu = torch.randn(40, 40, requires_grad=True)\n"
                        "q = F.pad(u, (1, 1, 1, 1))\nlap = q[:-2, 1:-1] + q[2:, 1:-1] + "
                        "q[1:-1, :-2] + q[1:-1, 2:] - 4 * u + u ** 3"),
    "conv": (None, "%%vjp\ns = torch.randn(1, 1, 3000, requires_grad=True)\n"
                   "c1 = nn.Conv1d(1, 4, 3, padding=1); c2 = nn.Conv1d(4, 1, 5, padding=2)\n"
                   "out = c2(torch.tanh(c1(s)))"),
    "hessian": ("w = torch.linspace(-1, 1, 100_000, dtype=torch.float64, requires_grad=True)\n"
                "e = (torch.diff(w) ** 2).sum() + (w ** 4).sum()", "%hessian e w"),
    "gradient": (None, "%%vjp --picture --explain\n"
                       "g, = torch.autograd.grad(e, w, create_graph=True)"),
    "net8": (MLP.format(3), PER_SAMPLE),
    "net14": (MLP.format(6), PER_SAMPLE),
    "net42": ("torch.manual_seed(0)\nnet = nn.Sequential(*[m for _ in range(10) for m in "
              "(nn.Linear(8, 8), nn.LayerNorm(8), nn.Tanh())], nn.Linear(8, 3))\n"
              "data = torch.randn(16, 8)\ntargets = torch.randint(0, 3, (16,))", PER_SAMPLE),
}
SPARSE = ("tridiagonal", "laplacian", "conv", "hessian", "gradient")
PER_SAMPLE_CELLS = ("net8", "net14", "net42")


@pytest.fixture(scope="module")
def notebook(_shell):
    """A notebook of one cell per display above, its output the result's mime bundle."""
    _shell.reset(new_session=False)
    _shell.run_line_magic("load_ext", "vjp_magic")
    bundles = []
    try:
        assert _shell.run_cell(SETUP).success
        for name, (before, cell) in CELLS.items():
            if before:
                assert _shell.run_cell(before).success, name
            done = _shell.run_cell(cell)
            assert done.success, (name, done.error_in_exec)
            data = done.result._repr_mimebundle_()
            data = data[0] if isinstance(data, tuple) else data
            bundles.append({k: v for k, v in data.items() if isinstance(v, str)})
    finally:
        _shell.run_line_magic("unload_ext", "vjp_magic")
    return fake_notebook(bundles)


def _part(notebook, names):
    part = fake_notebook([])
    part.cells = [cell for name, cell in zip(CELLS, notebook.cells) if name in names]
    return part


def test_sparse_displays_render_in_vscodes_katex(notebook):
    require(node_missing())
    problems = vscode_problems(_part(notebook, SPARSE))
    assert not problems, summarise(problems)


def test_per_sample_displays_render_in_vscodes_katex(notebook):
    require(node_missing())
    problems = vscode_problems(_part(notebook, PER_SAMPLE_CELLS))
    assert not problems, summarise(problems)


def test_every_display_compiles_with_xelatex_within_the_page(notebook, tmp_path):
    require(tex_missing())
    errors, wide = latex_problems(notebook, ARTIFACTS / "clients" / "latex", "review_s40R3")
    assert not errors, errors[:10]
    assert not wide, wide[:10]


@pytest.mark.browser
def test_every_display_typesets_in_nbconverts_html(notebook, html_server, chromium):
    server, folder = html_server
    url = export_html(notebook, server, folder, "review_s40R3.html")
    typeset, problems = html_problems(chromium, url, notebook)
    assert typeset > 0
    assert not problems, problems[:20]


# Each output of the exported page at 1024 × 768: its box, and how far it scrolls sideways
_OUTPUT_BOXES = """() => [...document.querySelectorAll('.jp-OutputArea-output')].map(el => {
    const scrolls = [];
    for (const inner of [el, ...el.querySelectorAll('*')]) {
        const overflow = getComputedStyle(inner).overflowX;
        const d = inner.scrollWidth - inner.clientWidth;
        if (inner.clientWidth > 0 && d > 1 && (inner === el || /auto|scroll/.test(overflow))) {
            scrolls.push(`${inner.tagName}.${inner.className} ${overflow} +${d}px`);
        }
    }
    const box = el.getBoundingClientRect();
    return {width: box.width, height: box.height, scroll: scrolls};
})"""


def _output_boxes(chromium, url: str) -> list[dict]:
    page = chromium.new_page(viewport={"width": 1024, "height": 768})
    try:
        block_network(page)
        page.add_init_script(_MATHJAX_HOOKS)
        page.goto(url)
        page.wait_for_function("() => window.__mj && window.__mj.done", timeout=90_000,
                               polling=250)
        return page.evaluate(_OUTPUT_BOXES)
    finally:
        page.close()


@pytest.mark.browser
def test_no_display_is_wider_than_1024_or_taller_than_two_screens(notebook, html_server,
                                                                    chromium):
    server, folder = html_server
    url = export_html(notebook, server, folder, "review_s40R3_boxes.html")
    boxes = _output_boxes(chromium, url)
    assert len(boxes) == len(CELLS), boxes
    problems = [f"{name}: {box}" for name, box in zip(CELLS, boxes)
                if box["scroll"] or box["width"] > 1024 or box["height"] > 2 * 768]
    assert not problems, problems


@pytest.mark.browser
def test_the_width_check_catches_a_wide_matrix(html_server, chromium):
    wide = "$$\\begin{array}{" + "c" * 40 + "}" + " & ".join(["-0.123456"] * 40) + \
        "\\end{array}$$"
    server, folder = html_server
    url = export_html(fake_notebook([{"text/markdown": wide, "text/plain": "w"}]), server, folder,
                      "review_s40R3_wide.html")
    assert any(box["scroll"] for box in _output_boxes(chromium, url))


# The right edge of the widest thing in each output of VS Code's page, and the output's height
_VSCODE_BOXES = """() => [...document.querySelectorAll('.output')].map(el => {
    let right = 0;  // (KaTeX's MathML copy is clipped to nothing: not drawn)
    for (const inner of el.querySelectorAll('*:not(.katex-mathml):not(.katex-mathml *)')) {
        right = Math.max(right, inner.getBoundingClientRect().right);
    }
    return {right, height: el.getBoundingClientRect().height};
})"""


def _vscode_boxes(chromium, texts: list[str], folder) -> list[dict]:
    page_file = folder / "vscode.html"
    page_file.write_text(render_vscode(texts, page_title="review s40 R3"), encoding="utf-8")
    page = chromium.new_page(viewport={"width": 1024, "height": 768})
    try:
        block_network(page)
        page.goto(page_file.as_uri())
        return page.evaluate(_VSCODE_BOXES)
    finally:
        page.close()


@pytest.mark.browser
def test_vscode_shows_every_display_within_1024_px(notebook, chromium, tmp_path):
    """VS Code shows text/latex (its display order) as markdown with KaTeX: at 1024 × 768
    nothing reaches past the window's right edge, and no output is taller than two screens."""
    require(node_missing())
    texts = [cell.outputs[0]["data"]["text/latex"] for cell in notebook.cells]
    boxes = _vscode_boxes(chromium, texts, tmp_path)
    assert len(boxes) == len(CELLS)
    problems = [f"{name}: {box}" for name, box in zip(CELLS, boxes)
                if box["right"] > 1024 or box["height"] > 2 * 768]
    assert not problems, problems


@pytest.mark.browser
def test_the_vscode_width_check_catches_a_wide_matrix(chromium, tmp_path):
    require(node_missing())
    wide = "$$\\begin{array}{" + "c" * 40 + "}" + " & ".join(["-0.123456"] * 40) + \
        "\\end{array}$$"
    (box,) = _vscode_boxes(chromium, [wide], tmp_path)
    assert box["right"] > 1024


# Code named in a sentence (r.jacobian('x', layout=torch.sparse_csr), h.derivatives['w'], ...)
_ACCESS = re.compile(r"\b[rh]\.(?:jacobian|hessian|derivatives)[\[(][^\])]*[\])]")


def _copied_code(rendered_html: str) -> list[str]:
    """What a reader copies of each named access: the visible text (KaTeX's MathML left out)."""
    visible = re.sub(r"<math.*?</math>", "", rendered_html, flags=re.S)
    return _ACCESS.findall(html.unescape(re.sub(r"<[^>]+>", "", visible)))


def _not_python(notebook, mime: str) -> list[str]:
    texts = [cell.outputs[0]["data"][mime] for cell in notebook.cells]
    bad, seen = [], 0
    for name, rendered in zip(CELLS, render_vscode(texts)):
        for code in _copied_code(rendered["html"]):
            seen += 1
            try:
                compile(code, name, "eval")
            except SyntaxError:
                bad.append(f"{name}: {code!r}")
    assert seen >= 4  # h.hessian('w', …), h.derivatives['w'], three r.derivatives['net.0.weight']
    return bad


def test_code_named_in_markdown_sentences_copies_as_python(notebook):
    require(node_missing())
    assert not _not_python(notebook, "text/markdown")


def test_code_named_in_latex_sentences_copies_as_python_in_vscode(notebook):
    require(node_missing())
    assert not _not_python(notebook, "text/latex")
