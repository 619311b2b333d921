"""Notes on what the cell's own successful ``backward`` calls computed (no error, no flag).

Two silent cases (the calls read off the :class:`~vjp_magic.run.backward_log.BackwardLog`):
:func:`ones_sections`: v = ones (or ``y.sum().backward()``) on an output with several
components per point, or whose Jacobian is not block-diagonal: ``.grad`` holds a sum
(``f₁′ + f₂′``, or the column sums of J). :func:`upstream_sections`: a general v (an upstream
gradient): the tutorial's special case vᵀJ = ∇(ℓ∘f)(x) with this cell's v, J and vᵀJ
(:func:`chain_rule_blocks`), and that one call fills every input's ``.grad``.
"""
from __future__ import annotations

import ast
import linecache
import math

import torch

from ..core.tolerances import tolerances
from ..render.document import Code, Math, Paragraph, Section, Text
from ..render.matrix import multi_index, tensor_block
from ..render.notation import counted, letters, math_name, name_tex, partial, spelled
from ..render.options import RenderOptions
from ..render.parameters import MANY_INPUTS, largest_tensors
from ..render.sections import formula, jacobian_block
from ..run.backward_log import CallKind, reaches
from ..run.cell_source import GRADIENT_ARGUMENT, find_call
from ..run.seeds import GradientKind, SeedTarget, seeds
from .sparse_dense import column_sums, is_sparse

VJP = Math(r"v^\top J", "vᵀJ")  # the vector-Jacobian product


# -- what the cell's own successful backward computed ------------------------------------------
def _call_text(log, seed) -> tuple[str | None, str | None, str | None]:
    """The call as the cell wrote it, the tensor it is on, and its gradient argument (each
    None where the line cannot be read)."""
    line = seed.call.line
    text = linecache.getline(log.filename, line).strip() if log.filename and line else ""
    site = find_call(text, CallKind.BACKWARD) if text else None
    if site is None:
        return None, None, None
    keyword, position = GRADIENT_ARGUMENT[site.style]
    given = next((k.value for k in site.node.keywords if k.arg == keyword), None)
    if given is None and len(site.node.args) > position:
        given = site.node.args[position]
    return text, site.y, (ast.get_source_segment(text, given) if given is not None else None)


def _summed_components(result, name: str, base: int = 1) -> Math:
    """``f₁′ + f₂′`` (or ``∂y₁/∂x + …``): what v = ones leaves in ``x.grad`` (the maths
    counted from ``base``)."""
    comp = result.component_shape(name)
    count = math.prod(comp)
    item = result.inputs[name]
    tex, plain = [], []
    for k in (range(count) if count <= 3 else [0, 1, None, count - 1]):
        if k is None:
            tex.append(r"\dots")
            plain.append("…")
            continue
        sub_tex = counted(multi_index(k, comp), base)
        sub = sub_tex.translate(_SUBSCRIPTS)
        if item.has_points and len(result.inputs) == 1:
            scalar = item.per_point_numel() == 1
            f = letters()[0]
            tex.append(f"{f}_{{{sub_tex}}}'" if scalar else rf"\nabla {f}_{{{sub_tex}}}")
            plain.append(f"{f}{sub}′" if scalar else f"∇{f}{sub}")
        else:
            y, x = name_tex(result.output_name), name_tex(name)
            tex.append(rf"\partial {y}_{{{sub_tex}}}/\partial {x}")
            plain.append(f"∂{result.output_name}{sub}/∂{name}")
    return Math(" + ".join(tex), " + ".join(plain))


_SUBSCRIPTS = str.maketrans("0123456789", "₀₁₂₃₄₅₆₇₈₉")


def _column_sums_vanish(result, name: str) -> bool:
    """The column sums of J are 0 (relative to the magnitudes that sum into them)."""
    item = result.inputs[name]
    rtol = tolerances(item.dtype).backward
    if is_sparse(item):  # from the CSR: no dense sum of the sparse derivatives
        sums, magnitudes = (column_sums(item.sparse.matrix, a) for a in (False, True))
    else:
        d = item.derivatives.detach().double()
        axes = tuple(range(len(result.component_shape(name))))
        sums, magnitudes = d.sum(axes), d.abs().sum(axes)
    return bool((sums.abs() <= rtol * magnitudes + 1e-300).all())


def _ones_note(result, log, seed, name: str, base: int = 1) -> Paragraph:
    text = _call_text(log, seed)[0]
    call = Code(text) if text else Text("The cell's backward with v = ones")
    y, item = result.output_name, result.inputs[name]
    count = math.prod(result.component_shape(name))
    if item.pairing or item.numel() == 1:
        what = (_summed_components(result, name, base),
                Text(f", the components summed: {y} has {count:,} components"
                     f"{' per point' if item.pairing else ''}, and v = ones adds up their "
                     "derivatives."))
    else:
        zero = _column_sums_vanish(result, name)
        what = (VJP, Text(" with v = ones: the column sums of "), Math("J", "J"),
                Text(f", here 0 (the entries of {y} add up to a constant)" if zero else ""),
                Text(f", not the gradient of any entry of {y}."))
    return Paragraph((Text("Note: "), call, Text(" left "), Code(f"{spelled(name)}.grad"),
                      Text(" = "))
                     + what + (Text(" Each component's own is below (v one-hot on it)."),))


def ones_sections(result, log, options: RenderOptions | None = None) -> tuple[Section, ...]:
    """The note on the cell's own backward with v = ones (or ``y.sum().backward()``) where
    each point has several components, or J is not block-diagonal: ``.grad`` holds a sum."""
    base = (options or RenderOptions()).index_base
    if result.output.numel() < 2:
        return ()
    for seed in seeds(log, result.output):
        if seed.target is SeedTarget.OTHER or seed.kind is not GradientKind.ONES:
            continue
        names = [n for n, i in result.inputs.items() if not i.unused and reaches(
            seed.call, i.tensor) and math.prod(result.component_shape(n)) > 1]
        if names:
            return (Section((_ones_note(result, log, seed, names[0], base),)),)
    return ()


# -- a general v: an upstream gradient ----------------------------------------------------------
def _listed(names: list[str]) -> tuple:
    """``x.grad``, ``W.grad`` and ``b.grad`` as code spans joined by words (of a module's
    many tensors the first two and the last: ``net[0].weight.grad, net[0].bias.grad, …,
    net[38].bias.grad (40 tensors)``)."""
    if len(names) > MANY_INPUTS:
        return (*_listed(names[:2])[:1], Text(", "), *_listed(names[1:2]), Text(", …, "),
                *_listed(names[-1:]), Text(f" ({len(names)} tensors)"))
    spans: list = []
    for i, name in enumerate(names):
        if i:
            spans.append(Text(" and " if i == len(names) - 1 else ", "))
        spans.append(Code(f"{spelled(name)}.grad"))
    return tuple(spans)


def _samples(result, names: list[str]) -> Paragraph | None:
    """For a layer: output axis 0, where it is a point axis, indexes the samples (the batch);
    the inputs paired along it get each sample's own, the others add up all samples'."""
    own = [n for n in names if 0 in result.inputs[n].pairing.out_axes]
    if not own:
        return None
    count = result.output.shape[0]
    shared = [n for n in names if n not in own]
    tail = ((Text("; "),) + _listed(shared) + (Text(f" add{'s' if len(shared) == 1 else ''} "
            f"up all {count:,} samples' contributions"),) if shared else ())
    batch = any(result.inputs[n].per_point_numel() > 1 for n in own)  # rows of a layer
    noun, one = ("samples (the batch)", "sample") if batch else ("points", "point")
    if not batch:
        tail = ((Text("; "),) + _listed(shared) + (Text(
            f" add{'s' if len(shared) == 1 else ''} up all {count:,} points' "
            "contributions"),) if shared else ())
    return Paragraph((Text(f"Axis 0 of {result.output_name} indexes the {count:,} {noun}: "),)
                     + _listed(own)
                     + (Text(f" hold{'s' if len(own) == 1 else ''} each {one}'s own"),)
                     + tail + (Text("."),))


def upstream_seed(result, log):
    """The first of the cell's own ``backward`` calls with a general v (not 0/1 entries) on
    ``result``'s output or what it depends on, and the inputs it reached; (None, [])."""
    for seed in seeds(log, result.output):
        names = [n for n, i in result.inputs.items() if reaches(seed.call, i.tensor)]
        if seed.kind is GradientKind.GENERAL and seed.tensor.numel() >= 2 and names:
            return seed, names
    return None, []


CHAIN_ENTRIES = 1_000_000  # m × n up to which vᵀJ is computed from J for the display


def chain_rule_blocks(result, v, names: list[str], options: RenderOptions,
                      jacobian: bool = True) -> list:
    """The tutorial's special case with this cell's numbers: ``v``, then for each input
    ``J`` (unless ``jacobian`` is False: shown already) and ``vᵀJ = ∇(ℓ∘f)(x)`` (the row
    vector reshaped like x: what ``x.grad`` holds)."""
    v = v.detach()
    blocks = [formula(Math("v", "v"), tensor_block(v), options, v.dtype, tuple(v.shape))]
    m = result.output.numel()
    for name in names:
        item = result.inputs[name]
        n = item.numel()
        if m * n > CHAIN_ENTRIES or v.numel() != m:
            continue
        device = item.derivatives.device
        jac = result.jacobian_block(name, torch.arange(m, device=device),
                                    torch.arange(n, device=device))
        product = (v.reshape(-1).to(device=device, dtype=jac.dtype) @ jac).reshape(
            item.shape)
        several = len(result.inputs) > 1
        if jacobian:
            lhs = partial(result.output_name, name, "i", "j") if several else Math("J", "J")
            blocks.append(formula(lhs, jacobian_block(result, name), options, jac.dtype))
        blocks.append(formula(_product_lhs(result, name), tensor_block(product), options,
                              product.dtype, tuple(product.shape)))
    return blocks


def _product_lhs(result, name: str) -> Math:
    """``vᵀJ = ∇(ℓ∘f)(x)``, as the sentence above says it (``vᵀ∂y/∂x = ∇_x(ℓ∘f)`` beside
    other inputs)."""
    x = math_name(name)
    if len(result.inputs) > 1:
        d = partial(result.output_name, name)
        return Math(rf"v^\top {d.tex} = \nabla_{{{x.tex}}}(\ell\circ f)",
                    f"vᵀ{d.plain} = ∇_{x.plain}(ℓ∘f)")
    return Math(rf"v^\top J = \nabla(\ell\circ f)({x.tex})", f"vᵀJ = ∇(ℓ∘f)({x.plain})")


def upstream_sections(result, log, options: RenderOptions | None = None,
                      numbers: bool = True) -> tuple[Section, ...]:
    """What the cell's own ``y.backward(gradient=g)`` with a general g (not 0/1 entries)
    computes: vᵀJ = ∇(ℓ∘f) for v = ∇ℓ(y), with this cell's v, J and vᵀJ (``numbers``
    False: ``--explain`` shows them), every input's ``.grad`` filled by one call."""
    options = options or RenderOptions()
    seed, names = upstream_seed(result, log)
    if seed is None:
        return ()
    text, y, g = _call_text(log, seed)
    y = y or (result.output_name if seed.target is SeedTarget.OUTPUT else "y")
    call = Code(text) if text else Code(f"{y}.backward(gradient={g or 'g'})")
    many = len(names) > MANY_INPUTS  # a module's parameters: named by p_k, one pictured
    at, at_plain = ((rf"p_1, \dots, p_{{{len(names)}}}", f"p_1, …, p_{len(names)}") if many else
                    (", ".join(name_tex(n) for n in names), ", ".join(names)))
    shown = numbers and seed.target is SeedTarget.OUTPUT
    tail = (": with this cell's numbers," if shown else
            "; this cell's numbers are in the explanation." if not numbers and
            seed.target is SeedTarget.OUTPUT else ".")
    given = (Text(" with v = "), Code(g or "g")) if (g or "g") != "v" else ()
    lead = Paragraph((call, Text(" computes "), VJP, *given, Text(". For v = "),
                      Math(rf"\nabla\ell({name_tex(y)})", f"∇ℓ({y})"),
                      Text(", a loss's upstream gradient, it is the tutorial's "),
                      Math(rf"v^\top J = \nabla(\ell\circ f)({at})",
                           f"vᵀJ = ∇(ℓ∘f)({at_plain})"),
                      Text(tail)))
    chained = [n for n in largest_tensors(result, 1) if n in names] if many else names
    chain = chain_rule_blocks(result, seed.gradient, chained, options) if shown else []
    fills = Paragraph((Text("This one backward fills "),) + _listed(names) + (
        Text(" at once, as training does: "), Code("loss.backward()"), Text(" sends "),
        Math(rf"\partial\ell/\partial {name_tex(y)}", f"∂ℓ/∂{y}"),
        Text(f" into {y} this way.")))
    samples = _samples(result, names) if seed.target is SeedTarget.OUTPUT else None
    if samples is not None:  # one paragraph: a line less on the screen
        fills = Paragraph(fills.spans + (Text(" "),) + samples.spans)
    return (Section((lead, *chain, fills)),)
