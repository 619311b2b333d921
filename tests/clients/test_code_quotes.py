"""Code named in a LaTeX sentence copies as the code from every client, whatever quotes it
holds: VS Code's KaTeX sets a ' in text as a typographic ’ (a SyntaxError when pasted, or
another string), so the code's strings are spelled with " and no '. Checked by rendering with
VS Code's pipeline (the copy means the same as the code) and compiling with xelatex."""
from __future__ import annotations

import html
import re
import subprocess

import pytest

from jupyter_harness import node_missing, render_vscode
from test_clients import require, tex_missing
from vjp_magic.render.latex import inline_code

CODES = [
    "r.jacobian('x')",                      # one kind: doubled quotes
    "d[\"a\"] + d['b']",                    # both kinds
    "f('it\"s', \"x\")",                     # both, one inside the other
    "print('a\\\\b')",                        # a backslash and '
    "x.get(\"it's\")",                       # a ' inside "…"
    "r.hessian('w', layout=torch.sparse_csr) + h.derivatives[\"w\"]",  # long: breaks
]


def _visible(rendered: str) -> str:
    """The text a reader selects: KaTeX's MathML and the tags left out."""
    text = re.sub(r"<math.*?</math>", "", rendered, flags=re.S)
    return html.unescape(re.sub(r"<[^>]+>", "", text)).replace("\u200b", "")


@pytest.mark.parametrize("code", CODES)
def test_code_copied_from_vscode_is_python_that_means_the_same(code):
    require(node_missing())
    (rendered,) = render_vscode([f"Call {inline_code(code)} now."])
    assert not rendered["errors"], rendered["errors"]
    copied = _visible(rendered["html"]).strip().removeprefix("Call").removesuffix("now.")
    copied = copied.strip().replace("\u00a0", " ")
    assert "’" not in copied and "‘" not in copied, copied
    assert eval(compile(copied, "copied", "eval"), {"__builtins__": {}}, _Names()) \
        == eval(compile(code, "code", "eval"), {"__builtins__": {}}, _Names())


class _Names(dict):
    """Any name a code reads: a recorder of calls and subscripts, to compare two codes."""

    def __missing__(self, key):
        return _Echo(key)


class _Echo:
    def __init__(self, path):
        self.path = path

    def __getattr__(self, name):
        return _Echo(f"{self.path}.{name}")

    def __call__(self, *args, **kwargs):
        return _Echo(f"{self.path}({args!r}, {sorted(kwargs.items())!r})")

    def __getitem__(self, key):
        return _Echo(f"{self.path}[{key!r}]")

    def __add__(self, other):
        return _Echo(f"{self.path} + {getattr(other, 'path', other)!r}")

    def __repr__(self):
        return self.path

    def __eq__(self, other):
        return isinstance(other, _Echo) and other.path == self.path

    __hash__ = None


def test_code_with_both_quotes_compiles_in_nbconverts_latex(tmp_path):
    require(tex_missing())
    body = "\n\n".join(f"Call {inline_code(c)} now." for c in CODES)
    (tmp_path / "q.tex").write_text(
        "\\documentclass{article}\\usepackage{amsmath}\\usepackage{upquote}\n"
        f"\\begin{{document}}\n{body}\n\\end{{document}}\n", encoding="utf-8")
    done = subprocess.run(["xelatex", "-interaction=nonstopmode", "-halt-on-error", "q.tex"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stdout[-2000:]
