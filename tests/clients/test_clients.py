"""Every display in the clients people use: VS Code's renderer, nbconvert's HTML export (MathJax
2.7, offline) and nbconvert's LaTeX export compiled by xelatex. (JupyterLab: test_browser.py.)

The notebooks are the demo notebooks and ``tests/clients/cells.ipynb`` (a dozen cells of our own:
--explain, --code, --symbolic, mistakes, notes, 10^5 rows, several inputs, full Jacobians,
x.T @ W, einsum), each executed once per session by nbclient (``jupyter_harness``).

Needs node with ``tests/clients/node_modules`` (``npm ci --prefix tests/clients``), Chromium and
xelatex + pandoc (Debian: texlive-xetex texlive-latex-extra texlive-fonts-recommended
texlive-plain-generic lmodern pandoc); each check skips without its tool locally and fails
without it under CI=true. ``.ci/run`` installs them all.
"""
from __future__ import annotations

import html.parser
import os
import re
import shutil
import subprocess
from pathlib import Path

import nbformat
import pytest

from jupyter_harness import (
    ARTIFACTS, CLIENTS_DIR, NODE_MODULES, StaticServer, block_network, chromium_missing,
    client_notebooks, code_as_maths, display_outputs, executed_notebook_files, execute_notebook,
    CODE_PROBLEMS, chromium_browser, node_missing, python_fences, render_vscode,
)

NOTEBOOKS = client_notebooks()
IDS = [p.name for p in NOTEBOOKS]
RENDERED = ("text/markdown", "text/latex")  # the two mime types a markdown+maths client typesets
# The order in which VS Code picks the one mime type of an output it shows: the workbench's
# NOTEBOOK_DISPLAY_ORDER (microsoft/vscode src/vs/workbench/contrib/notebook/common/
# notebookCommon.ts; the user's `notebook.displayOrder` goes first), the first with a renderer.
# The ipynb extension sorts an output's items the same way (extensions/ipynb/src/
# deserializers.ts `orderOfMimeTypes`). text/latex comes BEFORE text/markdown in both, and the
# built-in markdown-it renderer (with markdown-math's KaTeX) renders text/latex as markdown.
VSCODE_ORDER = ("application/json", "application/javascript", "text/html", "image/svg+xml",
                "text/latex", "text/markdown", "image/png", "image/jpeg", "text/plain")
# A TeX environment's own line left visible (the old `\begin{verbatim}` around code)
_TEX_ENVIRONMENT = re.compile(r"\\(?:begin|end)\{[A-Za-z*]+\}")
OVERFULL_TOLERANCE_PT = 20.0  # a wide matrix may touch the margin, never leave the page


def require(missing: str | None) -> None:
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"client check cannot run in CI: {missing}")
        pytest.skip(missing)


def tex_missing() -> str | None:
    for tool in ("xelatex", "pandoc"):
        if shutil.which(tool) is None:
            return f"{tool} not found (apt-get install texlive-xetex texlive-latex-extra " \
                   "texlive-fonts-recommended texlive-plain-generic lmodern pandoc)"
    return None


def where(nb, cell: int) -> str:
    source = nb.cells[cell].source.strip().splitlines()
    return f"cell {cell} ({source[0][:60] if source else ''}{' …' if len(source) > 1 else ''})"


@pytest.fixture(scope="module")
def executed():
    """name → (path of the executed copy, its notebook node)."""
    files = executed_notebook_files()
    return {path.name: (files[path.name], execute_notebook(path)[0]) for path in NOTEBOOKS}


# --- VS Code -------------------------------------------------------------------------------

class _Leftovers(html.parser.HTMLParser):
    """Text outside KaTeX output and code that still looks like TeX: math that was not typeset."""

    SKIP = ("code", "pre", "script", "style")
    VOID = {"br", "hr", "img", "input", "meta", "link", "col", "area", "base", "wbr", "source"}

    def __init__(self):
        super().__init__()
        self.stack: list[bool] = []  # per open element: inside something skipped?
        self.found: list[str] = []
        self.pre_code: list[str] = []
        self.environments: list[str] = []  # \begin{…}/\end{…} shown as text, code included
        self._code: list[str] | None = None
        self._katex = 0  # open elements inside KaTeX's output

    def handle_starttag(self, tag, attrs):
        if tag in self.VOID:
            return
        classes = dict(attrs).get("class") or ""
        skipped = (bool(self.stack) and self.stack[-1]) or tag in self.SKIP \
            or re.search(r"\bkatex\b|\bkatex-display\b", classes) is not None
        self.stack.append(skipped)
        self._katex += bool(self._katex or re.search(r"\bkatex\b", classes))
        if tag == "pre":
            self._code = []

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        if self.stack:
            self.stack.pop()
        self._katex = max(0, self._katex - 1)
        if tag == "pre" and self._code is not None:
            self.pre_code.append("".join(self._code))
            self._code = None

    def handle_data(self, data):
        if self._code is not None:
            self._code.append(data)
        if not self._katex:
            self.environments += _TEX_ENVIRONMENT.findall(data)
        if not (self.stack and self.stack[-1]) and re.search(r"\$|\\[a-zA-Z]+", data):
            self.found.append(data.strip()[:120])


def leftovers(rendered_html: str) -> _Leftovers:
    parser = _Leftovers()
    parser.feed(rendered_html)
    parser.close()
    return parser


def vscode_shows(data: dict) -> str | None:
    return next((mime for mime in VSCODE_ORDER if mime in data), None)


def vscode_problems(nb) -> dict[str, list[str]]:
    """Kind of problem → places, for every markdown/LaTeX output of ``nb`` in VS Code's renderer."""
    items = [(cell, k, mime, data[mime]) for cell, k, data in display_outputs(nb)
             for mime in RENDERED if mime in data]
    rendered = render_vscode([text for *_, text in items]) if items else []
    problems: dict[str, list[str]] = {}
    shown = {}
    for (cell, k, mime, _), result in zip(items, rendered):
        label = f"{where(nb, cell)} {mime}"
        for e in result["errors"]:
            problems.setdefault(f"{mime}: KaTeX error", []).append(
                f"{label}: {e['message'][:160]!r}")
        for w in result["warnings"]:
            problems.setdefault(f"{mime}: KaTeX warning", []).append(f"{label}: {w[:160]!r}")
        left = leftovers(result["html"])
        for t in left.found[:2]:
            problems.setdefault(f"{mime}: raw TeX showing", []).append(f"{label}: {t!r}")
        shown[(cell, k, mime)] = left
    for cell, k, data in display_outputs(nb):
        mime = vscode_shows(data)
        if mime not in RENDERED:
            continue
        # In text/markdown a name or a line of code has backticks; text/latex has no spelling of
        # inline code that is LaTeX and markdown at once but $\texttt{…}$ (KaTeX keeps its text).
        for found in code_as_maths(data[mime]) if mime == "text/markdown" else ():
            kind = f"VS Code shows {mime}: code not copyable (\\mathtt/\\texttt)"
            problems.setdefault(kind, []).append(f"{where(nb, cell)}: {found!r}")
        for env in shown[(cell, k, mime)].environments[:1]:
            kind = f"VS Code shows {mime}: TeX environment lines visible"
            problems.setdefault(kind, []).append(f"{where(nb, cell)}: {env}")
        code = [re.sub(r"\s+", " ", pre).strip() for pre in shown[(cell, k, mime)].pre_code]
        for fence in python_fences(data.get("text/markdown", "")):
            body = re.sub(r"\s+", " ", fence).strip()
            if not any(body in block for block in code):
                problems.setdefault(f"VS Code shows {mime}: code not in a code block", []).append(
                    f"{where(nb, cell)}: {fence.strip()[:60]!r}")
    return problems


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_vscode_renders_every_output(path, executed):
    """markdown-it + @vscode/markdown-it-katex, configured as VS Code's notebook renderer, renders
    the text/markdown and text/latex of every output without a KaTeX error or raw TeX left; the
    mime type VS Code actually shows keeps the code as code (<pre><code>)."""
    require(node_missing())
    _, nb = executed[path.name]
    assert any(m in data for *_, data in display_outputs(nb) for m in RENDERED), \
        f"{path.name}: no markdown or LaTeX output at all"
    problems = vscode_problems(nb)
    assert not problems, f"{path.name} in VS Code's renderer:\n" + summarise(problems)


def summarise(problems: dict[str, list[str]], first: int = 4) -> str:
    """Each kind of problem with its count and its first few places."""
    lines = []
    for kind, places in problems.items():
        lines.append(f"{kind} ({len(places)}):")
        lines += [f"    {p}" for p in places[:first]]
        if len(places) > first:
            lines.append(f"    … and {len(places) - first} more")
    return "\n".join(lines)


# --- nbconvert HTML + MathJax 2.7 ---------------------------------------------------------

# Registered before MathJax loads (MathJax 2 reads a global `MathJax` object's AuthorInit): every
# TeX parse error and Math Processing Error is recorded, and `done` set after the last typeset.
_MATHJAX_HOOKS = """
window.__mj = {errors: [], done: false};
window.MathJax = {AuthorInit: function () {
    MathJax.Hub.Register.MessageHook("TeX Jax - parse error", function (m) {
        window.__mj.errors.push("TeX parse error: " + m[1] + " in " + String(m[2]).slice(0, 200));
    });
    MathJax.Hub.Register.MessageHook("Math Processing Error", function (m) {
        window.__mj.errors.push("Math Processing Error: " + String(m[2] && m[2].message || m[2]));
    });
    MathJax.Hub.Register.StartupHook("End", function () {
        MathJax.Hub.Queue(function () { window.__mj.done = true; });
    });
}};
"""
_HTML_PROBLEMS = r"""() => {
    const out = [...window.__mj.errors];
    const flagged = '.MathJax_Error, .mjx-merror, .MathJax_CHTML [style*="color: red"]';
    for (const n of document.querySelectorAll(flagged)) {
        out.push('MathJax error: ' + n.textContent.slice(0, 200));
    }
    if (document.body.innerText.includes('Math Processing Error')) {
        out.push('Math Processing Error shown');
    }
    const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
        const el = node.parentElement;
        if (el.closest('script, style, pre, code, .jp-InputArea, .MathJax_CHTML, .MathJax_Preview, '
                       + '.MJX_Assistive_MathML, .MathJax, .MathJax_Display')) continue;
        if (/\$\$|\\begin|\\\[|\\\(|\\(frac|text|mathtt|partial)\b/.test(node.textContent)) {
            out.push('raw TeX showing: ' + node.textContent.trim().slice(0, 150));
        }
    }
    return out;
}"""


# JupyterLab at 1024 px with the file browser open gives an output 572 px wide (render/options.py);
# nbconvert's page gives its outputs that width at about this viewport.
NARROW = {"width": 620, "height": 768}


@pytest.fixture(scope="module")
def chromium():
    require(chromium_missing())
    with chromium_browser() as browser:
        yield browser


@pytest.fixture(scope="module")
def html_server():
    """(server, folder): MathJax 2.7 from npm and the exported pages, served on 127.0.0.1."""
    require(node_missing())
    folder = ARTIFACTS / "clients" / "html"
    folder.mkdir(parents=True, exist_ok=True)
    with StaticServer({"mathjax": NODE_MODULES / "mathjax", "html": folder}) as server:
        yield server, folder


def html_problems(chromium, url: str, nb=None) -> tuple[int, list[str]]:
    """(formulas typeset, problems) of the page at ``url`` in Chromium, offline; with ``nb``
    (the notebook exported), also each of its pictures must be an image that loaded."""
    page = chromium.new_page(viewport={"width": 1024, "height": 768})
    try:
        block_network(page)
        page.add_init_script(_MATHJAX_HOOKS)
        page.goto(url)
        page.wait_for_function("() => window.__mj && window.__mj.done", timeout=90_000,
                               polling=250)
        problems = page.evaluate(_HTML_PROBLEMS) + page.evaluate(CODE_PROBLEMS)
        typeset = page.locator(".MathJax_CHTML, .MathJax_CHTML_Display, .mjx-chtml").count()
        images = page.evaluate(_IMAGES_SHOWN)
        page.set_viewport_size(NARROW)
        problems += [p for p in page.evaluate(CODE_PROBLEMS) if "mid-identifier" in p]
    finally:
        page.close()
    expected = sum("image/png" in data for _, _, data in display_outputs(nb)) if nb else 0
    if len(images) < expected:
        problems.append(f"{expected} pictures in the notebook, {len(images)} images in the page")
    problems += [f"a picture did not load or is shrunk: {i}" for i in images
                 if not i["loaded"] or i["shown"] < i["natural"] - 1]
    return typeset, problems


# The page's images: loaded, and shown at the size they were drawn.
_IMAGES_SHOWN = """() => [...document.querySelectorAll(
        '.jp-OutputArea-output img, .output_png img')]
    .map(img => ({loaded: img.complete && img.naturalWidth > 0, natural: img.naturalWidth,
                  shown: Math.round(img.getBoundingClientRect().width)}))"""


def export_html(nb, server: StaticServer, folder: Path, name: str) -> str:
    """`jupyter nbconvert --to html` of ``nb`` with the CDN's MathJax 2.7 replaced by the npm copy
    served by ``server``, written to ``folder``; its URL."""
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(
        mathjax_url=server.url("mathjax", "MathJax.js") + "?config=TeX-AMS_CHTML-full,Safe")
    body, _ = exporter.from_notebook_node(nb)
    (folder / name).write_text(body, encoding="utf-8")
    return server.url("html", name)


@pytest.mark.browser
@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_nbconvert_html_typesets_offline(path, executed, html_server, chromium):
    """The exported HTML in Chromium, nothing from the network: MathJax 2.7 typesets every
    formula without an error and no raw `$$` or TeX is left; code in outputs is monospace and
    breaks nowhere mid-identifier, at 1024 px and at JupyterLab's narrowest output width."""
    _, nb = executed[path.name]
    server, folder = html_server
    url = export_html(nb, server, folder, path.name.replace(".ipynb", ".html"))
    typeset, problems = html_problems(chromium, url, nb)
    assert typeset > 0, f"{path.name}: MathJax typeset nothing"
    assert not problems, f"{path.name} in nbconvert's HTML export:\n" + "\n".join(problems[:30])


# --- nbconvert LaTeX + xelatex ------------------------------------------------------------

_OVERFULL = re.compile(r"^Overfull \\hbox \((?P<pt>[\d.]+)pt too wide\) "
                       r"(?:in paragraph at lines (?P<a>\d+)--(?P<b>\d+)"
                       r"|detected at line (?P<c>\d+))",
                       re.M)


def output_line_ranges(tex: str) -> list[tuple[int, int]]:
    """1-based TeX line ranges of the outputs (between marked.tex.j2's comment lines)."""
    ranges, start = [], None
    for number, line in enumerate(tex.splitlines(), 1):
        if line.startswith("%% vjp-output-begin"):
            start = number
        elif line.startswith("%% vjp-output-end") and start is not None:
            ranges.append((start, number))
            start = None
    return ranges


def latex_problems(nb, folder: Path, stem: str) -> tuple[list[str], list[str]]:
    """(errors, outputs off the page) of ``jupyter nbconvert --to latex`` of ``nb`` compiled by
    xelatex in ``folder`` (``stem``.tex/.log/.pdf stay there)."""
    from nbconvert import LatexExporter

    folder.mkdir(parents=True, exist_ok=True)
    tex, resources = LatexExporter(
        template_file=str(CLIENTS_DIR / "marked.tex.j2")).from_notebook_node(nb)
    (folder / f"{stem}.tex").write_text(tex, encoding="utf-8")
    # the pictures, as nbconvert writes them
    for name, data in resources.get("outputs", {}).items():
        (folder / name).write_bytes(data)
    done = subprocess.run(
        ["xelatex", "-interaction=nonstopmode", "-halt-on-error", "-no-shell-escape",
         f"{stem}.tex"], cwd=folder, capture_output=True, text=True, timeout=240, check=False)
    log_path = folder / f"{stem}.log"
    log = log_path.read_text(encoding="utf-8", errors="replace") if log_path.exists() else ""
    errors = [line for line in log.splitlines() if line.startswith("! ")]
    if done.returncode != 0 and not errors:
        errors = [f"xelatex exited {done.returncode}: {done.stdout[-500:]}"]
    lines = tex.splitlines()
    outputs = output_line_ranges(tex)
    wide = []
    for m in _OVERFULL.finditer(log):
        first = int(m["a"] or m["c"])
        last = int(m["b"] or m["c"])
        if float(m["pt"]) > OVERFULL_TOLERANCE_PT and any(
                a <= last and first <= b for a, b in outputs):
            snippet = " ".join(lines[first - 1:last])[:160]
            wide.append(f"{float(m['pt']):.0f}pt too wide at TeX lines {first}-{last}: {snippet}")
    return errors, wide


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_nbconvert_latex_compiles(path, executed):
    """`jupyter nbconvert --to latex` compiles with xelatex (nbconvert's PDF path) without an
    error, and no output is wider than the text by more than OVERFULL_TOLERANCE_PT."""
    require(tex_missing())
    _, nb = executed[path.name]
    errors, wide = latex_problems(nb, ARTIFACTS / "clients" / "latex", path.stem)
    assert not errors, f"{path.name}: xelatex failed: {errors[:10]}"
    assert not wide, f"{path.name}: {len(wide)} outputs off the page in the PDF " \
        f"(artifacts/clients/latex/{path.stem}.pdf):\n" + "\n".join(wide[:15])


# --- the checks catch what they are for ----------------------------------------------------

def fake_notebook(outputs: list[dict]):
    """A notebook of one magic cell per display bundle in ``outputs``."""
    nb = nbformat.v4.new_notebook()
    nb.metadata.kernelspec = {"name": "python3", "display_name": "Python 3", "language": "python"}
    for n, data in enumerate(outputs, 1):
        cell = nbformat.v4.new_code_cell(f"%%vjp\ny = f(x)  # {n}", execution_count=n)
        cell.outputs = [nbformat.v4.new_output("execute_result", data=data, execution_count=n)]
        nb.cells.append(cell)
    return nb


BROKEN = [
    {"text/markdown": "Undefined: $\\foo{x}$.", "text/plain": "1"},
    {"text/markdown": "Display:\n\n\\[ x^2 \\]\n\nand \\noindent text", "text/plain": "2"},
    {"text/markdown": "ok\n\n```python\ny.backward()\n```\n", "text/plain": "3",
     "text/latex": "ok\n\n\\begin{verbatim}\ny.backward()\n\\end{verbatim}\n"},
    # the spelling before issue 22: code in an indented verbatim, which markdown shows whole
    {"text/markdown": "ok\n\n```python\ny.backward()\n```\n", "text/plain": "4",
     "text/latex": "ok\n\n    \\begin{verbatim}\n    y.backward()\n    \\end{verbatim}\n"},
]
# A code block as markdown spelled it before issue 22: no monospace <div>, a line too long
OLD_CODE = {"text/markdown": "```python\nd_layer_weight = layer.weight.new_zeros(4, "
                             "*layer.weight.shape); d_layer_weight[k] = layer.weight.grad; "
                             "layer.weight.grad = None\n```\n",
            "text/plain": "5"}
# (amsmath's bmatrix takes at most 10 columns: more is a LaTeX error, not an overfull box)
WIDE = "$$\\begin{bmatrix}" + " & ".join(["-0.1234567890"] * 9) + "\\end{bmatrix}$$"


def test_the_vscode_check_catches_broken_outputs():
    require(node_missing())
    problems = vscode_problems(fake_notebook(BROKEN))
    assert set(problems) >= {"text/markdown: KaTeX error", "text/markdown: raw TeX showing",
                             "text/latex: KaTeX error",
                             "VS Code shows text/latex: code not in a code block",
                             "VS Code shows text/latex: TeX environment lines visible"}, problems
    assert any(p.startswith("cell 3 ") for p in  # the old spelling
               problems["VS Code shows text/latex: TeX environment lines visible"]), problems


@pytest.mark.browser
def test_the_html_check_catches_broken_outputs(html_server, chromium):
    server, folder = html_server
    url = export_html(fake_notebook(BROKEN[:2] + [OLD_CODE]), server, folder, "broken.html")
    _, problems = html_problems(chromium, url)
    assert any("foo" in p for p in problems), problems
    assert any("proportional font" in p for p in problems), problems
    assert any("mid-identifier at 620 px" in p for p in problems), problems


def test_the_latex_check_catches_a_wide_matrix(tmp_path):
    require(tex_missing())
    errors, wide = latex_problems(fake_notebook([{"text/latex": WIDE, "text/plain": "w"}]),
                                  tmp_path, "wide")
    assert not errors and len(wide) == 1, (errors, wide)
    errors, _ = latex_problems(fake_notebook([{"text/latex": "$\\foo$", "text/plain": "e"}]),
                               tmp_path, "error")
    assert errors
