"""The point structure in index notation, where the graph analysis proves it.

Every entry of the Jacobian is a product of Kronecker deltas, one per point axis pair, and an
entry of the derivatives ``D = r.derivatives[name]`` (shape ``component_shape + x.shape``)::

    ∂y_{ik}/∂X_{jl} = δ_{ij} (D_X)_{k,il}        (X @ A: row i of y uses row i of X)
    ∂y_i/∂x_j = δ_{ij} f'(x^{(i)})              (an elementwise f, the tutorial's x^{(i)})
    ∂y_{ij}/∂x_{kl} = δ_{ik} δ_{jl} f'(x^{(i)})  (the same f on a (5, 1) column)

Letters: the output's point axes are named as the headline names them (``row i of y``), one
component axis ``k`` as the loop beneath counts it (``v[:, k] = 1``); every other axis, the
input's included, takes the next free letter. Output axis a paired with input axis b gives
δ_{(letter of a)(letter of b)}; inside D the input index of a paired axis is written with the
output's letter (equal where δ is not 0). ``D``'s leading indices are the output's non-point
axes, in order. Every paired axis gets its δ, a pair of size-1 axes too (``δ_{jl}`` above).
The indices count from 1, as the maths of the display does (``RenderOptions.index_base``).

Only for pairings the graph proves for every input value (``evidence == "proved"``): a pairing
only observed by random probes at this input gets no formula (``None``), and neither does an
output without points (a scalar, a dense Jacobian) or ``--full``: there is nothing to factor.
"""
from __future__ import annotations

import math

from . import notation
from .codegen import expression, output_symbol
from .graph_facts import one_function
from .document import Formula, Math, Span, Text

LETTERS = "ijklmnpqrstuvw"  # index letters (no d, f, o: they mean things)


def _base(identifier: str) -> tuple[str, str]:
    """A name something can be subscripted after: ``x``, ``{w_{\\mathrm{hidden}}}``."""
    tex = notation.name_tex(identifier)
    simple = len(tex) == 1 or (tex.startswith("\\") and tex[1:].isalpha())
    return (tex if simple else "{" + tex + "}"), expression(identifier)


def _point_pairs(result, name: str) -> list[tuple[int, int]]:
    """The pairs whose axes have more than one point, by output axis."""
    item = result.inputs[name]
    return sorted((a, b) for a, b in item.pairing if item.shape[b] > 1)


def _paired(result, name: str) -> list[tuple[int, int]]:
    """Every pair of axes, by output axis (a δ each, size-1 axes included)."""
    return sorted((a, b) for a, b in result.inputs[name].pairing)


def index_letters(result, name: str) -> tuple[list[str], list[str]] | None:
    """Index letters of the output's and the input's axes (None: too many axes): the point
    axes as the headline names them (i; i, j, l, … for several), one component axis ``k`` as
    the loop counts it, every other axis the next free letter of :data:`LETTERS`."""
    item = result.inputs[name]
    out_dim, in_dim = result.output.dim(), item.dim()
    if out_dim + in_dim > len(LETTERS):
        return None
    pairs = _point_pairs(result, name)
    out: list[str | None] = [None] * out_dim
    for (a, _), letter in zip(pairs, notation.point_letters(len(pairs))):
        out[a] = letter
    components = [a for a in range(out_dim) if a not in item.pairing.out_axes]
    if len(components) == 1 and "k" not in out:
        out[components[0]] = "k"
    free = iter(c for c in LETTERS if c not in out)
    out = [letter or next(free) for letter in out]
    return out, [next(free) for _ in range(in_dim)]


def _uses_f(result, name: str) -> bool:
    """An elementwise f of one input: one scalar function, one number per point (the graph
    proves the one f: :func:`.graph_facts.one_function`)."""
    item = result.inputs[name]
    return (len(result.inputs) == 1 and math.prod(result.component_shape(name)) == 1
            and item.per_point_numel() == 1 and one_function(result, name))


def _factor(result, name: str, out: list[str], inn: list[str], pairs) -> tuple[str, str]:
    """The derivative entry: ``f'(x^{(i)})`` (the tutorial's point, as the derivatives
    below name it) or ``(D_X)_{j,il}``, in TeX and plain text."""
    into = {b: out[a] for a, b in pairs}
    at = "".join(into.get(b, letter) for b, letter in enumerate(inn))
    x_tex, x_plain = _base(name)
    if _uses_f(result, name):
        point = ",".join(out[a] for a, _ in _point_pairs(result, name))
        f = notation.letters()[0]
        return f"{f}'({x_tex}^{{({point})}})", f"{f}'({x_plain}^({point}))"
    points = {a for a, _ in result.inputs[name].pairing}
    comp = "".join(letter for a, letter in enumerate(out) if a not in points)
    sub_tex = f"{comp},\\,{at}" if comp else at
    sub_plain = f"{comp},{at}" if comp else at
    return f"(D_{{{x_tex}}})_{{{sub_tex}}}", f"(D_{x_plain})_{sub_plain}"


def index_math(result, name: str) -> Math | None:
    """``∂y_{ik}/∂X_{jl} = δ_{ij} (D_X)_{k,il}`` for input ``name``; None: see the module."""
    item = result.inputs[name]
    pairs = _point_pairs(result, name)
    letters = index_letters(result, name)
    if (item.unused or result.full or item.evidence != "proved" or not pairs
            or letters is None):
        return None
    out, inn = letters
    pairs = _paired(result, name)
    lhs = notation.partial(output_symbol(result), name, "".join(out), "".join(inn))
    delta_tex = r"\,".join(f"\\delta_{{{out[a]}{inn[b]}}}" for a, b in pairs)
    delta_plain = " ".join(f"δ_{out[a]}{inn[b]}" for a, b in pairs)
    tex, plain = _factor(result, name, out, inn, pairs)
    return Math(f"{lhs.tex} = {delta_tex}\\,{tex}", f"{lhs.plain} = {delta_plain} {plain}")


def _caption(result, name: str, out: list[str], inn: list[str], pairs) -> tuple[Span, ...]:
    """What δ and D are: ``δ_{ik} is 1 when i = k, else 0; D_X is r.derivatives['X'] (…)``."""
    deltas = r"\,".join(f"\\delta_{{{out[a]}{inn[b]}}}" for a, b in pairs)
    spans: list = [Math(deltas, " ".join(f"δ_{out[a]}{inn[b]}" for a, b in pairs)),
                   Text(" is 1 when ")]
    for k, (a, b) in enumerate(pairs):
        spans += [Text(" and ")] if k else []
        spans.append(Math(f"{out[a]} = {inn[b]}", f"{out[a]} = {inn[b]}"))
    spans.append(Text(", else 0"))  # proved for every x: the headline above says so
    item = result.inputs[name]
    if _uses_f(result, name):
        f = notation.letters()[0]
        return tuple(spans + [Text("; "), Math(f"{f}'", f"{f}'"),
                              Text(" is the derivative at each point.")])
    x_tex, x_plain = _base(name)
    dims = notation.dims(tuple(item.derivatives.shape))
    return tuple(spans + [Text("; "), Math(f"D_{{{x_tex}}}", f"D_{x_plain}"),
                          Text(f" ({dims}) holds the derivatives below.")])


def index_formula(result, name: str | None = None) -> Formula | None:
    """The Jacobian of the output with respect to ``name`` in index notation, with a caption
    saying what δ and D are; None where the graph proves no point structure."""
    name = result.input_name(name)
    math_ = index_math(result, name)
    if math_ is None:
        return None
    out, inn = index_letters(result, name)
    caption = _caption(result, name, out, inn, _paired(result, name))
    return Formula(notation.left_side(math_),  # (a long name: a letter, D_w as well)
                   caption=tuple(notation.left_side(s) if isinstance(s, Math) else s
                                 for s in caption))
