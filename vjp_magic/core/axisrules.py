"""How each backward node type moves the axis carries: the rules that :mod:`.axisflow` applies.

A rule gets a node, the :class:`Flow` of each of its forward inputs (None where an input does
not depend on x) and the shapes of its outputs, and returns one :class:`Flow` per output. It
never claims a carry that may fail, and says ``exact=False`` where what it drops might come
back later (a roll can be rolled back). A new op: write its rule here and list its node name
(the type without ``Backward<n>``) in :data:`RULES`, or in :data:`ELEMENTWISE`.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

Carry = tuple[int, ...]  # input axes, row-major, whose flattened index a tensor axis carries
AxisMap = dict[int, Carry]

_WRAP = 2**64  # negative dims come back from the C++ side as large unsigned numbers


@dataclass
class Flow:
    """What is known about one tensor of the graph: its carries and whether they are exact."""

    shape: tuple[int, ...]
    carries: AxisMap
    exact: bool = True


def _dim(value: int, ndim: int) -> int:
    value = int(value)
    if value >= _WRAP // 2:
        value -= _WRAP
    return value + ndim if value < 0 else value


def _dims(value, ndim: int) -> list[int]:
    if value is None:
        return list(range(ndim))
    if isinstance(value, int):
        return [_dim(value, ndim)]
    dims = [_dim(v, ndim) for v in value]
    return dims or list(range(ndim))


def base_name(node) -> str:
    return re.sub(r"Backward\d*$", "", type(node).__name__)


Rule = Callable[..., list]  # rule(node, inputs, shapes, x_shape) -> one Flow (or None) per output


def rule_for(node) -> Rule | None:
    """The rule for ``node`` (called as ``rule(node, inputs, shapes, x_shape)``), else None."""
    name = base_name(node)
    rule = RULES.get(name)
    if rule is None and name in ELEMENTWISE:
        rule = _elementwise
    if rule is None or rule is _reshape:  # only reshapes need the input's own shape
        return rule
    return lambda node, inputs, shapes, x_shape: rule(node, inputs, shapes)


def _all_exact(inputs) -> bool:
    return all(f.exact for f in inputs if f is not None)


def _meet(out_shape, contributions: list[AxisMap], exact: bool) -> list[Flow]:
    """An output axis keeps a carry only if every input that depends on x agrees on it."""
    if not contributions:
        return [Flow(out_shape, {}, exact)]
    carries = dict(contributions[0])
    for other in contributions[1:]:
        carries = {a: c for a, c in carries.items() if other.get(a) == c}
    return [Flow(out_shape, carries, exact)]


def _broadcast(flow: Flow, out_shape) -> AxisMap:
    """Carries of an input broadcast to ``out_shape`` (right-aligned, size-1 axes expand)."""
    shift = len(out_shape) - len(flow.shape)
    return {a + shift: c for a, c in flow.carries.items()
            if 0 <= a + shift < len(out_shape) and flow.shape[a] == out_shape[a + shift]}


def _elementwise(node, inputs, shapes):
    out = shapes[0]
    maps = [_broadcast(f, out) for f in inputs if f is not None]
    return _meet(out, maps, _all_exact(inputs))


def _drop_axes(flow: Flow, dropped: set[int], keep_dims: bool) -> AxisMap:
    """Carries after removing (or keeping as size 1) the axes ``dropped``."""
    carries = {}
    for a, c in flow.carries.items():
        if a in dropped:
            continue
        carries[a if keep_dims else a - sum(1 for d in dropped if d < a)] = c
    return carries


def _reduction(node, inputs, shapes):
    (flow,) = [f for f in inputs if f is not None][:1]
    ndim = len(flow.shape)
    out = shapes[0]
    dims = getattr(node, "_saved_dim", None)
    keepdim = bool(getattr(node, "_saved_keepdim", False))
    reduced = set(range(ndim)) if dims is None or len(out) == 0 else set(_dims(dims, ndim))
    if not keepdim and len(out) != ndim - len(reduced):
        reduced = set(range(ndim))  # a full reduction spelled another way
        keepdim = len(out) == ndim
    # every output (std_mean / var_mean have two) is the same reduction
    return [Flow(shape, _drop_axes(flow, reduced, keepdim), flow.exact) for shape in shapes]


def _along_dim(node, inputs, shapes):
    """softmax, cumsum, … along ``dim``: that axis mixes, the others are untouched."""
    (flow,) = [f for f in inputs if f is not None][:1]
    dims = getattr(node, "_saved_dim", None)
    if dims is None:
        dims = node._saved_dims
    mixed = set(_dims(dims, len(flow.shape)))
    return [Flow(shapes[0], _drop_axes(flow, mixed, True), flow.exact)]


def _layer_norm(node, inputs, shapes):
    flow = inputs[0]
    out = shapes[0]
    k = len(node._saved_normalized_shape)
    main = [] if flow is None else [{a: c for a, c in flow.carries.items() if a < len(out) - k}]
    maps = main + [_broadcast(f, out) for f in inputs[1:] if f is not None]
    return _meet(out, maps, _all_exact(inputs))


def _batch_norm(node, inputs, shapes):
    flow = inputs[0]
    out = shapes[0]
    maps = []
    if flow is not None:
        training = bool(getattr(node, "_saved_training", True))
        maps.append(dict(flow.carries) if not training else
                    {a: c for a, c in flow.carries.items() if a == 1})
    for f in inputs[1:]:
        if f is not None:  # weight / bias of shape (C,): channel axis 1
            maps.append({1: f.carries[0]} if 0 in f.carries else {})
    return _meet(out, maps, _all_exact(inputs))


def _reshape(node, inputs, shapes, x_shape):
    """view/reshape/squeeze/unsqueeze: blocks of axes with equal products map onto each other."""
    (flow,) = [f for f in inputs if f is not None][:1]
    out = shapes[0]
    carries, exact = _reshape_carries(flow, out, x_shape)
    return [Flow(out, carries, flow.exact and exact)]


def _blocks(a_shape, b_shape):
    """Groups of the axes of size > 1 of two shapes of equal numel whose sizes multiply to the
    same number (size-1 axes carry nothing and are left out)."""
    a = [k for k, n in enumerate(a_shape) if n > 1]
    b = [k for k, n in enumerate(b_shape) if n > 1]
    blocks, i, j = [], 0, 0
    while i < len(a) and j < len(b):
        group_a, group_b = [a[i]], [b[j]]
        prod_a, prod_b = a_shape[a[i]], b_shape[b[j]]
        i, j = i + 1, j + 1
        while prod_a != prod_b:
            if prod_a < prod_b:
                group_a.append(a[i])
                prod_a *= a_shape[a[i]]
                i += 1
            else:
                group_b.append(b[j])
                prod_b *= b_shape[b[j]]
                j += 1
        blocks.append((group_a, group_b))
    return blocks


def _reshape_carries(flow: Flow, out, x_shape) -> tuple[AxisMap, bool]:
    carries: AxisMap = {}
    exact = True
    for big_in, big_out in _blocks(flow.shape, out):
        if any(a not in flow.carries for a in big_in):
            exact = exact and not any(a in flow.carries for a in big_in)
            continue
        joined = [b for a in big_in for b in flow.carries[a]]
        split = _split(joined, [out[a] for a in big_out], x_shape)
        if split is None:
            exact = False
            continue
        carries.update(zip(big_out, split))
    return carries, exact


def _split(joined, sizes, x_shape):
    """Partition the carried input axes so each output axis gets a run of matching size."""
    axis_size = dict(enumerate(x_shape))
    runs, start = [], 0
    for size in sizes:
        product, stop = 1, start
        while stop < len(joined) and product < size:
            product *= axis_size[joined[stop]]
            stop += 1
        if product != size:
            return None
        runs.append(tuple(joined[start:stop]))
        start = stop
    return runs if start == len(joined) else None


def _permute(node, inputs, shapes):
    (flow,) = [f for f in inputs if f is not None][:1]
    ndim = len(flow.shape)
    name = base_name(node)
    if name == "Permute":
        order = [_dim(d, ndim) for d in node._saved_dims]
    else:
        order = list(range(ndim))
        if name == "Transpose":
            d0, d1 = _dim(node._saved_dim0, ndim), _dim(node._saved_dim1, ndim)
        else:  # T: 2-D transpose (1-D: nothing to do)
            d0, d1 = (0, 1) if ndim == 2 else (0, 0)
        order[d0], order[d1] = order[d1], order[d0]
    carries = {new: flow.carries[old] for new, old in enumerate(order) if old in flow.carries}
    return [Flow(shapes[0], carries, flow.exact)]


def _expand(node, inputs, shapes):
    (flow,) = [f for f in inputs if f is not None][:1]
    return [Flow(shapes[0], _broadcast(flow, shapes[0]), flow.exact)]


def _rearrange(node, inputs, shapes):
    """roll / flip / repeat: entries move along these dims, so their carries are lost."""
    (flow,) = [f for f in inputs if f is not None][:1]
    ndim = len(flow.shape)
    if base_name(node) == "Repeat":
        repeats = list(node._saved_repeats)
        lead = len(repeats) - ndim
        moved = {a for a in range(ndim) if repeats[a + lead] != 1}
        carries = {a + lead: c for a, c in flow.carries.items() if a not in moved}
        return [Flow(shapes[0], carries, flow.exact and not moved & set(flow.carries))]
    dims = getattr(node, "_saved_dims", None)
    moved = set(_dims(dims, ndim)) if dims else set(range(ndim))
    # a later roll or flip can move the entries back: what is lost here may not stay lost
    return [Flow(shapes[0], _drop_axes(flow, moved, True),
                 flow.exact and not moved & set(flow.carries))]


def _select(node, inputs, shapes):
    (flow,) = [f for f in inputs if f is not None][:1]
    ndim = len(flow.shape)
    dim = _dim(node._saved_dim, ndim)  # a later stack can put the selected parts back
    return [Flow(shapes[0], _drop_axes(flow, {dim}, False), flow.exact and dim not in flow.carries)]


def _slice(node, inputs, shapes):
    (flow,) = [f for f in inputs if f is not None][:1]
    ndim = len(flow.shape)
    dim = _dim(node._saved_dim, ndim)
    start = 0 if node._saved_start is None else max(0, _dim(node._saved_start, flow.shape[dim]))
    if start == 0 and int(node._saved_step) == 1:  # a prefix: index i is still index i
        return [Flow(shapes[0], dict(flow.carries), flow.exact)]
    return [Flow(shapes[0], _drop_axes(flow, {dim}, True), False)]


def _unbind(node, inputs, shapes):
    (flow,) = [f for f in inputs if f is not None][:1]
    dim = _dim(node._saved_dim, len(flow.shape))
    exact = flow.exact and dim not in flow.carries  # a later stack can undo the unbind
    return [Flow(shape, _drop_axes(flow, {dim}, False), exact) for shape in shapes]


def _split_outputs(node, inputs, shapes):
    (flow,) = [f for f in inputs if f is not None][:1]
    dim = _dim(node._saved_dim, len(flow.shape))
    first = Flow(shapes[0], dict(flow.carries), flow.exact)  # starts at 0: a prefix
    rest = [Flow(shape, _drop_axes(flow, {dim}, True), False) for shape in shapes[1:]]
    return [first] + rest


def _cat(node, inputs, shapes):
    out = shapes[0]
    dim = _dim(node._saved_dim, len(out))
    maps, exact = [], _all_exact(inputs)
    for flow in inputs:
        if flow is None:
            continue
        if dim in flow.carries:
            exact = False  # along the joined axis the index shifts by the part's offset
        maps.append(_drop_axes(flow, {dim}, True))
    return _meet(out, maps, exact)


def _stack(node, inputs, shapes):
    out = shapes[0]
    dim = _dim(node._saved_dim, len(out))
    maps = [{a + (a >= dim): c for a, c in f.carries.items()} for f in inputs if f is not None]
    return _meet(out, maps, _all_exact(inputs))


def _matmul_family(node, inputs, shapes):
    """mm, bmm, mv, dot, addmm, …: batch axes and the free axis of each factor survive."""
    out = shapes[0]
    name = base_name(node)
    keep = MATMUL_AXES[name]  # per forward input: {input axis: output axis}, or "broadcast"
    maps = []
    for flow, rule in zip(inputs, keep):
        if flow is None:
            continue
        if rule == "broadcast":
            maps.append(_broadcast(flow, out))
        else:
            maps.append({rule[a]: c for a, c in flow.carries.items() if a in rule})
    return _meet(out, maps, _all_exact(inputs))


MATMUL_AXES = {
    "Mm": [{0: 0}, {1: 1}],
    "Bmm": [{0: 0, 1: 1}, {0: 0, 2: 2}],
    "Mv": [{0: 0}, {}],
    "Dot": [{}, {}],
    "Vdot": [{}, {}],
    "Addmm": ["broadcast", {0: 0}, {1: 1}],
    "Addmv": ["broadcast", {0: 0}, {}],
    "Baddbmm": ["broadcast", {0: 0, 1: 1}, {0: 0, 2: 2}],
    "Addbmm": ["broadcast", {1: 0}, {2: 1}],
    "Addr": ["broadcast", {0: 0}, {0: 1}],
}


def _convolution(node, inputs, shapes):
    """The batch axis of a convolution is untouched; weight and bias live on the output
    channel axis."""
    out = shapes[0]
    spatial = len(node._saved_stride)
    maps = []
    flow = inputs[0]
    if flow is not None:
        batched = len(flow.shape) == spatial + 2
        maps.append({0: flow.carries[0]} if batched and 0 in flow.carries else {})
    channel = 1 if len(out) == spatial + 2 else 0
    # the output channel is the weight's axis 0 (C_out, C_in/groups, …), or for a transposed
    # convolution its axis 1 (C_in, C_out/groups, …) when there is one group; the bias's axis 0
    transposed, groups = bool(node._saved_transposed), int(node._saved_groups)
    weight_axis = (1 if groups == 1 else None) if transposed else 0
    for extra, axis in zip(inputs[1:3], (weight_axis, 0)):
        if extra is not None:
            carried = axis is not None and axis in extra.carries
            maps.append({channel: extra.carries[axis]} if carried else {})
    # grouped convolutions also pair input with output channels, and a kernel of size 1
    # keeps positions: neither is modelled, so then the proof is not exact
    exact = _all_exact(inputs) and int(node._saved_groups) == 1 and not _pointlike_kernel(node)
    return _meet(out, maps, exact)


def _pointlike_kernel(node) -> bool:
    """Whether each output position of a convolution may see a single input position."""
    try:
        weight = node._saved_weight
    except (AttributeError, RuntimeError):
        return True  # the kernel cannot be read: claim no exactness
    return weight is None or all(int(k) == 1 for k in weight.shape[2:])


ELEMENTWISE = frozenset((
    "Add Sub Rsub Mul Div Neg Pow Abs Sign Sgn Sin Cos Tan Asin Acos Atan Atan2 Sinh Cosh Tanh "
    "Asinh Acosh Atanh Exp Exp2 Expm1 Log Log1P Log2 Log10 Sqrt Rsqrt Reciprocal Sigmoid Logit "
    "Erf Erfc Erfinv Relu Elu Gelu Silu Mish Softplus LeakyRelu Hardtanh Hardsigmoid Hardswish "
    "Hardshrink Softshrink Threshold Celu Selu Rrelu RreluWithNoise LogSigmoid "
    "Clamp ClampMin ClampMax Where Maximum Minimum Fmax Fmin Hypot Lerp Addcmul Addcdiv "
    "Floor Ceil Round Trunc Frac Sinc Copysign Clone ToCopy Alias Xlogy SpecialXlog1py "
    "Lgamma Digamma Polygamma Mvlgamma I0 SpecialI0e SpecialI1 SpecialI1e SpecialNdtri "
    "SpecialLogNdtr SpecialErfcx LogSigmoidForward Tanh NativeDropout Dropout FusedDropout "
    "MaskedFill Remainder Fmod Deg2Rad Rad2Deg Nan2Num NanToNum Square "
    "LogAddExp LogAddExp2 Logaddexp Logaddexp2 Float Double Half Type Conj Real Imag "
    "Igamma Igammac Ldexp SpecialEntr SpecialXlog1Py Angle"
).split())

RULES = {
    **dict.fromkeys(["Sum", "Mean", "Prod", "Amax", "Amin", "Max", "Min", "Logsumexp", "Std",
                     "Var", "StdMean", "VarMean", "LinalgVectorNorm", "Norm", "Median",
                     "Nanmedian", "Mode", "Kthvalue", "Nansum"], _reduction),
    **dict.fromkeys(["Softmax", "LogSoftmax", "Cumsum", "Cumprod", "Logcumsumexp", "Cummax",
                     "Cummin", "Sort", "Topk"], _along_dim),
    **dict.fromkeys(["View", "UnsafeView", "ReshapeAlias", "Squeeze", "Unsqueeze",
                     "_ReshapeAlias", "ReshapeAliasBackward"], _reshape),
    **dict.fromkeys(["Permute", "Transpose", "T"], _permute),
    **dict.fromkeys(["Roll", "Flip", "Repeat"], _rearrange),
    **dict.fromkeys(list(MATMUL_AXES), _matmul_family),
    **dict.fromkeys(["Split", "SplitWithSizes"], _split_outputs),
    "Expand": _expand, "Select": _select, "Slice": _slice, "Unbind": _unbind, "Cat": _cat,
    "Stack": _stack, "Convolution": _convolution, "NativeLayerNorm": _layer_norm,
    "NativeBatchNorm": _batch_norm,
}
