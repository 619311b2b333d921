"""Stage 5a — LaTeX rendering (MathJax 3 and KaTeX safe: ``$$`` displays, bmatrix/array only).

Each display is kept small (summarised matrices), far below MathJax's buffer limits.
"""
from __future__ import annotations

import re
import unicodedata

from .formatting import (
    Block,
    derivative_blocks,
    describe_structure,
    fetch_block,
    format_number,
    gradient_code,
    jacobian_block,
    notation,
    significant_digits,
    summary_indices,
)

_CODE_ESCAPES = {
    "\\": r"\backslash{}", "{": r"\{", "}": r"\}", "_": r"\_", "#": r"\#", "%": r"\%",
    "&": r"\&", "$": r"\$", "^": r"\hat{}", "~": r"\sim{}", "<": r"\lt{}", ">": r"\gt{}",
    # spaces as wide as a monospace character; punctuation without math spacing
    " ": r"\phantom{0}", "=": "{=}", ",": "{,}", "-": "{-}", "+": "{+}", ":": "{:}", "*": "{*}",
    ".": "{.}", ";": "{;}", "!": "{!}", "|": r"\vert{}", "'": r"\text{'}", '"': r'\text{"}',
}


def code(text: str) -> str:
    """Source code in monospace, math-mode safe (no \\verb, no \\texttt escapes needed)."""
    return r"\mathtt{" + "".join(_CODE_ESCAPES.get(ch, ch) for ch in text) + "}"


def _greek(char: str) -> str | None:
    """``α`` → ``\\alpha`` (KaTeX's strict mode rejects raw Unicode letters in math)."""
    try:
        words = unicodedata.name(char).split()
    except ValueError:
        return None
    if words[:2] == ["GREEK", "SMALL"] and words[2:3] == ["LETTER"]:
        return "\\" + words[3].lower()
    if words[:2] == ["GREEK", "CAPITAL"] and words[2:3] == ["LETTER"]:
        return "\\" + words[3].capitalize()
    return None


def _word(text: str) -> str | None:
    """A name part as math: one letter in italics, longer ASCII words upright, Greek as macros."""
    if len(text) == 1 and _greek(text):
        return _greek(text)
    if not re.fullmatch(r"[A-Za-z0-9]+", text):
        return None
    return text if len(text) == 1 or text.isdigit() else r"\mathrm{" + text + "}"


def name(identifier: str) -> str:
    """A Python name as math: ``x``, ``x_{1}``, ``w_{\\mathrm{hidden}}``, ``\\mathrm{xs}``, ``\\alpha``;
    anything else (expressions, odd underscores) in monospace."""
    if identifier.isidentifier():
        head, _, tail = identifier.partition("_")
        head_tex = _word(head) if head else None
        if head_tex is not None and "_" not in identifier:
            return head_tex
        tail_tex = _word(tail) if tail else None
        if head_tex is not None and tail_tex is not None:
            return f"{head_tex}_{{{tail_tex}}}"
        if head_tex is not None and re.fullmatch(r"[A-Za-z0-9]+(_[A-Za-z0-9]+)+", tail):
            return f"{head_tex}_{{\\mathrm{{{tail.replace('_', chr(92) + '_')}}}}}"
    return code(identifier)


_TEXT_BREAKS = {"_": r"\_", "&": r"\&", "%": r"\%", "#": r"\#", "$": r"\$", "{": r"\{",
                "}": r"\}", "\\": r"\backslash", "^": r"\hat{}", "~": r"\sim"}


def text(words: str) -> str:
    """Words in \\text{}; characters that are special there are set in math mode between runs."""
    pieces = re.split(r"([_&%#$^~{}\\])", words)
    out = []
    for piece in pieces:
        if piece in _TEXT_BREAKS:
            out.append(_TEXT_BREAKS[piece])
        elif piece:
            out.append(r"\text{" + piece + "}")
    return "".join(out)


def shape_space(shape) -> str:
    if len(shape) == 0:
        return r"\mathbb{R}"
    return r"\mathbb{R}^{" + r" \times ".join(str(n) for n in shape) + "}"


def _index(index) -> str:
    return ",".join(str(i + 1) for i in index)


def label(pair) -> str:
    kind, index, *variable = pair
    sub = _index(index)
    if kind == "d":
        return f"f_{{{sub}}}'" if sub else "f'"
    if kind == "grad":
        return rf"\nabla f_{{{sub}}}" if sub else r"\nabla f"
    if kind in ("out", "in"):
        symbol = name(variable[0]) if variable else ("y" if kind == "out" else "x")
        if not re.fullmatch(r"[A-Za-z]|\\[A-Za-z]+", symbol):
            symbol = "{" + symbol + "}"
        return f"{symbol}_{{{sub}}}"
    return "[" + ", ".join(str(i) for i in index) + r", :]"


def matrix(block: Block, options, dtype) -> str:
    """A summarised bmatrix (side labels) or a labelled table (row and column labels)."""
    digits = significant_digits(dtype, options.precision)
    rows = summary_indices(block.nrows, options.threshold, options.edgeitems)
    cols = summary_indices(block.ncols, options.threshold, options.edgeitems)
    values = fetch_block(block.get_block, rows, cols, block.device)
    if block.scalar:
        return format_number(values[0][0], digits)
    lines = []
    value_rows = iter(values)
    for r in rows:
        if r is None:
            cells = [r"\ddots" if c is None else r"\vdots" for c in cols]
        else:
            row_values = iter(next(value_rows))
            cells = [r"\cdots" if c is None else format_number(next(row_values), digits)
                     for c in cols]
        if block.col_label is not None:
            cells = [label(block.row_label(r)) if block.row_label and r is not None
                     else (r"\vdots" if r is None else "")] + cells
        lines.append(" & ".join(cells))
    if block.col_label is not None:
        header = [""] + [r"\cdots" if c is None else label(block.col_label(c)) for c in cols]
        spec = "c|" + "c" * len(cols)
        return (r"\left[\begin{array}{" + spec + "}" + " & ".join(header) + r" \\ \hline "
                + r" \\ ".join(lines) + r"\end{array}\right]")
    body = r"\begin{bmatrix}" + r" \\ ".join(lines) + r"\end{bmatrix}"
    if block.row_label is None:
        return body
    side = [r"\vdots" if r is None else label(block.row_label(r)) for r in rows]
    return r"\begin{matrix}" + r" \\ ".join(side) + r"\end{matrix}" + body


def lhs(result, input_name: str) -> str:
    """What the matrix is: f'(x), ∇f(x), J_f(x) for one input, ∂y/∂x for several."""
    y, x = name(result.output_name), name(input_name)
    return {
        "partial": rf"\frac{{\partial {y}}}{{\partial {x}}}",
        "prime": f"f'({x})",
        "nabla": rf"\nabla f({x})",
        "jacobian": rf"J_f({x})",
    }[notation(result, input_name)]


def display(*rows: str) -> str:
    return "$$\\begin{array}{l}" + r" \\ ".join(rows) + r"\end{array}$$"


def header(result) -> str:
    y = result.output
    inputs = r",\ ".join(
        f"{name(n)} \\in {shape_space(item.tensor.shape)}" for n, item in result.inputs.items()
    )
    args = ", ".join(name(n) for n in result.inputs)
    dtypes = sorted({str(item.tensor.dtype).replace("torch.", "") for item in result.inputs.values()}
                    | {str(y.dtype).replace("torch.", "")})
    caption = text(
        "shapes: " + ", ".join(f"{n} {tuple(i.tensor.shape)}" for n, i in result.inputs.items())
        + f" to {result.output_name} "
        f"{tuple(y.shape)}, " + "/".join(dtypes)
    )
    return display(
        rf"{inputs} \ \longmapsto\ {name(result.output_name)} = f({args}) \in {shape_space(y.shape)}",
        caption,
    )


def gradient_arguments(result, input_name: str) -> str:
    """The gradient argument(s) v as 0/1 matrices (a few of them when there are many)."""
    grads = result.gradients[input_name]
    count = len(grads)
    dtype = result.output.dtype
    pieces = []
    for k in summary_indices(count, 4, 2):
        if k is None:
            pieces.append(r"\cdots")
            continue
        v = grads[k]
        pieces.append((f"v_{{{k + 1}}} = " if count > 1 else "v = ")
                      + matrix(_tensor_block(v), result.options, dtype))
    return r",\quad ".join(pieces)


def _tensor_block(tensor) -> Block:
    if tensor.dim() == 0:
        return Block(lambda r, c: tensor.reshape(1, 1), 1, 1, tensor.device, scalar=True)
    cols = tensor.shape[-1]
    rows = tensor.numel() // cols if cols else 0
    if tensor.dim() == 1:
        rows, cols = 1, tensor.shape[0]
    flat = tensor.reshape(rows, cols)
    return Block(lambda r, c: flat[r][:, c], rows, cols, tensor.device)


def derivatives_display(result, input_name: str) -> list[str]:
    item = result.inputs[input_name]
    dtype = item.derivatives.dtype
    words = describe_structure(result, input_name)
    if len(result.inputs) > 1:
        words += f", with respect to {input_name}"
    rows = [text(words)]
    if not result.show_jacobian:
        rows.append(text("gradient argument: ") + gradient_arguments(result, input_name))
        rows.extend(code(line) for line in gradient_code(result, input_name))
    if item.unused:
        rows.append(text(f"{result.output_name} does not depend on {input_name}: "
                         "every derivative is 0."))
    out = [display(*rows)]
    if result.show_jacobian:
        block = jacobian_block(result, input_name)
        m, n = block.nrows, block.ncols
        out.append(f"$$J = {matrix(block, result.options, dtype)}"
                   + rf"\quad ({m} \times {n})$$")
        return out
    for title, block in derivative_blocks(result, input_name):
        if block is None:
            out.append(r"$$\vdots$$")
            continue
        left = label(title) if title is not None else lhs(result, input_name)
        out.append(f"$${left} = {matrix(block, result.options, dtype)}$$")
    return out


def render_latex(result) -> str:
    """The whole display: shapes, then per input the structure, gradient arguments, matrices."""
    parts = [header(result)]
    parts.extend(s.latex() for s in result.sections if getattr(s, "position", "top") == "top")
    for input_name in result.inputs:
        parts.extend(derivatives_display(result, input_name))
    parts.extend(s.latex() for s in result.sections if getattr(s, "position", "top") == "bottom")
    for note in result.notes:
        parts.append(f"$${text(note)}$$")
    return "\n".join(parts)
