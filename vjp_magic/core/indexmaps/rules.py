"""Which rule maps each backward node type: node name (the type without ``Backward<n>``, as
in :mod:`..axisrules`) → ``rule(edge) -> IndexMap | None`` (None: the identity). A node type
not listed here proves nothing. A new op: its rule in its family's module, its name below."""
from __future__ import annotations

from collections.abc import Callable

from ..axisrules import ELEMENTWISE
from . import (copies, linalg, moves, pooling, reductions, resample, sampling, scatters,
               shifts)

Rule = Callable

MASKED = {"Where": moves.where, "MaskedFill": moves.masked_fill}

SAME = "View UnsafeView ReshapeAlias Squeeze Unsqueeze Clone Alias ToCopy"

ENTRIES: list[tuple[str, Rule]] = [
    (SAME, moves.same_entries),
    (" ".join(sorted(ELEMENTWISE - set(MASKED) - set(SAME.split()))), moves.elementwise),
    ("Expand", moves.expand),
    ("Permute Transpose T", moves.permute),
    ("Slice", moves.slice_),
    ("Select", moves.select),
    ("SliceBackward", moves.slice_backward),
    ("SelectBackward", moves.select_backward),
    ("ConstantPadNd", moves.constant_pad),
    ("ReflectionPad1D ReflectionPad2D ReflectionPad3D", moves.reflection_pad),
    ("ReplicationPad1D ReplicationPad2D ReplicationPad3D", moves.replication_pad),
    ("Roll", moves.roll),
    ("Flip", moves.flip),
    ("Cat", moves.cat),
    ("Stack", moves.stack),
    ("Split SplitWithSizes UnsafeSplit UnsafeSplitWithSizes Unbind", moves.split),
    ("IndexSelect", moves.index_select),
    ("Gather", moves.gather),
    ("Index", moves.index),
    ("Take", moves.take),
    ("Unfold", moves.unfold),
    ("Repeat", moves.repeat),
    ("Diagonal", moves.diagonal),
    ("Tril Triu", moves.triangle),
    ("Sum Mean Nansum Prod Logsumexp LinalgVectorNorm Std Var", reductions.reduction),
    ("Softmax LogSoftmax", reductions.whole_dim),
    ("Cumsum Cumprod", reductions.prefix),
    (" ".join(linalg.FACTORS), linalg.matmul),
    ("Convolution", linalg.convolution),
    ("MaxPool2DWithIndices MaxPool3DWithIndices", pooling.max_pool),
    ("AvgPool2D AvgPool3D", pooling.avg_pool),
    ("MaxUnpool2D MaxUnpool3D", pooling.max_unpool),
    ("AdaptiveAvgPool2D AdaptiveAvgPool3D", resample.adaptive_avg_pool),
    (" ".join(resample.KERNELS), resample.upsample),
    ("GridSampler2D GridSampler3D", sampling.grid_sample),
    ("Max Min Median Nanmedian Kthvalue Mode", pooling.arg_reduction),
    ("Sort Topk", pooling.sort),
    ("Scatter ScatterAdd", scatters.scatter),
    ("IndexAdd", scatters.index_add),
    ("IndexPut", scatters.index_put),
    ("AsStrided", scatters.as_strided),
    ("CopySlices", copies.copy_slices),
] + [(name, rule) for name, rule in MASKED.items()]


def _table() -> dict[str, Rule]:
    rules: dict[str, Rule] = {}
    for names, rule in ENTRIES:
        for name in names.split():
            if name in rules:
                raise ValueError(f"index-map rules: {name!r} is listed twice")
            rules[name] = rule
    return rules


RULES = _table()

# node name → ``shift(edge) -> list[Piece] | None``: the same maps as pieces (:mod:`.offsets`)
# where they are shift-like; a node not listed converts the relation to index arrays
_SAME_RULES = (moves.same_entries, moves.elementwise, moves.expand)
VIEWS = frozenset(SAME.split())  # the same flat order: :func:`.offsets.view`
SHIFTS = {name: shifts.same for name, rule in RULES.items() if rule in _SAME_RULES}
SHIFTS.update({"Slice": shifts.slice_, "SliceBackward": shifts.slice_backward,
               "ConstantPadNd": shifts.constant_pad, "Roll": shifts.roll, "Cat": shifts.cat,
               "Split": shifts.split, "SplitWithSizes": shifts.split,
               "UnsafeSplit": shifts.split, "UnsafeSplitWithSizes": shifts.split,
               "Convolution": shifts.convolution})
