"""A vector output's sparse second derivatives in words (:mod:`..core.vector_sparse_hessian`):
which entries of x each y[i]'s Hessian block sits on, how many nonzeros, from how many
products, and where all of them are. Never densified: the display stays a few sentences at
any size."""
from __future__ import annotations

from . import notation
from .codegen import output_symbol
from .document import Code, Paragraph, Text, paragraph
from .numbers import plural


def blocks_headline(h, name: str, evidence: list) -> Paragraph:
    """"Each of the 1,000 entries of y has a Hessian block on at most 3 entries of x
    (y[i] on x[i-1], x[i], x[i+1]), 0 elsewhere: at most 8,990 nonzeros from 9 Hessian-vector
    products …": ``evidence`` the headline's words on how it is known (the same owner
    as every headline's: proved for every x, or at this x where the cell's Python read
    a value of x)."""
    blocks = h.inputs[name].sparse_blocks
    y_name, x_name = output_symbol(h), name
    y, x = notation.prose_name(y_name), notation.prose_name(x_name)
    count = h.output.numel()
    side = f"{blocks.reads} × {blocks.reads}"
    where = [Text(f"Each of the {count:,} entries of "), y,
             Text(f" has a Hessian block of at most {side} on the entries of "), x,
             Text(" it reads")]
    if blocks.offsets is not None:
        reads = ", ".join(f"{x_name}[{_shifted(d)}]" for d in blocks.offsets)
        where += [Text(" ("), Code(f"{y_name}[i]"), Text(" reads "), Code(reads),
                  Text(" where they exist)")]
    groups = plural(blocks.groups, "sum")
    return paragraph(*where, ", 0 elsewhere: ",
                     f"at most {blocks.nnz:,} nonzeros from {blocks.products:,} Hessian-vector "
                     f"products on {groups} of entries of ", y, " that read disjoint entries "
                     "of ", x, f" ({blocks.passes:,} backward passes with the checks)",
                     *evidence, "; the values checked with random probes.")


def _shifted(d: int) -> str:
    return "i" if d == 0 else f"i+{d}" if d > 0 else f"i-{-d}"


def blocks_where(name: str) -> Paragraph:
    """Where all the nonzeros are: the sparse layouts of ``h.hessian``."""
    return Paragraph((Text("All of them: "),
                      Code(f"h.derivatives[{name!r}]"),
                      Text(" (sparse COO, shape y.shape + x.shape + x.shape) or "),
                      Code(f"h.hessian({name!r}, layout=torch.sparse_csr)"),
                      Text(" (2-D, rows (i, j) row-major); "), Code("h = _"),
                      Text(" after the cell.")))
