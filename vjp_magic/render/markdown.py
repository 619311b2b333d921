"""The document spelled as markdown: the display in JupyterLab, Notebook 7, VS Code and Colab.

Short paragraphs and lists that wrap, code in fenced ``python`` blocks (copyable, highlighted;
lines fitted by :func:`.codelines.fit_code`) inside a ``<div>`` that sets a monospace font
(nbconvert's HTML export gives an output's ``<pre>`` ``font-family: inherit``), maths only for
formulas and matrices: ``$…$`` inline, ``$$…$$`` on a line of its own (a ``large`` formula,
the result in presentation mode, begins ``\\Large``). The TeX is the LaTeX rendering's own
(:func:`latex.formula_tex`), safe for MathJax 3 and KaTeX.
"""
from __future__ import annotations

import re

from .codelines import fit_code
from .document import (Bullets, Code, CodeBlock, Document, Formula, Math, Paragraph, Section,
                       Span, Text)
from .latex import formula_tex, join_touching

# JupyterLab's own code font; the <pre> inherits it in nbconvert's HTML (JupyterLab sets it)
CODE_FONT = "<div style=\"font-family: Menlo, Consolas, 'DejaVu Sans Mono', monospace\">"
LARGE = r"\Large"  # a large formula's size (presentation mode): MathJax 3 and KaTeX know it
_ESCAPED = re.compile(r"([\\`*_\[\]<>$|~#&])")


def escape_text(text: str) -> str:
    """Prose for markdown: characters markdown (or the maths finder) would act on, escaped."""
    return _ESCAPED.sub(r"\\\1", text)


def _code(text: str) -> str:
    fence = "``" if "`" in text else "`"
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _span(span: Span) -> str:
    if isinstance(span, Text):
        return escape_text(span.text)
    if isinstance(span, Math):
        return f"${span.tex.strip()}$"
    if isinstance(span, Code):
        return _code(span.text)
    raise TypeError(f"not a span: {span!r}")


def _spans(spans) -> str:
    """Spans joined on one line; a line that would start like a list item or heading is escaped."""
    pieces = [_span(s) for s in spans]
    for i, _ in enumerate(spans[1:], 1):  # "$x$2" is no maths to KaTeX: "$x$ 2"
        if isinstance(spans[i - 1], Math) and pieces[i][:1].isdigit():
            pieces[i] = " " + pieces[i]
    text = join_touching("".join(pieces))  # "$a$$b$" would open display maths
    if re.match(r"[-+]\s|\d+[.)]\s", text):
        text = "\\" + text if text[0] in "-+" else re.sub(r"^(\d+)([.)])", r"\1\\\2", text)
    return text.replace("\n", " ")


def _paragraph(p: Paragraph) -> str:
    text = _spans(p.spans).strip()
    return f"**{text}**" if p.strong and text else text


def _block(block) -> str:
    if isinstance(block, Paragraph):
        return _paragraph(block)
    if isinstance(block, Bullets):
        return "\n".join((f"{n}. " if block.numbered else "- ") + _spans(item.spans)
                         for n, item in enumerate(block.items, 1))
    if isinstance(block, Formula):
        size = LARGE + " " if block.large else ""
        out = f"$${size}{formula_tex(block)}$$"
        return out + ("\n\n" + _spans(block.caption) if block.caption else "")
    if isinstance(block, CodeBlock):
        source = fit_code(block.source)
        fence = "````" if "```" in source else "```"
        return f"{CODE_FONT}\n\n{fence}python\n{source}\n{fence}\n\n</div>"
    raise TypeError(f"not a block: {block!r}")


def _section(section: Section) -> str:
    parts = [f"**{escape_text(section.title)}**"] if section.title else []
    return "\n\n".join(parts + [_block(b) for b in section.blocks])


def render(document: Document) -> str:
    """The whole document as markdown (blocks apart by blank lines)."""
    return "\n\n".join(_section(s) for s in document.sections if s.blocks or s.title) + "\n"


def maths(markdown: str) -> list[str]:
    """The TeX of every ``$…$`` and ``$$…$$`` in a rendering (outside code), for checks."""
    prose = re.sub(r"^(`{3,})python\n.*?^\1$", "", markdown, flags=re.S | re.M)
    prose = re.sub(r"(`+).*?\1", "", prose)
    prose = prose.replace(r"\$", "")
    return [a or b for a, b in re.findall(r"\$\$(.+?)\$\$|\$(.+?)\$", prose, flags=re.S)]
