"""Greek names: one table (:data:`render.latex.GREEK_TEX`) spells every Greek letter as TeX,
for names and prose alike; each macro is one KaTeX and MathJax map back to the same letter, and a
cell whose variable is ``λ`` typesets in both and writes ``λ.grad`` in its code.

The KaTeX checks run node with ``tests/clients/node_modules`` (``npm ci --prefix tests/clients``);
they skip without it locally and fail without it under CI=true, as tests/clients/test_clients.py
does.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import unicodedata

import pytest

from jupyter_harness import CLIENTS_DIR, NODE_MODULES, node_missing, render_vscode
from vjp_magic.render import latex, markdown
from vjp_magic.render.codegen import expression
from vjp_magic.render.notation import name_tex

# Every Greek letter, capital and small (the Unicode "GREEK ... LETTER" names), and the symbol
# variants TeX has macros for.
LETTERS = "".join(c for c in map(chr, [*range(0x391, 0x3AA), *range(0x3B1, 0x3CA)])
                  if unicodedata.name(c, ""))
VARIANTS = "ϵϑϕϱϖϰ"
MACROS = {ch: latex.greek_macro(ch) for ch in LETTERS + VARIANTS}
LAMBDA_CELL = "λ = torch.tensor([1., 2.], requires_grad=True); y = λ**2"


def require_node() -> None:
    missing = node_missing()
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"KaTeX check cannot run in CI: {missing}")
        pytest.skip(missing)


# -- the table ------------------------------------------------------------------------------------
def test_every_greek_letter_has_a_spelling_and_names_use_the_same_one():
    assert len(LETTERS) == 49  # 24 capitals, 24 small letters and the final sigma
    assert all(MACROS.values()), [ch for ch, m in MACROS.items() if not m]
    assert set(latex.GREEK_TEX) == set(MACROS)
    for ch, macro in MACROS.items():
        assert latex.tex_problems(macro) == [], ch
        assert re.fullmatch(r"\\[A-Za-z]+|[A-Za-z]", macro), macro
        assert name_tex(ch) == macro  # a one-letter name is the letter's macro
    assert MACROS["λ"] == r"\lambda" and MACROS["Λ"] == r"\Lambda" and MACROS["Α"] == "A"
    assert [MACROS[c] for c in "εϵφϕθϑ"] == [r"\varepsilon", r"\epsilon", r"\varphi", r"\phi",
                                            r"\theta", r"\vartheta"]


def test_greek_inside_longer_names_code_and_prose_is_a_macro_too():
    assert name_tex("λ_1") == r"\lambda_{1}" and name_tex("x_λ") == r"x_{\lambda}"
    assert name_tex("λ2") == r"\mathtt{{\lambda}2}"  # braced: \lambda2 and \lambdax differ
    assert latex.code_tex("d_λ") == r"\texttt{d\_}{\lambda}"
    assert latex.escape_text("α and Ω") == r"$\alpha$ and $\Omega$"
    for tex in (name_tex("λ2"), name_tex("αβ.T @ w")):
        assert latex.tex_problems(tex) == [], tex
    assert latex.code_tex("d_λ.grad").isascii()


def test_a_greek_name_needs_no_parentheses_in_code():
    assert [expression(s) for s in ("λ", "λ.T", "θ_1", "layer.β", "mlp.0.weight", "λ @ w")] == [
        "λ", "λ.T", "θ_1", "layer.β", "mlp[0].weight", "(λ @ w)"]


# -- both typesetters know each macro, as the same letter -----------------------------------------
KATEX_EACH = r"""
const katex = require('katex');
const out = {};
for (const tex of JSON.parse(require('fs').readFileSync(0, 'utf8'))) {
    const warnings = [];
    out[tex] = {html: katex.renderToString(tex, {strict: (kind, message) => {
        warnings.push(message); return 'error'; }, throwOnError: true, output: 'mathml'}),
        warnings};
}
process.stdout.write(JSON.stringify(out));
"""


def test_katex_sets_each_macro_as_its_letter():
    require_node()
    done = subprocess.run(["node", "-e", KATEX_EACH], input=json.dumps(sorted(set(
        MACROS.values()))), capture_output=True, text=True, cwd=CLIENTS_DIR, timeout=60,
        check=False)
    assert done.returncode == 0, done.stderr[-2000:]  # a KaTeX error (an unknown macro) throws
    rendered = json.loads(done.stdout)
    for ch, macro in MACROS.items():
        mathml = rendered[macro]["html"]
        assert rendered[macro]["warnings"] == [], (ch, rendered[macro]["warnings"])
        letter = ch if macro.startswith("\\") else macro  # a Latin look-alike: that letter
        assert re.search(rf"<mi[^>]*>{re.escape(letter)}</mi>", mathml), (ch, macro, mathml)


MATHJAX_TABLES = ("unpacked/jax/input/TeX/jax.js", "unpacked/extensions/TeX/AMSsymbols.js")


def test_mathjax_knows_each_macro_as_its_letter():
    """MathJax 2.7's own tables (nbconvert's HTML export; MathJax 3 has the same entries):
    ``lambda: '03BB'``."""
    require_node()
    known: dict[str, int] = {}
    for table in MATHJAX_TABLES:
        text = (NODE_MODULES / "mathjax" / table).read_text()
        for name, code in re.findall(r"^\s*(\w+):\s*\[?'([0-9A-F]{4})'", text, flags=re.M):
            known.setdefault(name, int(code, 16))
    for ch, macro in MACROS.items():
        if macro.startswith("\\"):
            assert known.get(macro[1:]) == ord(ch), (ch, macro)


# -- a cell whose variable is λ --------------------------------------------------------------------
@pytest.mark.parametrize("line", ["--code", "--explain", "--full"])
def test_a_lambda_variable_typesets_in_katex_and_mathjax(run_vjp, line):
    bundle = run_vjp(LAMBDA_CELL, line)._repr_mimebundle_()
    md, tex, text = bundle["text/markdown"], bundle["text/latex"], bundle["text/plain"]
    assert r"\lambda" in tex and r"\lamda" not in tex and r"\lamda" not in md
    for shown in (md, tex, text):  # λ.grad, λ^(i), ∂y_i/∂λ_j: no parentheses round a name
        assert not re.search(r"\(λ\)(\.grad|\^|_)|∂\(λ\)", shown), shown
    for maths in markdown.maths(md):  # what MathJax 3 and KaTeX (strict) reject
        assert latex.tex_problems(maths) == [], maths
    if line != "--full":
        assert ("```python\nλ.grad = None  # backward adds to .grad: start from none\n"
                "y.backward(gradient=torch.ones_like(y))\nλ.grad\n```") in md
        assert "    λ.grad\n" in text
    require_node()
    for mime, shown in zip(("text/markdown", "text/latex"), render_vscode([md, tex])):
        assert shown["errors"] == [] and shown["warnings"] == [], (mime, shown)


def test_a_lambda_variable_symbolic_formula(run_vjp):
    r = run_vjp(LAMBDA_CELL, "--symbolic")
    md = r._repr_mimebundle_()["text/markdown"]
    assert r"$$f(\lambda) = \lambda^{2}$$" in md and r"$$f'(\lambda) = 2 \lambda$$" in md
    require_node()
    assert render_vscode([md])[0]["errors"] == []
