"""How each backward node type moves the axis carries: the rules that :mod:`..axisflow` applies.

A rule gets a node, the :class:`Flow` of each of its forward inputs (None where an input does
not depend on x) and the shapes of its outputs, and returns one :class:`Flow` per output. It
never claims a carry that may fail, and says ``exact=False`` where what it drops might come
back later (a roll can be rolled back). The rules live by op family (:mod:`.elementwise`,
:mod:`.reductions`, :mod:`.shape`, :mod:`.indexing`, :mod:`.linalg`); :data:`RULES` maps each
node name (the type without ``Backward<n>``: ``ToCopy`` for ``_to_copy``, ``SpecialI0E`` for
``special_i0e``, as torchgen spells it) to its rule. A new op: write its rule in its family's
module and list its node name in that family's entry below; a name listed twice is refused
when the table is built.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable

from . import elementwise, indexing, linalg, reductions, shape
from .flow import AxisMap, Carry, Flow, Free, base_name, proper

__all__ = ["AxisMap", "Carry", "Flow", "Free", "RULES", "ELEMENTWISE", "base_name", "proper",
           "rule_for", "table"]

Rule = Callable[..., list]  # rule(node, inputs, shapes, x_shape) -> one Flow (or None) per output

ELEMENTWISE_NAMES = (
    "Add Sub Rsub Mul Div Neg Pow Abs Sign Sgn Sin Cos Tan Asin Acos Atan Atan2 Sinh Cosh Tanh "
    "Asinh Acosh Atanh Exp Exp2 Expm1 Log Log1P Log2 Log10 Sqrt Rsqrt Reciprocal Sigmoid Logit "
    "Erf Erfc Erfinv Relu Elu Gelu Silu Mish Softplus LeakyRelu Hardtanh Hardsigmoid Hardswish "
    "Hardshrink Softshrink Threshold Celu RreluWithNoise LogSigmoid "
    "Clamp ClampMin ClampMax Where Maximum Minimum Fmax Fmin Hypot Lerp Addcmul Addcdiv "
    "Floor Ceil Round Trunc Frac Sinc Copysign Clone ToCopy Alias Xlogy SpecialXlog1Py "
    "Lgamma Digamma Polygamma Mvlgamma I0 SpecialI0E SpecialI1 SpecialI1E SpecialNdtri "
    "SpecialLogNdtr SpecialErfcx NativeDropout FusedDropout "
    "MaskedFill Remainder Fmod Deg2Rad Rad2Deg NanToNum Logaddexp Logaddexp2 Conj "
    "Igamma Igammac Ldexp SpecialEntr Angle"
).split()

# (node names, rule) by op family
ENTRIES: list[tuple[Iterable[str], Rule]] = [
    (ELEMENTWISE_NAMES, elementwise.elementwise),
    (["Sum", "Mean", "Prod", "Amax", "Amin", "Max", "Min", "Logsumexp", "Std", "Var", "StdMean",
      "VarMean", "LinalgVectorNorm", "Norm", "Median", "Nanmedian", "Mode", "Kthvalue",
      "Nansum"], reductions.reduction),
    (["Softmax", "SafeSoftmax", "LogSoftmax", "Cumsum", "Cumprod", "Logcumsumexp", "Cummax",
      "Cummin", "Sort", "Topk"], reductions.along_dim),
    (list(reductions.POOLED_AXES), reductions.pooling),
    (["NativeLayerNorm"], reductions.layer_norm),
    (["NativeBatchNorm"], reductions.batch_norm),
    (["NativeGroupNorm"], reductions.group_norm),
    (["NllLoss", "NllLoss2D"], reductions.class_loss),
    (["MseLoss", "SmoothL1Loss", "HuberLoss", "BinaryCrossEntropy",
      "BinaryCrossEntropyWithLogits", "SoftMarginLoss"], reductions.pointwise_loss),
    (["View", "UnsafeView", "ReshapeAlias", "Squeeze", "Unsqueeze"], shape.reshape),
    (["Permute", "Transpose", "T"], shape.permute),
    (["Expand"], shape.expand),
    (["Roll", "Flip", "Repeat"], shape.rearrange),
    (["Select"], indexing.select),
    (["Slice"], indexing.slice_),
    (["Gather"], indexing.gather),
    (["Index"], indexing.index),
    (["Unbind"], indexing.unbind),
    (["Split", "SplitWithSizes"], indexing.split_outputs),
    (["Cat"], indexing.cat),
    (["Stack"], indexing.stack),
    (list(linalg.MATMUL_AXES), linalg.matmul_family),
    (["Convolution"], linalg.convolution),
    (["ScaledDotProductFlashAttentionForCpu", "ScaledDotProductFlashAttention",
      "ScaledDotProductEfficientAttention", "ScaledDotProductCudnnAttention",
      "ScaledDotProductFusedAttentionOverrideable"], linalg.attention),
]


def table(entries: Iterable[tuple[Iterable[str], Rule]]) -> dict[str, Rule]:
    """Node name → rule; a name listed twice (in one family or two) is an error."""
    rules: dict[str, Rule] = {}
    for names, rule in entries:
        for name in names:
            if name in rules:
                raise ValueError(f"axis rules: {name!r} is listed twice")
            rules[name] = rule
    return rules


RULES = table(ENTRIES)
ELEMENTWISE = frozenset(ELEMENTWISE_NAMES)
NEEDS_INPUT_SHAPE = {shape.reshape}  # the rules that also take the input's own shape


def rule_for(node) -> Rule | None:
    """The rule for ``node`` (called as ``rule(node, inputs, shapes, x_shape)``), else None."""
    rule = RULES.get(base_name(node))
    if rule is None or rule in NEEDS_INPUT_SHAPE:
        return rule
    return lambda node, inputs, shapes, x_shape: rule(node, inputs, shapes)
