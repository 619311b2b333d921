"""A sparse Hessian's values, where they are, and the products as code (the rest of a
``%hessian`` display above the dense size, below its pattern in words).

The values are shown as ``%%vjp``'s sparse display shows a Jacobian's
(:func:`.sparse.values_block`: for a stencil a row per entry of x and a column per neighbour
it couples with, else the first rows at the entries they couple), read off the CSR, never
densified; the code is the coloured Hessian-vector products in the cell's names.
"""
from __future__ import annotations

from types import SimpleNamespace

from . import notation
from ..core.colouring import valid_rows
from .budget import fit_of, remembered
from .codegen import expression, fresh, output_symbol, result_check, taken_names
from .document import Code, CodeBlock, Math, Paragraph, Text
from .codelines import CODE_WIDTH
from .sparse import Form, entries_words, layout_of, sparse_of, values_block


def sparse_hessian_blocks(h, name: str, options) -> list:
    """The values (summarised to the budgets), where all of them are, and the code; on a
    short screen (:data:`.budget.LEVELS`) the values' caption and the code's comment lines
    go (the column labels still name the neighbours), then the values."""
    from .sections import formula  # the one way a matrix is laid out on its line

    block, caption, where, code = remembered(options, ("sparse hessian", name),
                                             lambda: _parts(h, name))  # once per fit
    fit = fit_of(options)
    blocks: list = [] if fit.components == 1 else [  # (the last resort: ``where`` says where)
        formula(_second(output_symbol(h), name), block, options,
                sparse_of(h, name).matrix.dtype, caption=caption if fit.extras else ())]
    if not fit.extras:  # a short screen: the code without its comment lines (it runs alike)
        code = "".join(line for line in code.splitlines(keepends=True)
                       if not line.lstrip().startswith("#"))
    return [*blocks, where, CodeBlock(code)]


def _parts(h, name: str) -> tuple:
    """What does not depend on the budget's level: the values' block and caption, the
    sentence on where all of them are, the code."""
    sparse = sparse_of(h, name)
    shape = tuple(h.inputs[name].shape)
    rows_as_x = SimpleNamespace(inputs={name: h.inputs[name]}, output_name=name,
                                output=h.inputs[name])  # a row per entry of x (its shape as seen)
    block, _ = values_block(rows_as_x, name)
    found = layout_of(sparse, shape, shape)
    x = notation.prose_name(name)
    caption = ([Text("A row per entry of "), x, Text(", a column per neighbour: the nonzeros, "
                                                    "diagonal by diagonal (0 past an edge).")]
               if found.offsets is not None else
               [Text(f"The first {block.nrows:,} rows, at the entries of "), x,
                Text(" they couple with.")])
    where = Paragraph((Text(f"All {entries_words(sparse, 'nonzeros', 'entries')}: "),
                       Code(f"h.hessian({name!r}, layout=torch.sparse_csr)"), Text(" or "),
                       Code(f"h.derivatives[{name!r}]"), Text(" ("), Code("h = _"),
                       Text(" after the cell)"), *_code_lead()))
    return block, caption, where, product_code(h, name, found.form)


def _second(y: str, x: str) -> Math:
    """``∂²y/∂x²`` with the cell's names (the columns say which entries)."""
    (y_tex, y_plain), (x_tex, x_plain) = notation.atom(y), notation.atom(x)
    return Math(rf"\frac{{\partial^2 {y_tex}}}{{\partial {x_tex}^2}}", f"∂²{y_plain}/∂{x_plain}²")


def _code_lead() -> list:
    return [Text("; the products, one per colour:")]


def product_code(h, name: str, form: Form | None) -> str:
    """The coloured products H·u as the cell would write them: the gradient with its graph,
    the colour of each entry of x (in closed form, else read off the result ``_`` right
    after the cell), one ``autograd.grad`` of the gradient per colour; then H read off
    them as core reads it (:func:`_read_off`)."""
    sparse = sparse_of(h, name)
    taken = taken_names(h)
    y = output_symbol(h)
    taken.add(y)
    lines = [] if y == h.output_name else [f"{y} = {h.output_name}"]
    x, k = expression(name), sparse.count
    g, colour, hu, c, u = (fresh(base, taken) for base in ("g", "colour", "Hu", "c", "u"))
    index = f"torch.arange({x}.numel())"
    reads_result = form is None or bool(form.exceptions)
    direct = _direct(sparse)
    if reads_result:  # (no closed form, or one with exceptions: read off)
        read = f"{colour} = _.inputs[{name!r}].sparse.colours.reshape(-1)"
        note = "  # _: h, the cell's result"
        colours = [result_check("_", h.seed),
                   read + note if len(read + note) <= CODE_WIDTH else read]
    elif form.coefficients:
        letters = [fresh(letter, taken) for letter in notation.point_letters(
            len(form.coefficients))]
        terms = " + ".join(f"{a} * {letter}" if a != 1 else letter
                           for a, letter in zip(form.coefficients, letters) if a)
        colours = [f"{', '.join(letters)} = torch.unravel_index({index}, {x}.shape)",
                   f"{colour} = ({terms}) % {k}  # of each entry"]
    else:
        colours = [f"{colour} = {index} % {k}  # of each entry"]
    lines += [f"({g},) = torch.autograd.grad({y}, {x}, create_graph=True)", *colours,
              f"{hu} = []  # row {c}: H {u}" + (f"; H[p, q] = {_at(hu, colour, sparse)} at "
                                                 "each nonzero" if direct and not reads_result
                                                 else ""),
              f"for {c} in range({k}):",
              f"    {u} = ({colour} == {c}).reshape({x}.shape).to({x})",
              f"    {hu} += torch.autograd.grad({g}, {x}, {u}, retain_graph=True)",
              f"{hu} = torch.stack({hu}).reshape({k}, -1)  # flattened"]
    if reads_result or not direct:  # H itself, from the result's pattern
        lines += _read_off(name, SimpleNamespace(
            x=x, colour=colour, hu=hu, k=k, direct=direct, n=sparse.matrix.shape[0],
            by_rows=getattr(sparse, "by_rows", False)), taken)
    return "\n".join(lines) + "\n"


def _at(hu: str, colour: str, sparse, p: str = "p", q: str = "q") -> str:
    """Where H[p, q] is read, as core reads it: ``Hu[colour[q], p]`` (H symmetric), or
    ``Hu[colour[p], q]`` where H is not proved symmetric (a custom backward: each product
    uᵀH holds rows of autograd's H as they are, :attr:`.core.sparse_hessian.SparseHessian.
    by_rows`)."""
    return f"{hu}[{colour}[{p}], {q}]" if getattr(sparse, "by_rows", False) else \
        f"{hu}[{colour}[{q}], {p}]"


def _direct(sparse) -> bool:
    """Whether no two columns of a row share a colour (a distance-2 colouring): then every
    H[p, q] is Hu[colour[q], p], as core reads it."""
    matrix = sparse.matrix
    return valid_rows(matrix.crow_indices().cpu().numpy(), matrix.col_indices().cpu().numpy(),
                      matrix.shape[0], sparse.colours.reshape(-1).cpu().numpy())


def _read_off(name: str, at, taken: set) -> list[str]:
    """Lines making H (sparse CSR, the result's pattern) from the products exactly as
    :func:`.core.colouring.recover_symmetric` does: H[p, q] = Hu[colour[q], p] where q is the
    only column of its colour in row p (every entry, for a distance-2 colouring), else
    Hu[colour[p], q] (a star colouring: read from the other side, H symmetric)."""
    pattern, crow, col, row, key, alone, h = (fresh(base, taken) for base in (
        "pattern", "crow", "col", "row", "key", "alone", "H"))
    colour, hu = at.colour, at.hu
    lines = ["# the nonzeros' places: the result's (_ right after the cell)",
             f"{pattern} = _.hessian({name!r}, layout=torch.sparse_csr)",
             f"{crow}, {col} = {pattern}.crow_indices(), {pattern}.col_indices()",
             f"{row} = torch.repeat_interleave(torch.arange({at.x}.numel(), "
             f"device={crow}.device), {crow}.diff())",
             f"{colour} = {colour}.to({crow}.device)"]
    if at.direct and at.by_rows:  # H not proved symmetric: autograd's rows as they are
        values = f"{hu}[{colour}[{row}], {col}]"
        lines.append(f"# H[p, q] = {hu}[{colour}[p], q]: p is the only row of its colour "
                     "with an entry in column q")
    elif at.direct:  # no two columns of a row share a colour
        values = f"{hu}[{colour}[{col}], {row}]"
        lines.append(f"# H[p, q] = {hu}[{colour}[q], p]: q is the only entry of its colour "
                     "in row p")
    else:
        indent = " " * (len(h) + len(crow) + len(col) + 43)  # under torch.where's first
        values = (f"torch.where({alone}, {hu}[{colour}[{col}], {row}],\n"
                  f"{indent}{hu}[{colour}[{row}], {col}])")
        lines += [f"# H[p, q] = {hu}[{colour}[q], p] where q is the only entry of its colour "
                  "in row p,",
                  f"# else {hu}[{colour}[p], q] (read from the other side: H is symmetric)",
                  f"{key} = {row} * {at.k} + {colour}[{col}]",
                  f"{alone} = torch.bincount({key}, minlength={at.n * at.k})[{key}] == 1"]
    lines.append(f"{h} = torch.sparse_csr_tensor({crow}, {col}, {values}, {pattern}.shape,\n"
                 f"{' ' * (len(h) + 27)}check_invariants=True)")
    return lines
