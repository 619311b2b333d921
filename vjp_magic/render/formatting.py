"""Shared by the LaTeX and text renderers: numbers for their dtype, numpy-style summaries,
and the plain-language description of a result's structure."""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

ELLIPSIS = None  # marks an elided run of rows or columns in an index list


def significant_digits(dtype: torch.dtype, precision: int) -> int:
    """Digits worth showing: the requested precision, capped by what the dtype resolves."""
    if dtype.is_floating_point:
        resolvable = max(1, int(-math.log10(torch.finfo(dtype).resolution)))
        return max(1, min(precision, resolvable))
    return precision


def format_number(value: float, digits: int, latex: bool = True) -> str:
    """``2`` for integral values, ``0`` for -0, ``1.5 \\times 10^{-7}`` for small ones."""
    if math.isnan(value):
        return r"\mathrm{NaN}" if latex else "nan"
    if math.isinf(value):
        if latex:
            return r"\infty" if value > 0 else r"-\infty"
        return "inf" if value > 0 else "-inf"
    text = f"{value:.{digits}g}"
    if "e" in text:
        mantissa, exponent = text.split("e")
        exponent_value = int(exponent)
        if not latex:
            return f"{mantissa}e{exponent_value:+03d}"
        if mantissa in ("1", "-1"):
            sign = "-" if mantissa.startswith("-") else ""
            return f"{sign}10^{{{exponent_value}}}"
        return f"{mantissa} \\times 10^{{{exponent_value}}}"
    rounded = float(text)
    if rounded == 0:
        return "0"
    if rounded.is_integer():
        return str(int(rounded))
    return text


def summary_indices(size: int, threshold: int, edgeitems: int) -> list[int | None]:
    """``[0, 1, 2, None, n-3, n-2, n-1]`` past ``threshold`` entries, else all indices."""
    if size <= threshold:
        return list(range(size))
    edge = max(1, min(edgeitems, size // 2))
    return list(range(edge)) + [ELLIPSIS] + list(range(size - edge, size))


def fetch_block(
    get_block, rows: Sequence[int | None], cols: Sequence[int | None], device
) -> list[list[float]]:
    """Values of the shown rows and columns only (the only part copied to the CPU)."""
    row_index = torch.tensor([r for r in rows if r is not None], dtype=torch.long, device=device)
    col_index = torch.tensor([c for c in cols if c is not None], dtype=torch.long, device=device)
    if row_index.numel() == 0 or col_index.numel() == 0:
        return [[] for _ in row_index]
    block = get_block(row_index, col_index)
    return block.detach().to("cpu", torch.float64).tolist()


def multi_index(flat: int, shape: Sequence[int]) -> tuple[int, ...]:
    """Row-major multi-index of ``flat`` within ``shape``."""
    index = []
    for size in reversed(shape):
        index.append(flat % size)
        flat //= size
    return tuple(reversed(index))


def plural(count: int, word: str) -> str:
    return f"{count:,} {word}" if count == 1 else f"{count:,} {word}s"


def _valued(component_shape) -> str:
    return {1: "vector-valued", 2: "matrix-valued"}.get(len(component_shape), "tensor-valued")


def notation(result, name: str) -> str:
    """Which symbol the derivatives get: ``"partial"`` (∂y/∂x, several inputs or --full),
    ``"prime"`` (f'(x), a scalar per point), ``"nabla"`` (∇f(x)) or ``"jacobian"`` (J_f(x))."""
    if len(result.inputs) > 1 or result.full:
        return "partial"
    if result.inputs[name].per_point_numel() == 1:
        return "prime"
    return "nabla" if math.prod(result.component_shape(name)) == 1 else "jacobian"


def describe_structure(result, name: str) -> str:
    """The structure in words: "f applied at 5 points", "gradient of a scalar function", ..."""
    item = result.inputs[name]
    comp = result.component_shape(name)
    count = math.prod(comp)
    if result.full:
        return "full Jacobian"
    scalar_input = item.per_point_numel() == 1
    if item.has_points:
        # how the points are known: from the graph (every x), or by probes (this x only)
        evidence = f" (proved for every {name})" if item.evidence == "proved" else \
            f" (checked at this {name} only)"
        points = plural(item.point_count, "point") + evidence
        if count == 1:
            return (
                f"f applied at {points}" if scalar_input
                else f"gradient of a scalar function at {points}"
            )
        valued = _valued(comp)
        if scalar_input:
            return f"derivatives of a {valued} function ({count} components) at {points}"
        return f"gradients of a {valued} function ({count} components) at {points}"
    if count == 1:
        return "derivative of a scalar function" if scalar_input else "gradient of a scalar function"
    valued = _valued(comp)
    if scalar_input:
        return f"derivative of a {valued} function"
    return f"Jacobian of a {valued} function"


def gradient_code(result, name: str) -> list[str]:
    """The lines of plain PyTorch that compute these derivatives by hand with ``backward``."""
    item = result.inputs[name]
    # an expression output (y.sum(), (x**2)[0]) gets a name first, so the lines run as shown
    y = result.output_name if result.output_name.isidentifier() else "out"
    first = [] if y == result.output_name else [f"out = {result.output_name}"]
    if result.output.numel() == 1 and not result.full:
        return first + [f"{y}.backward()"]
    comp = result.component_shape(name)
    if math.prod(comp) == 1:
        return first + [f"{y}.backward(gradient=torch.ones_like({y}))"]
    point_out = {a for a, _ in item.pairing}
    letters = ["k"] if len(comp) == 1 else ["i", "j", "k", "l", "m", "n"][: len(comp)]
    if len(comp) > len(letters):
        letters = [f"i{n}" for n in range(len(comp))]
    names = iter(letters)
    index = [next(names) if a not in point_out else ":" for a in range(result.output.dim())]
    while index and index[-1] == ":":
        index.pop()
    if len(comp) == 1:
        loop = f"for k in range({comp[0]}):"
    else:
        ranges = ", ".join(f"range({n})" for n in comp)
        loop = f"for {', '.join(letters)} in itertools.product({ranges}):"
    return first + [
        loop,
        f"    v = torch.zeros_like({y}); v[{', '.join(index)}] = 1",
        f"    {y}.backward(gradient=v, retain_graph=True)  # then read {name}.grad, zero it",
    ]


# -- layout: how a derivative tensor is cut into 2-D matrices -------------------------------
class Block:
    """One 2-D matrix to draw: entries come from ``get_block(rows, cols)`` on demand.

    Labels are ``(kind, index)`` pairs the renderers spell out: kind ``"d"`` (f_k'),
    ``"grad"`` (∇f_k), ``"out"``/``"in"`` (y_{i,j}, x_{k,l}) or ``"index"`` ([i, j, :]).
    """

    def __init__(self, get_block, nrows, ncols, device, title=None, row_label=None,
                 col_label=None, scalar=False):
        self.get_block = get_block
        self.nrows = nrows
        self.ncols = ncols
        self.device = device
        self.title = title
        self.row_label = row_label
        self.col_label = col_label
        self.scalar = scalar


def _matrix_view(tensor: torch.Tensor, rows: int, cols: int):
    flat = tensor.reshape(rows, cols)
    return lambda r, c: flat[r][:, c]


def derivative_blocks(result, name: str) -> list[tuple[tuple | None, Block]]:
    """Cut ``derivatives[name]`` (shape component + input) into labelled matrices."""
    item = result.inputs[name]
    d = item.derivatives
    comp = result.component_shape(name)
    in_shape = tuple(item.tensor.shape)
    nc, nx = len(comp), len(in_shape)
    per_point_scalar = item.per_point_numel() == 1
    kind = "d" if per_point_scalar else "grad"
    device = d.device
    if d.dim() == 0:
        return [(None, Block(lambda r, c: d.reshape(1, 1), 1, 1, device, scalar=True))]
    if d.dim() == 1:
        n = d.shape[0]
        if nc == 1:  # vector-valued function of a scalar: a column, one row per component
            return [(None, Block(_matrix_view(d, n, 1), n, 1, device,
                                 row_label=lambda i: ("d", multi_index(i, comp))))]
        return [(None, Block(_matrix_view(d, 1, n), 1, n, device))]
    if d.dim() == 2:
        rows, cols = d.shape
        label = (lambda i: (kind, multi_index(i, comp))) if nc == 1 else None
        return [(None, Block(_matrix_view(d, rows, cols), rows, cols, device, row_label=label))]
    if nc >= 1 and nx >= 2:
        count = math.prod(comp)
        flat = d.reshape((count,) + in_shape)
        rows, cols = math.prod(in_shape[:-1]), in_shape[-1]
        blocks = []
        for k in summary_indices(count, result.options.threshold // 2 + 1, 2):
            if k is None:
                blocks.append((None, None))
                continue
            label = (lambda i, s=in_shape[:-1]: ("index", multi_index(i, s))) if nx > 2 else None
            blocks.append(((kind, multi_index(k, comp)),
                           Block(_matrix_view(flat[k], rows, cols), rows, cols, device,
                                 row_label=label)))
        return blocks
    rows, cols = math.prod(d.shape[:-1]), d.shape[-1]
    lead = tuple(d.shape[:-1])
    if nc >= 1 and nx == 1:
        label = lambda i: (kind, multi_index(i, comp))  # noqa: E731
    else:
        label = lambda i: ("index", multi_index(i, lead))  # noqa: E731
    return [(None, Block(_matrix_view(d, rows, cols), rows, cols, device, row_label=label))]


def jacobian_block(result, name: str) -> Block:
    """The flattened m × n Jacobian, labelled where shapes are not plain vectors."""
    item = result.inputs[name]
    out_shape, in_shape = tuple(result.output.shape), tuple(item.tensor.shape)
    m, n = result.output.numel(), item.tensor.numel()
    labelled = len(out_shape) >= 2 or len(in_shape) >= 2
    # an expression output (X @ X) is labelled y, as it is in the caption's y = f(x)
    y = result.output_name if result.output_name.isidentifier() else "y"
    x = name if name.isidentifier() else "x"
    row_label = (lambda i: ("out", multi_index(i, out_shape), y)) if labelled and out_shape else None
    col_label = (lambda j: ("in", multi_index(j, in_shape), x)) if labelled and in_shape else None
    return Block(
        lambda r, c: result.jacobian_block(name, r, c),
        m, n, item.derivatives.device, row_label=row_label, col_label=col_label,
        scalar=(m == 1 and n == 1),
    )
