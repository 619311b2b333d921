"""The document spelled as LaTeX: a body that compiles with amsmath (nbconvert's LaTeX/PDF export).

VS Code shows ``text/latex`` in preference to ``text/markdown`` and typesets it as markdown with
KaTeX, so this spelling is valid in both at once: prose escapes only what markdown reads the
same way (``\\_ \\% \\& \\# \\$ \\{ \\}``) and no text macros; maths is ``$…$`` and ``$$…$$`` only;
no environment outside maths (a list item is a paragraph that starts "(1)" or "–"); code is
:func:`code_block`, fancyvrb's ``Verbatim`` that markdown reads as a fenced code block with
nothing else shown (nbconvert's LaTeX template loads fancyvrb). The TeX of
maths is also what the markdown rendering hands to MathJax 3 and KaTeX, so it keeps to what
both accept: :data:`UNSAFE_TEX` lists what no maths may contain and
:func:`tex_problems` finds it (the tests and the symbolic display use the same list).
"""
from __future__ import annotations

import ast
import io
import re
import tokenize

from .codelines import fit_code
from .document import (Bullets, Code, CodeBlock, Document, Formula, Math, Matrix, Paragraph,
                       Section, Span, Text)

# Constructs that MathJax 3 or KaTeX (strict) reject, or that change other outputs' maths.
UNSAFE_TEX = (
    r"\newcommand", r"\renewcommand", r"\def", r"\let", r"\gdef", r"\edef", r"\boxed",
    r"\verb", r"\texttt", r"\require", r"\tag", r"\label", r"\ref", r"\eqref", r"\hbox",
    r"\mbox", r"\url", r"\href", r"\includegraphics", r"\begin{tabular}", r"\begin{align}",
    r"\begin{equation}",
)
MAX_MATRIX_COLUMNS = 10  # amsmath's MaxMatrixCols: wider matrices are arrays
# Environments maths may use (both MathJax 3 and KaTeX have them, in and out of $$).
ALLOWED_ENVIRONMENTS = ("bmatrix", "matrix", "array")


def tex_problems(tex: str) -> list[str]:
    """What in ``tex`` MathJax 3 or KaTeX (strict) would not typeset; empty when it is safe."""
    problems = [c for c in UNSAFE_TEX
                if re.search(re.escape(c) + (r"(?![A-Za-z])" if c[-1].isalpha() else ""), tex)]
    problems += [f"environment {env}" for env in re.findall(r"\\begin\{([^}]*)\}", tex)
                 if env not in ALLOWED_ENVIRONMENTS]
    unescaped = re.sub(r"\\[{}]", "", tex)
    depth = 0
    for ch in unescaped:
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if depth < 0:
            break
    if depth != 0:
        problems.append("unbalanced braces")
    if "$" in tex.replace(r"\$", ""):
        problems.append("a $ inside maths")
    problems += [f"non-ASCII character {ch!r} (KaTeX strict)" for ch in sorted(set(tex))
                 if ord(ch) > 127]
    return problems


# -- matrices and formulas as TeX (shared with the markdown rendering) -----------------------
def _rows(rows) -> str:
    return r" \\ ".join(" & ".join(rows_) for rows_ in rows)


def matrix_tex(matrix: Matrix) -> str:
    """A bmatrix (side labels as a plain matrix beside it) or a bracketed array with a header."""
    if matrix.scalar:
        return matrix.rows[0][0].tex
    cells = [[e.tex for e in row] for row in matrix.rows]
    factor = rf"10^{{{matrix.factor}}} \times " if matrix.factor is not None else ""
    if matrix.col_labels is not None:
        header = [e.tex for e in matrix.col_labels]
        if matrix.row_labels is not None:
            header = [matrix.corner.tex if matrix.corner else ""] + header
            cells = [[label.tex] + row for label, row in zip(matrix.row_labels, cells)]
        spec = ("c|" if matrix.row_labels is not None else "") + "c" * len(matrix.col_labels)
        return (factor + r"\left[\begin{array}{" + spec + "}" + " & ".join(header)
                + r" \\ \hline " + _rows(cells) + r"\end{array}\right]")
    if len(cells[0]) > MAX_MATRIX_COLUMNS:  # amsmath's bmatrix stops at 10 columns
        body = (r"\left[\begin{array}{" + "c" * len(cells[0]) + "}" + _rows(cells)
                + r"\end{array}\right]")
    else:
        body = r"\begin{bmatrix}" + _rows(cells) + r"\end{bmatrix}"
    if matrix.row_labels is None:
        return factor + body
    side = r" \\ ".join(e.tex for e in matrix.row_labels)
    return r"\begin{matrix}" + side + r"\end{matrix}" + factor + body  # labels, then 10^k × [...]


def formula_tex(formula: Formula) -> str:
    """``lhs = matrix suffix`` as one line of display maths (the suffix brings its own space)."""
    tex = formula.lhs.tex
    if formula.matrix is not None:
        tex += " = " + matrix_tex(formula.matrix)
    if formula.suffix is not None:
        tex += " " + formula.suffix.tex
    return tex


# -- prose ----------------------------------------------------------------------------------
_TEXT_ESCAPES = {
    "\\": r"$\backslash$", "{": r"\{", "}": r"\}", "$": r"\$", "&": r"\&", "#": r"\#",
    "%": r"\%", "_": r"\_", "~": r"$\sim$", "^": r"$\wedge$", "`": "'",
    "<": "$<$", ">": "$>$", "|": r"$\vert$",
    "×": r"$\times$", "−": "$-$", "→": r"$\to$", "←": r"$\leftarrow$", "↦": r"$\mapsto$",
    "≈": r"$\approx$",
    "≤": r"$\le$", "≥": r"$\ge$", "≠": r"$\ne$", "∂": r"$\partial$", "∇": r"$\nabla$",
    "∈": r"$\in$", "·": r"$\cdot$", "ᵀ": r"$^\top$", "′": "$'$", "…": r"$\dots$",
    "–": "--", "—": "---", "⁻": "$^-$", "⁽": "$^($", "⁾": "$^)$",
}
_TEXT_ESCAPES.update({sup: f"$^{d}$" for d, sup in enumerate("⁰¹²³⁴⁵⁶⁷⁸⁹")})
_TEXT_ESCAPES.update({sub: f"$_{d}$" for d, sub in enumerate("₀₁₂₃₄₅₆₇₈₉")})


# Greek letters as TeX: each macro is one that MathJax (2.7 and 3), KaTeX and LaTeX (amsmath,
# amssymb) all know and map back to the same character (KaTeX's and MathJax's own tables:
# ε is \varepsilon and ϵ \epsilon, φ is \varphi and ϕ \phi). Capitals without a macro of
# their own (and omicron) are the Latin letters they look like. tests/render/test_greek.py renders
# every entry with KaTeX and reads it back from MathJax's table.
GREEK_TEX = {
    "α": r"\alpha", "β": r"\beta", "γ": r"\gamma", "δ": r"\delta", "ε": r"\varepsilon",
    "ζ": r"\zeta", "η": r"\eta", "θ": r"\theta", "ι": r"\iota", "κ": r"\kappa",
    "λ": r"\lambda", "μ": r"\mu", "ν": r"\nu", "ξ": r"\xi", "ο": "o", "π": r"\pi",
    "ρ": r"\rho", "ς": r"\varsigma", "σ": r"\sigma", "τ": r"\tau", "υ": r"\upsilon",
    "φ": r"\varphi", "χ": r"\chi", "ψ": r"\psi", "ω": r"\omega",
    # the symbol variants
    "ϵ": r"\epsilon", "ϑ": r"\vartheta", "ϕ": r"\phi", "ϱ": r"\varrho", "ϖ": r"\varpi",
    "ϰ": r"\varkappa",
    # capitals
    "Α": "A", "Β": "B", "Γ": r"\Gamma", "Δ": r"\Delta", "Ε": "E", "Ζ": "Z", "Η": "H",
    "Θ": r"\Theta", "Ι": "I", "Κ": "K", "Λ": r"\Lambda", "Μ": "M", "Ν": "N", "Ξ": r"\Xi",
    "Ο": "O", "Π": r"\Pi", "Ρ": "P", "Σ": r"\Sigma", "Τ": "T", "Υ": r"\Upsilon",
    "Φ": r"\Phi", "Χ": "X", "Ψ": r"\Psi", "Ω": r"\Omega",
}


def greek_macro(ch: str) -> str | None:
    """``α`` → ``\\alpha``, ``λ`` → ``\\lambda``, ``Λ`` → ``\\Lambda``, ``Α`` → ``A``, ``ς`` →
    ``\\varsigma`` (:data:`GREEK_TEX`); None for anything else (KaTeX's strict mode rejects raw
    Greek in maths)."""
    return GREEK_TEX.get(ch)


# every character prose spells otherwise: the escapes, then Greek letters (a macro in maths,
# or the Latin letter they look like)
_TEXT_TABLE = str.maketrans({**{ch: (f"${tex}$" if tex.startswith("\\") else tex)
                                for ch, tex in GREEK_TEX.items()}, **_TEXT_ESCAPES})


def escape_text(text: str) -> str:
    """Prose for a LaTeX body: special characters escaped, maths symbols in ``$…$``."""
    escaped = text.translate(_TEXT_TABLE)
    # markdown's maths closes no "$" that a digit or a letter follows ("$-$1", "$\sim$y" are
    # raw text in VS Code): the digits go inside ("$-1$"), the letters as text ("$\sim\text{y}$")
    escaped = _MATH_THEN_DIGITS.sub(r"$\1\2$", escaped)
    return join_touching(_MATH_THEN_LETTERS.sub(r"$\1\\text{\2}$", escaped))


def join_touching(text: str) -> str:
    """Inline maths spans that touch made one (``$\\vert\\text{entry}$$\\vert$`` is
    ``$\\vert\\text{entry}\\vert$``): markdown's ``$$`` opens display maths (KaTeX in VS
    Code, MathJax), so no two ``$…$`` of a line of prose may meet (an escaped ``\\$`` is text)."""
    return _TOUCHING.sub("", text)


_TOUCHING = re.compile(r"(?<!\\)\$\$")
_MATH_THEN_DIGITS = re.compile(r"(?<!\\)\$([^$]+?)(?<!\\)\$(\d+(?:\.\d+)?)")
_MATH_THEN_LETTERS = re.compile(r"(?<!\\)\$([^$]+?)(?<!\\)\$([A-Za-z]+)")


def _span(span: Span) -> str:
    if isinstance(span, Text):
        return escape_text(span.text)
    if isinstance(span, Math):
        return f"${span.tex}$"
    if isinstance(span, Code):
        return inline_code(span.text)
    raise TypeError(f"not a span: {span!r}")


UNBROKEN_CODE = 12  # characters of inline code set as one unbreakable run at most
_CODE_BREAKS = re.compile(r"(?<=[.([_])|(?<=, )")  # inline code never breaks inside \texttt


def inline_code(text: str) -> str:
    """Code in a sentence: maths that LaTeX and KaTeX (VS Code shows ``text/latex``) set in
    typewriter type and a reader of either copies as the code (:func:`code_tex`). KaTeX sets
    a ' in text as a typographic ’ (a SyntaxError, or another string, when copied), so the
    code's strings are spelled with " (:func:`double_quoted`). A long one may break after
    . ( [ _ or ", " (a page is 70 wide; :data:`CODE_BREAK`)."""
    text = double_quoted(text)
    pieces = _CODE_BREAKS.split(text) if len(text) > UNBROKEN_CODE else [text]
    return "$" + CODE_BREAK.join(code_tex(p) for p in pieces if p) + "$"


# Where inline code may break: \allowbreak, then glue of no width that LaTeX may stretch
# (\; is 5mu plus 5mu there; KaTeX and MathJax set it 5mu wide, the kern takes it back).
# Without the stretch a sentence of a few long names (net.frozen.weight, net.frozen.bias,
# .requires_grad_()) has no line break within LaTeX's tolerance and sticks out past the
# margin (R3-6); glue after a line break is discarded, so no line starts with a space.
CODE_BREAK = r"\allowbreak\mkern-10mu\;\;"


def double_quoted(code: str) -> str:
    """``code`` with its string literals spelled between " and holding no ' (written
    ``\\x27``): the same Python; ``code`` itself where it holds no ', or where it does not
    read as Python (an option such as ``--wrt net``: its ' become ")."""
    if "'" not in code:
        return code
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(code).readline))
    except (tokenize.TokenError, SyntaxError, IndentationError):
        return code.replace("'", '"') if '"' not in code and "\\" not in code else code
    out, end = [], (1, 0)
    for token in tokens:
        if token.type in (tokenize.NEWLINE, tokenize.NL, tokenize.ENDMARKER):
            continue
        if token.start[0] != 1 or token.end[0] != 1:
            return code  # one line only
        out.append(code[end[1]:token.start[1]])
        out.append(_respelled(token.string) if token.type == tokenize.STRING else token.string)
        end = token.end
    out.append(code[end[1]:])
    return "".join(out)


def _respelled(literal: str) -> str:
    """A plain string literal between ", with its ' as \\x27 (a prefixed one: as it is)."""
    if literal[0] not in "'\"":
        return literal  # r'…', b'…', f'…': their escapes mean otherwise
    value = ast.literal_eval(literal)
    body = value.encode("unicode_escape").decode("ascii").replace('"', '\\"')
    return '"' + body.replace("'", "\\x27") + '"'


def _spans(spans) -> str:
    return join_touching("".join(_span(s) for s in spans))


_CODE_ESCAPES = {
    "\\": r"\textbackslash{}", "{": r"\{", "}": r"\}", "$": r"\$", "&": r"\&", "#": r"\#",
    "%": r"\%", "_": r"\_", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
}


def code_tex(text: str) -> str:
    """Inline code as maths both KaTeX and LaTeX set in typewriter type; a Greek letter (no
    typewriter font has one) as its maths macro between the typewriter runs: ``d_λ`` is
    ``\\texttt{d\\_}{\\lambda}``; a space as :data:`CODE_SPACE` between them."""
    out, run = [], []
    for ch in text:
        if ch == " ":
            if run:
                out.append(r"\texttt{" + "".join(run) + "}")
                run = []
            out.append(CODE_SPACE)
            continue
        macro = greek_macro(ch)
        if macro is None or not macro.startswith("\\"):
            run.append(_CODE_ESCAPES.get(ch) or macro or ch)
            continue
        if run:
            out.append(r"\texttt{" + "".join(run) + "}")
            run = []
        out.append("{" + macro + "}")
    if run or not out:
        out.append(r"\texttt{" + "".join(run) + "}")
    return "".join(out)


# A space of code: KaTeX's \texttt sets a space as a no-break space (copied, a SyntaxError),
# \char32 in maths as a space (a quarter em); LaTeX sets that as nothing: a thick space
# follows it (KaTeX: a typewriter space's half em in all; LaTeX: a space)
CODE_SPACE = r"{\char32}\;"


def _paragraph(p: Paragraph) -> str:
    """Bold would need a macro markdown shows as it is; a lead "1. " or "- " would make a
    markdown list (which swallows a code block after it), so it reads "(1) " or "– "."""
    text = _spans(p.spans)
    text = re.sub(r"^(\d+)[.)] ", r"(\1) ", text)
    return re.sub(r"^[-+] ", "– ", text)


def _block(block) -> str:
    if isinstance(block, Paragraph):
        return _paragraph(block)
    if isinstance(block, Bullets):
        if not block.items:
            return ""
        marks = [f"({n})" if block.numbered else "–" for n in range(1, len(block.items) + 1)]
        return "\n\n".join(f"{mark} {_spans(item.spans)}" for mark, item in zip(marks, block.items))
    if isinstance(block, Formula):
        out = "$$" + formula_tex(block) + "$$"
        if block.caption:
            out += "\n\n" + _spans(block.caption)
        return out
    if isinstance(block, CodeBlock):
        return code_block(block.source)
    raise TypeError(f"not a block: {block!r}")


# Before the Verbatim: the ties of the fence (``~~~``, three spaces to TeX) and the paragraph
# they started taken back, so that no empty line comes before the code.
_UNTIE = r"\unskip\unpenalty" * 3 + r"\setbox0\lastbox"


def code_block(source: str) -> str:
    """Code that is code to LaTeX and to markdown at once, with no line of either showing::

        ~~~\\unskip…\\begin{Verbatim}[lastline=N]   markdown: a fence, this its info string
        the N lines of code
        ~~~                                     markdown: the fence's end; TeX: line N+1,
        <!--                                    not printed (lastline); markdown: a comment
        \\end{Verbatim}                          … that hides the end of the Verbatim
        %-->                                    and ends on a TeX comment

    The lines are those of :func:`.codelines.fit_code`; the fence is longer than any run of
    tildes in them."""
    lines = fit_code(source).split("\n")
    fence = "~" * max([3] + [len(run) + 1 for run in re.findall(r"~{3,}", source)])
    return "\n".join([fence + _UNTIE + r"\begin{Verbatim}[lastline=%d]" % len(lines), *lines,
                      fence, "<!--", r"\end{Verbatim}", "%-->"])


def _section(section: Section) -> str:
    parts = [escape_text(section.title)] if section.title else []
    return "\n\n".join(parts + [_block(b) for b in section.blocks])


def render(document: Document) -> str:
    """The whole document as a LaTeX body that also reads as markdown (see the module's note)."""
    return "\n\n".join(_section(s) for s in document.sections if s.blocks or s.title) + "\n"
