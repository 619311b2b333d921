"""Stage 5b — plain-text rendering, for terminal IPython and ``repr``."""
from __future__ import annotations

from .formatting import (
    Block,
    derivative_blocks,
    describe_structure,
    fetch_block,
    format_number,
    gradient_code,
    jacobian_block,
    significant_digits,
    summary_indices,
)


def label(pair) -> str:
    kind, index, *variable = pair
    sub = ",".join(str(i + 1) for i in index)
    if kind == "d":
        return f"f_{sub}'" if sub else "f'"
    if kind == "grad":
        return f"grad f_{sub}" if sub else "grad f"
    if kind in ("out", "in"):
        symbol = variable[0] if variable else ("y" if kind == "out" else "x")
        return f"{symbol}_{sub}" if symbol.isidentifier() else f"({symbol})_{sub}"
    return "[" + ", ".join(str(i) for i in index) + ", :]"


def matrix(block: Block, options, dtype) -> list[str]:
    """Rows of right-aligned numbers, '...' where summarised, labels at the left and top."""
    digits = significant_digits(dtype, options.precision)
    rows = summary_indices(block.nrows, options.threshold, options.edgeitems)
    cols = summary_indices(block.ncols, options.threshold, options.edgeitems)
    values = fetch_block(block.get_block, rows, cols, block.device)
    if block.scalar:
        return [format_number(values[0][0], digits, latex=False)]
    table = []
    value_rows = iter(values)
    for r in rows:
        if r is None:
            table.append(["..." if c is None else ":" for c in cols])
            continue
        row_values = iter(next(value_rows))
        table.append(["..." if c is None else format_number(next(row_values), digits, latex=False)
                      for c in cols])
    if block.col_label is not None:
        table.insert(0, ["..." if c is None else label(block.col_label(c)) for c in cols])
    widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
    side = None
    if block.row_label is not None:
        side = ([""] if block.col_label is not None else []) + [
            ":" if r is None else label(block.row_label(r)) for r in rows
        ]
    side_width = max((len(s) for s in side), default=0) if side else 0
    lines = []
    for i, row in enumerate(table):
        body = "  ".join(cell.rjust(w) for cell, w in zip(row, widths))
        prefix = (side[i].rjust(side_width) + " ") if side else ""
        is_header = block.col_label is not None and i == 0
        lines.append(prefix + (f" {body} " if is_header else f"[{body}]"))
    return lines


def _term(source: str) -> str:
    """A name as is; an expression in parentheses (d(x**2).sum()/dx reads wrongly)."""
    return source if source.isidentifier() else f"({source})"


def render_text(result) -> str:
    """A readable multi-line summary of a result."""
    y = result.output
    out_name = result.output_name
    lines = [
        "vjp_magic: "
        + ", ".join(f"{n} {tuple(i.tensor.shape)} {str(i.tensor.dtype).replace('torch.', '')}"
                    for n, i in result.inputs.items())
        + f" -> {out_name} {tuple(y.shape)} {str(y.dtype).replace('torch.', '')}"
    ]
    lines.extend(s.text() for s in result.sections if getattr(s, "position", "top") == "top")
    for name, item in result.inputs.items():
        dtype = item.derivatives.dtype
        lines.append(f"{describe_structure(result, name)} (with respect to {name})")
        if item.unused:
            lines.append(f"  {out_name} does not depend on {name}: every derivative is 0.")
        if result.show_jacobian:
            block = jacobian_block(result, name)
            lines.append(f"Jacobian d{_term(out_name)}/d{_term(name)} "
                         f"({block.nrows} x {block.ncols}):")
            lines.extend("  " + row for row in matrix(block, result.options, dtype))
            continue
        lines.append(f"  gradient argument(s): {len(result.gradients[name])}, by hand:")
        lines.extend("    " + code for code in gradient_code(result, name))
        for title, block in derivative_blocks(result, name):
            if block is None:
                lines.append("  ...")
                continue
            heading = label(title) if title is not None else f"d{_term(out_name)}/d{_term(name)}"
            rows = matrix(block, result.options, dtype)
            lines.append(f"  {heading} = {rows[0]}")
            lines.extend("  " + " " * (len(heading) + 3) + row for row in rows[1:])
    lines.extend(s.text() for s in result.sections if getattr(s, "position", "top") == "bottom")
    lines.extend(f"note: {note}" for note in result.notes)
    return "\n".join(lines)
