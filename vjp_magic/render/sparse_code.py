"""``r.code`` for an input whose Jacobian was computed by compressed passes (issue 20): the
coloured passes the display teaches — one backward per colour (by columns: one forward-mode
pass per colour of the input's entries) — then ``d_<name>`` decompressed from them as a
sparse COO tensor shaped ``output.shape + input.shape`` (with points, the component shape +
``input.shape``), as ``r.derivatives[name]`` is.

Never the one-hot loop (at n = 10⁵ that is 10⁵ passes and a dense n × n tensor). A stencil
whose colours have a closed form needs nothing but the cell's tensors: each entry's
neighbours are its offsets. Otherwise the colours and the pattern (where J may be nonzero)
are read off the result, as ``r`` (the caller names it; :func:`.codegen.reproducing_code`
checks it is this result first: never IPython's ``_``, which after ``r = differentiate(...)``
is an earlier output, or no name at all in a script), and the values still come from the
passes.
"""
from __future__ import annotations

from .codegen import fresh, grad_read
from .sparse import by_columns, colour_lines, layout_of, sparse_of, vectors


def coloured_lines(result, name: str, x: str, d: str, y: str, taken: set,
                   source: str = "r") -> list[str]:
    """The passes for input ``name`` (spelled ``x``; the output ``y``) into ``d``; every
    helper name fresh against ``taken``; the result, where read, is ``source``. ``.grad`` is
    zeroed before each backward and only ``x``'s is filled (``inputs=[x]``); the caller saves
    and restores it."""
    sparse = sparse_of(result, name)
    found = layout_of(sparse, result.output.shape, result.inputs[name].shape)
    k, columns = sparse.count, by_columns(sparse)
    colour, g, c = (fresh(b, taken) for b in ("colour", "g", "c"))
    if k == 1 and not columns:  # one colour: the tutorial's v = ones, one backward
        head = [f"# {name}: 1 backward pass, v = ones (each entry of {x} is read by one "
                f"entry of {y} at most)",
                f"if {x}.grad is not None: {x}.grad.zero_()",
                f"{y}.backward(gradient=torch.ones_like({y}), retain_graph=True, inputs=[{x}])",
                f"{g} = {grad_read(result, name, x)}.reshape(-1)  # v^T J"]
        value = f"{g}[{{q}}]"
        return head + _nonzeros_at(result, name, found, y, x, d, taken, source, value)
    head = [f"# {name}: {k:,} {'forward-mode' if columns else 'backward'} "
            f"pass{'es' if k != 1 else ''}, one per colour"]
    head += colour_lines(found.form, x if columns else y, k, name, {"colour": colour,
                                                                   "vs": fresh("vs", taken),
                                                                   "result": source},
                         taken, vectors(sparse))
    if columns:
        u, v, ju = (fresh(b, taken) for b in ("u", "v", "Ju"))
        head += [f"{v} = torch.zeros_like({y}, requires_grad=True)",
                 f"({g},) = torch.autograd.grad({y}, {x}, {v}, create_graph=True)",
                 f"{ju} = []  # J u: {g} = J^T {v} is linear in {v}, its VJP with {u} is J {u}",
                 f"for {c} in range({k}):",
                 f"    {u} = ({colour} == {c}).reshape({x}.shape).to({x})",
                 f"    {ju} += torch.autograd.grad({g}, {v}, {u}, retain_graph=True)",
                 f"{ju} = torch.stack({ju}).reshape({k}, -1)  # row c: J u"]
        value = f"{ju}[{colour}[{{q}}], {{p}}]"
    else:
        v = fresh("v", taken)
        head += [f"{g} = {x}.new_zeros({k}, {x}.numel())  # row c: v^T J, v of colour c",
                 f"for {c} in range({k}):",
                 f"    {v} = ({colour} == {c}).reshape({y}.shape).to({y})",
                 f"    if {x}.grad is not None: {x}.grad.zero_()",
                 f"    {y}.backward(gradient={v}, retain_graph=True, inputs=[{x}])",
                 f"    {g}[{c}] = {grad_read(result, name, x)}.reshape(-1)"]
        value = f"{g}[{colour}[{{p}}], {{q}}]"
    return head + _nonzeros_at(result, name, found, y, x, d, taken, source, value)


def _nonzeros_at(result, name: str, found, y: str, x: str, d: str, taken: set, source: str,
                 value: str) -> list[str]:
    """Where the nonzeros are (p of y, q of x), then ``d`` built from ``value`` at them."""
    p, q = fresh("p", taken), fresh("q", taken)
    if found.offsets is not None and found.form is not None:
        where = _at_offsets(found, y, x, (p, q), taken)
    else:
        where = _from_pattern(name, (p, q), fresh("pattern", taken), source)
    kept = [a for a in range(result.output.dim())
            if a not in result.inputs[name].pairing.out_axes]  # points: the input's index
    return where + _coo(d, y, x, p, q, value.format(p=p, q=q),
                        None if len(kept) == result.output.dim() else kept)


def _at_offsets(found, y: str, x: str, pq, taken: set) -> list[str]:
    """``p``, ``q``: the flat entries (p of y, q of x) of a stencil, each entry of y at its
    offsets (wrapped where the indices wrap, dropped past an edge)."""
    p, q = pq
    rows, off, j, inside = (fresh(b, taken) for b in ("rows", "offset", "j", "inside"))
    wraps = "; ".join(f"{j}[:, {k}] %= {x}.shape[{k}]" for k, w in enumerate(found.wraps) if w)
    return [
        f"# {y}[i] reads {x} at i + offset, for each offset",
        f"{rows} = torch.stack(torch.unravel_index(torch.arange({y}.numel()), {y}.shape), 1)",
        f"{p}, {q} = [], []",
        f"for {off} in {[tuple(o) for o in found.offsets]}:",
        f"    {j} = {rows} + torch.tensor({off})",
        *([f"    {wraps}"] if wraps else []),
        f"    {inside} = (({j} >= 0) & ({j} < torch.tensor({x}.shape))).all(1)",
        f"    {p}.append({inside}.nonzero().squeeze(1))",
        f"    {q}.append(torch.arange({x}.numel()).reshape({x}.shape)[tuple({j}[{inside}].T)])",
        f"{p}, {q} = torch.cat({p}), torch.cat({q})"]


def _from_pattern(name: str, pq, pattern: str, source: str) -> list[str]:
    """``p``, ``q`` where J may be nonzero: the pattern the analysis found (its indices only;
    the values are the passes')."""
    p, q = pq
    return [f"# where J may be nonzero: the pattern in the result {source}",
            f"{pattern} = {source}.jacobian({name!r}, layout=torch.sparse_csr)",
            f"{p} = torch.arange({pattern}.shape[0], device={pattern}.device).repeat_interleave(",
            f"    {pattern}.crow_indices().diff())",
            f"{q} = {pattern}.col_indices()"]


def _coo(d: str, y: str, x: str, p: str, q: str, value: str, kept=None) -> list[str]:
    """``d`` as a sparse COO tensor, shape ``y.shape + x.shape``; with points, only ``y``'s
    axes ``kept`` (its point axes are the input's: the component shape + ``x.shape``, as
    ``r.derivatives`` holds a point structure's)."""
    if kept is None:
        rows, shape = f"torch.stack(torch.unravel_index({p}, {y}.shape))", f"tuple({y}.shape)"
    else:
        rows = f"torch.stack(torch.unravel_index({p}, {y}.shape))[{kept}]"
        shape = "(" + "".join(f"{y}.shape[{a}], " for a in kept).rstrip(" ") + ")"
    comment = "" if kept is None else f"  # {y}'s points: {x}'s index"
    return [f"{d} = torch.sparse_coo_tensor(torch.cat([",
            f"    {rows},{comment}",
            f"    torch.stack(torch.unravel_index({q}, {x}.shape))]),",
            f"    {value}, {shape} + tuple({x}.shape),",
            "    check_invariants=True).coalesce()"]
